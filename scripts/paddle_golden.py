"""Regenerate the Paddle golden data in ``tests/data/`` from real Paddle (dygraph, CPU).

Paddle is not a dependency of fastclip or of its tests: the tests read the JSON this script writes.
Run it where ``pip install paddlepaddle`` works (any CPU machine; Paddle 3.x; the files in the repository
were written with Paddle 3.3.1 and NumPy 2.4.6)::

    python3 -m venv /tmp/paddle-venv
    /tmp/paddle-venv/bin/pip install paddlepaddle numpy
    /tmp/paddle-venv/bin/python scripts/paddle_golden.py                    # both files
    /tmp/paddle-venv/bin/python scripts/paddle_golden.py --clip             # paddle_golden.json only
    /tmp/paddle-venv/bin/python scripts/paddle_golden.py --optimizer        # paddle_optimizer_golden.json only
    /tmp/paddle-venv/bin/python scripts/paddle_golden.py --out-dir /tmp/g   # write elsewhere (to compare)

Both outputs are deterministic: the same Paddle and NumPy write the same bytes.

``paddle_golden.json`` (``--clip``): the clip cases defined in ``clip_cases()`` below (67 cases:
``paddle.nn.ClipGradByValue``, ``ClipGradByNorm``, ``ClipGradByGlobalNorm``,
``paddle.nn.utils.clip_grad_norm_`` and ``clip_grad_value_``), each run through Paddle. The inputs of the
five cases with large random tensors live in ``tests/data/paddle_clip_cases.json`` (read, never written).
Format: ``{meta, cases}``; each case has ``id``, ``class``, ``args``, ``note``, ``inputs`` (a list of
``{need_clip, dtype, shape, grad}``, ``grad`` null for a None grad) and ``expected``:

- ``{error: {type, phase: constructor|call, message}}`` (the first line of Paddle's message), or
- for the classes, ``{error: null, outputs, returned_input_list_object}``: ``outputs`` lists the returned
  ``(param, grad)`` pairs in order as ``{index, grad, dtype, shape, same_object_as_input,
  input_modified_in_place}`` (``index`` = position of the param in ``inputs``; ``input_modified_in_place``
  = the input grad's bytes changed, null for a None grad), and ``returned_input_list_object`` says whether
  the returned list is the input list itself;
- for the ``nn.utils`` functions, ``{error: null, return, grads_after}``: ``return`` is ``{value, dtype,
  shape}`` of the returned tensor (null for None), ``grads_after`` every ``param.grad`` after the call.

Grads are nested lists (row-major; a 0-D grad is a bare number). Finite values are exact (the float32 or
float64 element printed as a double; int32 elements as floats); non-finite values, here and in ``args``,
are the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``.

``paddle_optimizer_golden.json`` (``--optimizer``): four float32 parameters of different shapes (the third
with ``ParamAttr(need_clip=False)``), fixed initial values and six fixed gradients per parameter (from a
seeded NumPy generator; stored in the file so the tests need no RNG), then for every case the value of
every parameter after each of six ``opt.step()`` calls. Cases: SGD, Momentum, Momentum with Nesterov,
Adam and AdamW, each with and without weight decay, each under no clip, ``ClipGradByValue``,
``ClipGradByNorm`` and ``ClipGradByGlobalNorm``; a per-parameter ``ParamAttr(learning_rate=...)``
case; parameter groups (per-group learning rate, weight decay, optimizer hyperparameters and
grad_clip, and one global norm per group); and a case where some gradients are ``None`` on some
steps (``clear_grad(set_to_zero=False)``), so those parameters are skipped and their Adam
``beta_pow`` does not advance. Gradients are made exact: ``loss = sum_i sum(p_i * G_i)`` has
``dloss/dp_i = G_i`` bit for bit. Values are written with 9 significant digits (exact for float32).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import platform
import sys
from typing import Any

import numpy as np

DATA = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data"
CLIP_FILE = "paddle_golden.json"
CLIP_INPUTS_FILE = "paddle_clip_cases.json"
OPTIMIZER_FILE = "paddle_optimizer_golden.json"

# ---------------------------------------------------------------- clip cases

INF = math.inf
NAN = math.nan
STORED = "stored"  # the case's inputs are in tests/data/paddle_clip_cases.json
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def encode_scalar(x: Any) -> Any:
    """A float as strict JSON: the exact double, or "NaN" / "Infinity" / "-Infinity"."""
    if isinstance(x, bool) or not isinstance(x, float):
        return x
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def encode_array(a: np.ndarray) -> Any:
    """Nested lists of the elements as doubles (a bare number for 0-D)."""
    values = np.asarray(a).astype(np.float64).tolist()

    def walk(v: Any) -> Any:
        return [walk(x) for x in v] if isinstance(v, list) else encode_scalar(float(v))

    return walk(values)


def decode(value: Any) -> Any:
    if isinstance(value, list):
        return [decode(v) for v in value]
    return _NONFINITE.get(value, value) if isinstance(value, str) else value


def t(grad: Any, dtype: str = "float32", need_clip: bool = True) -> dict[str, Any]:
    """One (param, grad) input: the grad is ``grad`` (nested lists) rounded to ``dtype``."""
    a = np.array(grad, dtype=dtype)
    return {"need_clip": need_clip, "dtype": dtype, "shape": list(a.shape), "grad": encode_array(a)}


def none_grad() -> dict[str, Any]:
    """An input whose grad is None."""
    return {"need_clip": True, "dtype": None, "shape": None, "grad": None}


NONE = none_grad()


def case(cid: str, cls: str, args: dict[str, Any], inputs: Any, note: str = "") -> dict[str, Any]:
    return {
        "id": cid,
        "class": cls,
        "args": {k: encode_scalar(v) for k, v in args.items()},
        "inputs": inputs,
        "note": note,
    }


def clip_cases() -> list[dict[str, Any]]:
    """The case definitions, in file order."""
    return [
        case("value_f32_default_min", "ClipGradByValue", {"max": 1.0}, [t([[2.5, -3.0, 0.5], [-0.25, 1.0, -1.0]])]),
        case(
            "value_f64_mask_two_shapes",
            "ClipGradByValue",
            {"max": 2.0, "min": -0.5},
            [
                t([1.2958124083463733, 0.9386415887605802, -1.2860412214816859, -2.3565172970102632], "float64"),
                t(
                    [[-0.2893808137905326, 2.4069167923865886], [2.667167625806472, 1.816602806575821]],
                    "float64",
                    need_clip=False,
                ),
            ],
        ),
        case("value_f32_nonfinite", "ClipGradByValue", {"max": 1.0, "min": -1.0}, [t([INF, -INF, NAN, 0.5])]),
        case("value_f32_zeros_signed", "ClipGradByValue", {"max": 1.0}, [t([0.0, -0.0, 0.0])]),
        case("value_none_grad_dropped", "ClipGradByValue", {"max": 1.0}, [t([3.0, -3.0]), NONE, t([0.5])]),
        case("value_min_eq_max_zero", "ClipGradByValue", {"max": 0.0, "min": 0.0}, [t([-0.0, 0.0, 1.0, -1.0])]),
        case(
            "value_min_gt_max_error",
            "ClipGradByValue",
            {"max": 1.0, "min": 2.0},
            [t([0.5, 3.0])],
            "constructor accepts min>max; clip kernel raises at call",
        ),
        case(
            "value_max_nonpositive_no_min_error",
            "ClipGradByValue",
            {"max": 0.0},
            [t([0.5])],
            "assert max > 0.0 when min is None",
        ),
        case(
            "value_f32_max_0p1_rounding",
            "ClipGradByValue",
            {"max": 0.1},
            [t([0.2, -0.2, 0.05])],
            "bounds are cast to the grad dtype (float32(0.1))",
        ),
        case("value_f64_max_0p1", "ClipGradByValue", {"max": 0.1}, [t([0.2, -0.2, 0.05], "float64")]),
        case(
            "value_int32_grad",
            "ClipGradByValue",
            {"max": 2.0, "min": -1.0},
            [t([3, -4, 1], "int32")],
            "float bounds with int grad -> output float32",
        ),
        case(
            "value_f32_random_3d",
            "ClipGradByValue",
            {"max": 0.7, "min": -0.3},
            [
                t(
                    [
                        [
                            [0.34656444, 1.6000347, 1.2328398, -0.2203175],
                            [-1.0619646, -0.3645688, -0.42001855, 0.6875091],
                            [-1.8991159, -0.19136868, 1.6712221, -0.92028373],
                        ],
                        [
                            [-0.7584636, -0.0842607, -1.417821, -0.129613],
                            [-0.015652895, -0.004655183, -0.9885139, -0.36583042],
                            [0.65381753, -0.71455073, 0.54719746, 0.6555124],
                        ],
                    ]
                )
            ],
        ),
        case("value_empty_list", "ClipGradByValue", {"max": 1.0}, []),
        case(
            "norm_f32_clipped_2d",
            "ClipGradByNorm",
            {"clip_norm": 1.0},
            [
                t(
                    [
                        [-4.281002, -1.9359187, 1.9659379, 1.4804844],
                        [0.53812563, -1.0458525, 0.3256764, 5.6243196],
                        [-0.6643665, 1.7389498, -1.2502453, -0.59497815],
                    ]
                )
            ],
        ),
        case(
            "norm_f32_below_threshold",
            "ClipGradByNorm",
            {"clip_norm": 10.0},
            [t([0.64802676, -0.9290023, -0.24241745, -0.61030775, -0.85870814])],
        ),
        case("norm_f32_exactly_at_threshold", "ClipGradByNorm", {"clip_norm": 5.0}, [t([3.0, 4.0])]),
        case("norm_f32_just_below_threshold_clip", "ClipGradByNorm", {"clip_norm": 4.999999523162842}, [t([3.0, 4.0])]),
        case("norm_f32_zero_tensor", "ClipGradByNorm", {"clip_norm": 1.0}, [t([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])]),
        case("norm_f32_inf", "ClipGradByNorm", {"clip_norm": 1.0}, [t([1.0, INF, -2.0])]),
        case("norm_f32_nan", "ClipGradByNorm", {"clip_norm": 1.0}, [t([1.0, NAN, 2.0])]),
        case(
            "norm_f32_huge_overflow",
            "ClipGradByNorm",
            {"clip_norm": 1.0},
            [t([1e30, 1.0, -3.0])],
            "f32 sum of squares overflows to inf -> scale 0 -> all zeros",
        ),
        case("norm_f32_subnormal", "ClipGradByNorm", {"clip_norm": 1.0}, [t([1e-40, -1e-40, 1e-45])]),
        case(
            "norm_f32_mask_and_none",
            "ClipGradByNorm",
            {"clip_norm": 1.0},
            [
                t([0.70301235, 4.9592924, 0.8856282]),
                NONE,
                t([[-1.5270662, -5.80448], [3.275828, 0.84183633]], need_clip=False),
                t([-2.5252545, 3.4457433, 6.296915, -6.5266128]),
            ],
        ),
        case(
            "norm_f64_error_on_cpu",
            "ClipGradByNorm",
            {"clip_norm": 1.0},
            [t([3.0, 4.0], "float64")],
            "Paddle 3.3.1 CPU clip_by_norm kernel is float32-only",
        ),
        case("norm_clip_norm_zero_error", "ClipGradByNorm", {"clip_norm": 0.0}, [t([3.0, 4.0])]),
        case("norm_clip_norm_negative_error", "ClipGradByNorm", {"clip_norm": -1.0}, [t([3.0, 4.0])]),
        case(
            "norm_clip_norm_inf_gives_nan",
            "ClipGradByNorm",
            {"clip_norm": INF},
            [t([3.0, 4.0])],
            "kernel computes 1 + 0*inf -> NaN",
        ),
        case("norm_f32_0d", "ClipGradByNorm", {"clip_norm": 1.0}, [t(5.0)]),
        case(
            "norm_f32_large_8320",
            "ClipGradByNorm",
            {"clip_norm": 1.0},
            STORED,
            "> 8192 elements: Eigen tree-reduction split",
        ),
        case("norm_f32_many_shapes", "ClipGradByNorm", {"clip_norm": 2.0}, STORED),
        case("norm_empty_list", "ClipGradByNorm", {"clip_norm": 1.0}, []),
        case(
            "global_f32_clipped_three",
            "ClipGradByGlobalNorm",
            {"clip_norm": 1.0},
            [
                t([[0.61936754, -0.040244352, -0.7932035], [2.1605732, 3.2398634, -0.045812998]]),
                t([-0.5729401, -1.5560365, 0.3316689]),
                t([-1.5694036]),
            ],
        ),
        case(
            "global_f64_below_threshold",
            "ClipGradByGlobalNorm",
            {"clip_norm": 100.0},
            [
                t([-0.3705916469433806, -0.13122002264919985, -0.674983061835072, -0.9648143970085127], "float64"),
                t([[0.46780437313068846, 0.25575992986582224], [-0.9741858979603333, -0.36436989821353627]], "float64"),
            ],
        ),
        case(
            "global_f32_exactly_at_threshold", "ClipGradByGlobalNorm", {"clip_norm": 13.0}, [t([3.0, 4.0]), t([12.0])]
        ),
        case(
            "global_f32_zero_tensors",
            "ClipGradByGlobalNorm",
            {"clip_norm": 1.0},
            [t([0.0, 0.0, 0.0]), t([[0.0, 0.0], [0.0, 0.0]])],
        ),
        case(
            "global_f32_zero_clip_zero_grad_nan",
            "ClipGradByGlobalNorm",
            {"clip_norm": 0.0},
            [t([0.0, 0.0])],
            "0/max(0,0) = NaN",
        ),
        case("global_f32_inf", "ClipGradByGlobalNorm", {"clip_norm": 1.0}, [t([3.0, 4.0]), t([1.0, INF])]),
        case("global_f32_nan", "ClipGradByGlobalNorm", {"clip_norm": 1.0}, [t([3.0, 4.0]), t([1.0, NAN])]),
        case(
            "global_f32_nan_auto_skip",
            "ClipGradByGlobalNorm",
            {"clip_norm": 1.0, "auto_skip_clip": True},
            [t([3.0, 4.0]), t([1.0, NAN])],
            "NaN > clip is False -> no scaling at all",
        ),
        case(
            "global_f32_auto_skip_clipped",
            "ClipGradByGlobalNorm",
            {"clip_norm": 1.0, "auto_skip_clip": True},
            [t([3.0, 4.0]), t([12.0])],
        ),
        case(
            "global_f32_auto_skip_below",
            "ClipGradByGlobalNorm",
            {"clip_norm": 100.0, "auto_skip_clip": True},
            [t([3.0, 4.0]), t([12.0])],
        ),
        case(
            "global_mixed_f32_f64",
            "ClipGradByGlobalNorm",
            {"clip_norm": 1.0},
            [
                t([-1.4568958, 1.0752459, -3.7357092]),
                t([-1.9285098578702702, -0.08924800698638422], "float64"),
                t([[-0.8229456, -1.5227374], [-0.52879506, 2.8477838]]),
            ],
        ),
        case(
            "global_f32_mask_and_none",
            "ClipGradByGlobalNorm",
            {"clip_norm": 1.0},
            [t([3.0, 4.0]), NONE, t([100.0, INF], need_clip=False), t([0.0, 12.0])],
            "need_clip=False grads excluded from norm and returned untouched; None dropped",
        ),
        case(
            "global_all_filtered_returns_input",
            "ClipGradByGlobalNorm",
            {"clip_norm": 1.0},
            [t([5.0], need_clip=False), NONE],
            "nothing to clip -> the input list itself is returned, None entries kept",
        ),
        case("global_empty_list", "ClipGradByGlobalNorm", {"clip_norm": 1.0}, []),
        case(
            "global_f32_0d_becomes_shape1",
            "ClipGradByGlobalNorm",
            {"clip_norm": 1.0},
            [t(5.0)],
            "0-D grad -> not in-place -> multiply broadcasts to shape [1]",
        ),
        case(
            "global_negative_clip_norm",
            "ClipGradByGlobalNorm",
            {"clip_norm": -1.0},
            [t([3.0, 4.0])],
            "no validation: scale=-1/max(5,-1) flips sign",
        ),
        case("global_f32_huge_overflow", "ClipGradByGlobalNorm", {"clip_norm": 1.0}, [t([1e30, 1.0]), t([2.0])]),
        case(
            "global_f64_huge_ok",
            "ClipGradByGlobalNorm",
            {"clip_norm": 1.0},
            [t([1e30, 1.0], "float64"), t([2.0], "float64")],
        ),
        case(
            "global_f32_many_params",
            "ClipGradByGlobalNorm",
            {"clip_norm": 1.0},
            STORED,
            "40 tensors: stack().sum() of squared norms uses the Eigen reduction",
        ),
        case(
            "global_f64_large_4100",
            "ClipGradByGlobalNorm",
            {"clip_norm": 1.0},
            STORED,
            "> 4096 float64 elements: Eigen tree-reduction split",
        ),
        case("global_f32_large_8320_plus", "ClipGradByGlobalNorm", {"clip_norm": 3.0}, STORED),
        case("u_norm2_clipped", "clip_grad_norm_", {"max_norm": 1.0}, [t([3.0, 4.0]), t([0.0, 12.0])]),
        case("u_norm2_below", "clip_grad_norm_", {"max_norm": 1.0}, [t([0.3, 0.4])]),
        case(
            "u_norm2_at_threshold",
            "clip_grad_norm_",
            {"max_norm": 5.0},
            [t([3.0, 4.0])],
            "scaled by 5/(5+1e-6): grads change even at the threshold",
        ),
        case("u_norm_inf", "clip_grad_norm_", {"max_norm": 1.0, "norm_type": INF}, [t([3.0, -4.0]), t([0.0, 12.0])]),
        case("u_norm1", "clip_grad_norm_", {"max_norm": 1.0, "norm_type": 1}, [t([3.0, -4.0]), t([0.0, 12.0])]),
        case(
            "u_norm0",
            "clip_grad_norm_",
            {"max_norm": 1.0, "norm_type": 0},
            [t([3.0, 0.0]), t([0.0, 12.0]), t([1.0, 1.0])],
            "p=0: count of non-zero per-tensor counts = number of non-zero tensors",
        ),
        case("u_norm3_error", "clip_grad_norm_", {"max_norm": 1.0, "norm_type": 3}, [t([3.0, 4.0])]),
        case("u_nonfinite_error", "clip_grad_norm_", {"max_norm": 1.0, "error_if_nonfinite": True}, [t([1.0, INF])]),
        case("u_nonfinite_no_error", "clip_grad_norm_", {"max_norm": 1.0}, [t([1.0, INF]), t([2.0])]),
        case(
            "u_f64",
            "clip_grad_norm_",
            {"max_norm": 1.0},
            [
                t([3.0, 4.0], "float64"),
                t(
                    [
                        [-0.260820949400171, -2.33538728538668, 0.22724659847092182],
                        [-0.34033293105335816, -0.9086740152050929, 1.5727213984870851],
                        [0.42962176620718884, 0.5198284159213619, 0.9878317145322293],
                    ],
                    "float64",
                ),
            ],
        ),
        case(
            "u_need_clip_ignored",
            "clip_grad_norm_",
            {"max_norm": 1.0},
            [t([3.0, 4.0]), t([0.0, 12.0], need_clip=False)],
        ),
        case(
            "u_random_2d",
            "clip_grad_norm_",
            {"max_norm": 0.5},
            [
                t(
                    [
                        [1.2100574, -1.3712609, 0.6058874, 0.5605355, -0.2776111, -0.47623008, -0.34600225],
                        [2.4483042, 0.6795535, -0.16085882, -1.1225777, -0.02671008, 0.3829537, -0.081141576],
                        [-0.93981403, 0.018213136, -1.5955138, -0.56961817, 0.19169371, 1.5668806, 0.2163752],
                        [-0.19024247, 0.16995358, -0.62167925, -0.020001613, 1.8510126, -0.94138855, -0.8355093],
                        [1.3281478, -0.86478585, -0.06310924, 0.21794969, -1.4049942, -1.4032272, -0.43316346],
                    ]
                ),
                t(
                    [
                        0.8852765,
                        -1.5383002,
                        0.011199951,
                        0.75648654,
                        -0.30636355,
                        1.3028123,
                        1.3780068,
                        2.375106,
                        0.53286606,
                        -0.12485237,
                        0.36943948,
                    ]
                ),
            ],
        ),
        case("v_value", "clip_grad_value_", {"clip_value": 1.0}, [t([3.0, -4.0, 0.5, NAN, INF, -INF])]),
        case("v_value_zero", "clip_grad_value_", {"clip_value": 0.0}, [t([3.0, -4.0, 0.0])]),
        case("v_value_negative_error", "clip_grad_value_", {"clip_value": -1.0}, [t([3.0, -4.0])]),
    ]


def load_cases() -> list[dict[str, Any]]:
    stored_path = DATA / CLIP_INPUTS_FILE
    stored = json.loads(stored_path.read_text())["inputs"]
    cases = clip_cases()
    for c in cases:
        if c["inputs"] == STORED:
            c["inputs"] = stored[c["id"]]
        else:
            c["inputs"] = [dict(inp) for inp in c["inputs"]]
    ids = [c["id"] for c in cases]
    assert len(set(ids)) == len(ids), "duplicate case ids"
    assert set(stored) <= set(ids), f"unused stored inputs: {set(stored) - set(ids)}"
    return cases


def input_array(inp: dict[str, Any]) -> np.ndarray:
    return np.array(decode(inp["grad"]), dtype=inp["dtype"]).reshape(inp["shape"])


def error_of(e: BaseException, phase: str) -> dict[str, Any]:
    message = str(e).split("\n")[0].strip()
    return {"type": type(e).__name__, "phase": phase, "message": message}


def tensor_entry(g: Any) -> tuple[Any, Any, Any]:
    """(grad, dtype, shape) of a Paddle tensor or None."""
    if g is None:
        return None, None, None
    a = g.numpy()
    return encode_array(a), a.dtype.name, list(a.shape)


def run_class_case(paddle: Any, c: dict[str, Any]) -> dict[str, Any]:
    try:
        clip = getattr(paddle.nn, c["class"])(**{k: decode(v) for k, v in c["args"].items()})
    except Exception as e:  # the error is the expected result
        return {"error": error_of(e, "constructor")}
    pairs = []
    before = []
    for inp in c["inputs"]:
        p = paddle.create_parameter([1], "float32", attr=paddle.ParamAttr(need_clip=inp["need_clip"]))
        g = None if inp["grad"] is None else paddle.to_tensor(input_array(inp))
        pairs.append((p, g))
        before.append(None if g is None else g.numpy().tobytes())
    try:
        out = clip(pairs)
    except Exception as e:
        return {"error": error_of(e, "call")}
    outputs = []
    for p, g in out:
        index = next(i for i, (q, _) in enumerate(pairs) if q is p)
        g_in = pairs[index][1]
        grad, dtype, shape = tensor_entry(g)
        outputs.append(
            {
                "index": index,
                "grad": grad,
                "dtype": dtype,
                "shape": shape,
                "same_object_as_input": g is g_in,
                "input_modified_in_place": None if g_in is None else g_in.numpy().tobytes() != before[index],
            }
        )
    return {"error": None, "outputs": outputs, "returned_input_list_object": out is pairs}


def run_util_case(paddle: Any, c: dict[str, Any]) -> dict[str, Any]:
    params = []
    for inp in c["inputs"]:
        a = input_array(inp)
        attr = paddle.ParamAttr(need_clip=inp["need_clip"])
        p = paddle.create_parameter(list(a.shape), inp["dtype"], attr=attr)
        p.grad = paddle.to_tensor(a)
        assert p.grad.numpy().tobytes() == a.tobytes(), c["id"]
        params.append(p)
    fn = getattr(paddle.nn.utils, c["class"])
    try:
        r = fn(params, **{k: decode(v) for k, v in c["args"].items()})
    except Exception as e:
        return {"error": error_of(e, "call")}
    ret = None
    if r is not None:
        a = r.numpy()
        ret = {"value": encode_array(a), "dtype": a.dtype.name, "shape": list(a.shape)}
    return {"error": None, "return": ret, "grads_after": [encode_array(p.grad.numpy()) for p in params]}


def write_clip(paddle: Any, out_dir: pathlib.Path) -> None:
    cases = load_cases()
    out_cases = []
    for c in cases:
        if c["class"].startswith("ClipGrad"):
            expected = run_class_case(paddle, c)
            keys = ["id", "class", "args", "inputs", "note"]
        else:
            expected = run_util_case(paddle, c)
            keys = ["id", "class", "args", "note", "inputs"]
        out_cases.append({**{k: c[k] for k in keys}, "expected": expected})
    meta = {
        "generator": "scripts/paddle_golden.py",
        "paddle_version": paddle.__version__,
        "numpy_version": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "device": "cpu",
        "mode": "dygraph",
        "encoding": "strict JSON; grads are nested lists (row-major); non-finite values are the strings "
        '"NaN", "Infinity", "-Infinity"; finite values are the exact value of the float32/float64 element '
        "printed as a double (round-trips exactly). Non-finite float args (clip_norm, norm_type) use the "
        "same strings.",
        "output_semantics": "expected.outputs lists the returned (param, grad) pairs in order; index = "
        "position of the param in inputs; an input with grad None is absent from outputs except when "
        "expected.returned_input_list_object is true.",
    }
    path = out_dir / CLIP_FILE
    path.write_text(json.dumps({"meta": meta, "cases": out_cases}, separators=(",", ":"), allow_nan=False))
    print(f"wrote {len(out_cases)} clip cases to {path} ({path.stat().st_size} bytes) with Paddle {paddle.__version__}")


# ---------------------------------------------------------------- optimizer trajectories

SHAPES = [(4, 3), (5,), (2, 2, 2), (6,)]
NEED_CLIP = [True, True, False, True]
STEPS = 6
CLIPS: list[Any] = [None, ["value", 1.0], ["norm", 2.0], ["global", 3.0]]


def f32list(a: np.ndarray) -> list[float]:
    return [float(f"{float(x):.9g}") for x in np.asarray(a, np.float32).ravel()]


def make_data() -> dict[str, Any]:
    rng = np.random.default_rng(20261126)
    init = [rng.normal(0.0, 1.0, s).astype(np.float32) for s in SHAPES]
    grads = [[(rng.normal(0.0, 1.0, s) * 2.0).astype(np.float32) for s in SHAPES] for _ in range(STEPS)]
    return {"init": init, "grads": grads}


def base_cases() -> list[dict[str, Any]]:
    optimizers: list[tuple[str, str, dict[str, Any]]] = [
        ("sgd", "SGD", {"learning_rate": 0.1}),
        ("sgd_wd", "SGD", {"learning_rate": 0.1, "weight_decay": 0.1}),
        ("momentum", "Momentum", {"learning_rate": 0.1, "momentum": 0.9}),
        ("momentum_wd", "Momentum", {"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 0.1}),
        ("nesterov", "Momentum", {"learning_rate": 0.1, "momentum": 0.8, "use_nesterov": True}),
        (
            "nesterov_wd",
            "Momentum",
            {"learning_rate": 0.1, "momentum": 0.8, "use_nesterov": True, "weight_decay": 0.1},
        ),
        ("adam", "Adam", {"learning_rate": 0.05}),
        ("adam_wd", "Adam", {"learning_rate": 0.05, "weight_decay": 0.1}),
        ("adam_betas", "Adam", {"learning_rate": 0.05, "beta1": 0.8, "beta2": 0.99, "epsilon": 1e-6}),
        ("adamw", "AdamW", {"learning_rate": 0.05}),
        ("adamw_wd", "AdamW", {"learning_rate": 0.05, "weight_decay": 0.2}),
    ]
    cases = []
    for key, opt, kw in optimizers:
        for clip in CLIPS:
            tag = "noclip" if clip is None else clip[0]
            cases.append({"name": f"{key}/{tag}", "optimizer": opt, "kwargs": kw, "grad_clip": clip})
    return cases


def special_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    # A per-parameter learning-rate multiplier (ParamAttr(learning_rate=...)), outside groups.
    for opt, kw in [("SGD", {"learning_rate": 0.1}), ("Adam", {"learning_rate": 0.05, "weight_decay": 0.1})]:
        cases.append(
            {
                "name": f"param_lr/{opt.lower()}",
                "optimizer": opt,
                "kwargs": kw,
                "grad_clip": ["global", 3.0],
                "param_lr": [0.5, 1.0, 2.0, 1.0],
            }
        )
    # Parameter groups: group 0 scales the lr and sets its own weight decay; group 1 overrides an
    # optimizer hyperparameter. Both use the optimizer's ClipGradByGlobalNorm: one norm per group.
    # param_lr is set too, to record that a group's learning_rate replaces it (Paddle overwrites
    # param.optimize_attr['learning_rate'] with the group's, default 1.0).
    group_specs: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
        ("SGD", {"learning_rate": 0.1, "weight_decay": 0.05}, {"weight_decay": 0.2}, {}),
        ("Momentum", {"learning_rate": 0.1, "momentum": 0.9}, {"weight_decay": 0.2}, {"momentum": 0.5}),
        (
            "Momentum",
            {"learning_rate": 0.1, "momentum": 0.9, "use_nesterov": True, "weight_decay": 0.05},
            {},
            {"use_nesterov": False},
        ),
        ("Adam", {"learning_rate": 0.05, "weight_decay": 0.05}, {"weight_decay": 0.2}, {"beta1": 0.5}),
        ("AdamW", {"learning_rate": 0.05, "weight_decay": 0.05}, {"weight_decay": 0.3}, {"beta2": 0.9}),
    ]
    for k, (opt, kw, g0, g1) in enumerate(group_specs):
        cases.append(
            {
                "name": f"groups/{opt.lower()}{k}",
                "optimizer": opt,
                "kwargs": kw,
                "grad_clip": ["global", 3.0],
                "param_lr": [0.5, 1.0, 1.0, 2.0],
                "groups": [
                    {"params": [0, 1], "learning_rate": 0.5, **g0},
                    {"params": [2, 3], **g1},
                ],
            }
        )
    # A group-level grad_clip override.
    cases.append(
        {
            "name": "groups/adam_clip_override",
            "optimizer": "Adam",
            "kwargs": {"learning_rate": 0.05},
            "grad_clip": ["global", 3.0],
            "groups": [{"params": [0, 1]}, {"params": [2, 3], "grad_clip": ["value", 0.5]}],
        }
    )
    # None gradients: parameter 1 has none on steps 2 and 4 (0-based 1 and 3), parameter 3 none on
    # step 5; those are skipped (and their Adam beta_pow does not advance).
    absent = {1: [1], 3: [1, 3], 4: [3]}
    for opt, kw in [
        ("Adam", {"learning_rate": 0.05}),
        ("Momentum", {"learning_rate": 0.1, "momentum": 0.9}),
        ("AdamW", {"learning_rate": 0.05, "weight_decay": 0.1}),
    ]:
        cases.append(
            {
                "name": f"none_grads/{opt.lower()}",
                "optimizer": opt,
                "kwargs": kw,
                "grad_clip": ["global", 3.0],
                "absent": {str(k): v for k, v in absent.items()},
            }
        )
    return cases


def run_case(paddle: Any, case: dict[str, Any], data: dict[str, Any]) -> list[list[list[float]]]:
    param_lr = case.get("param_lr", [1.0] * len(SHAPES))
    params = []
    for i, (init, need_clip) in enumerate(zip(data["init"], NEED_CLIP)):
        attr = paddle.ParamAttr(
            initializer=paddle.nn.initializer.Assign(init),
            need_clip=need_clip,
            learning_rate=param_lr[i],
        )
        params.append(paddle.create_parameter(list(init.shape), "float32", attr=attr))

    def clip_of(spec: Any) -> Any:
        if spec is None:
            return None
        kind, v = spec
        return {
            "value": lambda: paddle.nn.ClipGradByValue(v),
            "norm": lambda: paddle.nn.ClipGradByNorm(v),
            "global": lambda: paddle.nn.ClipGradByGlobalNorm(v),
        }[kind]()

    if "groups" in case:
        parameters: Any = []
        for g in case["groups"]:
            d = {k: v for k, v in g.items() if k not in ("params", "grad_clip")}
            d["params"] = [params[i] for i in g["params"]]
            if "grad_clip" in g:
                d["grad_clip"] = clip_of(g["grad_clip"])
            parameters.append(d)
    else:
        parameters = params
    opt_cls = getattr(paddle.optimizer, case["optimizer"])
    opt = opt_cls(parameters=parameters, grad_clip=clip_of(case["grad_clip"]), **case["kwargs"])
    absent = {int(k): v for k, v in case.get("absent", {}).items()}
    trajectory = []
    for step in range(STEPS):
        loss = None
        for i, p in enumerate(params):
            if i in absent.get(step, []):
                continue
            term = (p * paddle.to_tensor(data["grads"][step][i])).sum()
            loss = term if loss is None else loss + term
        loss.backward()
        for i, p in enumerate(params):  # the gradients really are the recorded ones
            if i not in absent.get(step, []):
                assert np.array_equal(p.grad.numpy(), data["grads"][step][i]), (case["name"], step, i)
            else:
                assert p.grad is None, (case["name"], step, i)
        opt.step()
        opt.clear_grad(set_to_zero=False)
        trajectory.append([f32list(p.numpy()) for p in params])
    return trajectory


def write_optimizer(paddle: Any, out_dir: pathlib.Path) -> None:
    data = make_data()
    cases = base_cases() + special_cases()
    for case_ in cases:
        case_["trajectory"] = run_case(paddle, case_, data)
    out = {
        "paddle_version": paddle.__version__,
        "numpy_version": np.__version__,
        "generator": "scripts/paddle_golden.py",
        "dtype": "float32",
        "shapes": [list(s) for s in SHAPES],
        "need_clip": NEED_CLIP,
        "steps": STEPS,
        "init": [f32list(a) for a in data["init"]],
        "grads": [[f32list(g) for g in step] for step in data["grads"]],
        "cases": cases,
    }
    path = out_dir / OPTIMIZER_FILE
    path.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(
        f"wrote {len(cases)} optimizer cases to {path} ({path.stat().st_size} bytes) with Paddle {paddle.__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clip", action="store_true", help=f"write {CLIP_FILE} (clip cases)")
    parser.add_argument("--optimizer", action="store_true", help=f"write {OPTIMIZER_FILE} (optimizer steps)")
    parser.add_argument("--out-dir", type=pathlib.Path, default=DATA, help="output folder (default: tests/data)")
    args = parser.parse_args(argv)
    both = not (args.clip or args.optimizer)

    import paddle

    paddle.set_device("cpu")
    paddle.disable_static()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.clip or both:
        write_clip(paddle, args.out_dir)
    if args.optimizer or both:
        write_optimizer(paddle, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
