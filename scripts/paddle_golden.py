"""Regenerate ``tests/data/paddle_optimizer_golden.json`` from real Paddle (dygraph, CPU).

Paddle is not a dependency of fastclip or of its tests: the tests read the JSON this script writes.
Run it where ``pip install paddlepaddle`` works (any CPU machine; Paddle 3.x)::

    python3 -m venv /tmp/paddle-venv
    /tmp/paddle-venv/bin/pip install paddlepaddle numpy
    /tmp/paddle-venv/bin/python scripts/paddle_golden.py          # writes tests/data/...json

What it records: four float32 parameters of different shapes (the third with
``ParamAttr(need_clip=False)``), fixed initial values and six fixed gradients per parameter (from a
seeded NumPy generator; stored in the file so the tests need no RNG), then for every case the value of
every parameter after each of six ``opt.step()`` calls. Cases: SGD, Momentum, Momentum with Nesterov,
Adam and AdamW, each with and without weight decay, each under no clip, ``ClipGradByValue``,
``ClipGradByNorm`` and ``ClipGradByGlobalNorm``; a per-parameter ``ParamAttr(learning_rate=...)``
case; parameter groups (per-group learning rate, weight decay, optimizer hyperparameters and
grad_clip, and one global norm per group); and a case where some gradients are ``None`` on some
steps (``clear_grad(set_to_zero=False)``), so those parameters are skipped and their Adam
``beta_pow`` does not advance.

Gradients are made exact: ``loss = sum_i sum(p_i * G_i)`` has ``dloss/dp_i = G_i`` bit for bit.
Values are written with 9 significant digits (exact for float32).
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import numpy as np

SHAPES = [(4, 3), (5,), (2, 2, 2), (6,)]
NEED_CLIP = [True, True, False, True]
STEPS = 6
CLIPS: list[Any] = [None, ["value", 1.0], ["norm", 2.0], ["global", 3.0]]
OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "paddle_optimizer_golden.json"


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


def main() -> int:
    import paddle

    paddle.set_device("cpu")
    paddle.disable_static()
    data = make_data()
    cases = base_cases() + special_cases()
    for case in cases:
        case["trajectory"] = run_case(paddle, case, data)
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
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {len(cases)} cases to {OUT} ({OUT.stat().st_size} bytes) with Paddle {paddle.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
