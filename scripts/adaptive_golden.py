"""Regenerate ``tests/data/adaptive_golden.json`` from the real reference packages on PyPI.

The references are not dependencies of fastclip or of its tests (the tests read the JSON only).
They are installed outside any virtualenv, next to torch and jax::

    python3 -m pip install --target /opt/refsite --no-deps zclip autoclip timm pytorch_optimizer
    python3 -m pip install --target /opt/torchsite torch          # CPU is enough
    python3 -m pip install --target /opt/jaxsite optax jax jaxlib  # brings numpy
    PYTHONPATH=/opt/refsite:/opt/torchsite:/opt/jaxsite python3 scripts/adaptive_golden.py [--out PATH]

(the file in the repository was written with zclip 1.0.0, autoclip 0.2.1, timm 1.0.31,
pytorch_optimizer 4.1.0, torch 2.15.0, optax 0.2.8, jax 0.10.2, NumPy 2.4.6). The output is
deterministic: the same packages write the same bytes. ``timm.utils.agc`` is loaded from its file,
since importing the ``timm`` package needs torchvision.

What is in it (``{meta, sequence, zclip, autoclip, adagc, agc_timm, agc_optax, apply_if_finite}``):

- ``sequence``: 56 steps of float32 gradients for three tensors (shapes ``(4, 3)``, ``(4,)``,
  ``(2, 2, 2, 2)``), seeded, with noisy scales, quiet stretches (x1e-2), x1e4 spikes (all tensors: step 14,
  two in a row, one tensor alone), a NaN during every warm-up (step 3), a NaN (36) and an inf (42)
  after it, and a float32-overflowing spike (x1e20, finite) as the last step (55).
- ``zclip`` / ``autoclip`` / ``adagc``: for each configuration (constructor arguments), the
  reference run on that sequence in float32, step by step: the norm(s) the package measured, its
  thresholds and statistics after the step, and every clipped gradient. The run is **patched** on
  the steps where the reference's norm is not finite: the package's statistics are restored to
  what they were before the step (fastclip's documented rule: a non-finite norm never enters the
  statistics), while the gradients of that step are the package's own. ``raw`` holds the
  statistics of the unpatched run (where one NaN poisons every later step), and ``f64`` the
  patched run of the same package on the same values in float64, whose last step is the correct
  result of the float32-overflow step.
  For ``adagc``, the clipped gradients are what ``pytorch_optimizer.AdaGC``'s Adam moment receives
  (``betas=(0, 0.999)``, ``exp_avg`` zeroed before each step, ``weight_decay=0``, ``foreach=False``);
  the patch restores a tensor's ``gamma`` when it became non-finite, and every ``gamma`` when a
  warm-up step's global norm is not finite.
- ``agc_timm``: ``timm.utils.agc.adaptive_clip_grad`` on torch-layout weights and grads;
  ``agc_optax``: ``optax.adaptive_grad_clip`` on HWIO-layout trees (rank 1 to 5, its default
  rule) and with ``axis=``; each with weights, grads and the clipped grads.
- ``apply_if_finite``: ``optax.apply_if_finite(optax.identity(), max_consecutive_errors=2)`` on a
  finite / non-finite pattern: per step the counters and whether the update was applied.

Floats are exact doubles (float32 values widened); NaN and infinities are the strings "NaN",
"Infinity", "-Infinity".
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import pathlib
import sys
from typing import Any

import numpy as np

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "adaptive_golden.json"
SHAPES = [(4, 3), (4,), (2, 2, 2, 2)]
STEPS = 56
NAN_WARMUP, NAN_STEP, INF_STEP, OVERFLOW_STEP = 3, 36, 42, 55


def enc(x: Any) -> Any:
    """A float as strict JSON (exact double, or "NaN"/"Infinity"/"-Infinity"); None stays None."""
    if x is None or isinstance(x, bool):
        return x
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def flat(a: Any) -> list[Any]:
    return [enc(v) for v in np.asarray(a, dtype=np.float64).ravel().tolist()]


# ----------------------------------------------------------------------------- the sequence


def sequence() -> list[list[np.ndarray]]:
    """STEPS steps of float32 grads for SHAPES (see the module doc)."""
    rng = np.random.default_rng(20260420)
    steps = []
    for t in range(STEPS):
        scale = math.exp(0.3 * rng.standard_normal())
        grads = [rng.standard_normal(s) * scale * math.exp(0.2 * rng.standard_normal()) for s in SHAPES]
        if 20 <= t < 28:
            grads = [g * 1e-2 for g in grads]
        if t in (14, 30, 31):
            grads = [g * 1e4 for g in grads]
        if t == 47:
            grads[1] = grads[1] * 1e4
        if t == OVERFLOW_STEP:
            grads[2] = grads[2] * 1e20
        grads = [g.astype(np.float32) for g in grads]
        if t in (NAN_WARMUP, NAN_STEP):
            grads[1 if t == NAN_WARMUP else 0].flat[1] = np.nan
        if t == INF_STEP:
            grads[2].flat[3] = np.inf
        steps.append(grads)
    return steps


class Model:
    """What the packages read: ``parameters()`` and ``modules()`` over torch Parameters."""

    def __init__(self, torch: Any, dtype: Any) -> None:
        self.torch = torch
        self.module = torch.nn.Module()
        self.params = [torch.nn.Parameter(torch.zeros(s, dtype=dtype)) for s in SHAPES]
        for i, p in enumerate(self.params):
            self.module.register_parameter(f"p{i}", p)

    def set_grads(self, grads: list[np.ndarray], dtype: Any) -> None:
        for p, g in zip(self.params, grads):
            p.grad = self.torch.tensor(np.asarray(g, dtype=np.float64)).to(dtype)

    def grads(self) -> list[list[Any]]:
        return [flat(p.grad.detach().double().numpy()) for p in self.params]


# ------------------------------------------------------------------------------------- zclip

ZCLIP_CONFIGS = [
    {"warmup_steps": 10},
    {"warmup_steps": 10, "max_grad_norm": None, "clip_option": "mean"},
    {"warmup_steps": 10, "max_grad_norm": None, "mode": "percentile"},
    {"warmup_steps": 10, "max_grad_norm": 10.0, "alpha": 0.9, "clip_factor": 0.7, "skip_update_on_spike": True},
    {},
]


def run_zclip(torch: Any, zclip: Any, cfg: dict[str, Any], seq: list[list[np.ndarray]], dtype: Any, patch: bool,
              with_grads: bool) -> list[dict[str, Any]]:  # fmt: skip
    z = zclip.ZClip(**cfg)
    model = Model(torch, dtype)
    rec: dict[str, Any] = {}
    compute_norm, compute_clip, apply_clip = z._compute_grad_norm, z._compute_clip_val, z._apply_clipping

    def norm_hook(m: Any) -> float:
        rec["norm"] = compute_norm(m)
        return rec["norm"]

    def clip_hook(n: float) -> Any:
        rec["clip_val"] = compute_clip(n)
        return rec["clip_val"]

    def apply_hook(m: Any, clip_val: Any, n: float) -> float:
        rec["bound"] = apply_clip(m, clip_val, n)
        return rec["bound"]

    z._compute_grad_norm, z._compute_clip_val, z._apply_clipping = norm_hook, clip_hook, apply_hook
    out = []
    for grads in seq:
        model.set_grads(grads, dtype)
        rec.clear()
        saved = (list(z.buffer), z.initialized, z.mean, z.var)
        warmup = not z.initialized
        z.step(model.module)
        if patch and not math.isfinite(rec["norm"]):
            z.buffer, z.initialized, z.mean, z.var = saved
        step = {
            "norm": enc(rec["norm"]),
            "warmup": warmup,
            "spike": rec.get("clip_val") is not None,
            "bound": enc(z.max_grad_norm if warmup else rec["bound"]),
            "mean": enc(z.mean),
            "var": enc(z.var),
            "buffer_len": len(z.buffer),
        }
        if with_grads:
            step["grads"] = model.grads()
        out.append(step)
    return out


# ---------------------------------------------------------------------------------- autoclip

AUTOCLIP_CONFIGS = [
    {},
    {"quantile": 0.5, "history_length": 8, "global_threshold": True},
    {"quantile": 0.25, "history_length": 5},
]


def run_autoclip(torch: Any, quantile_clip: Any, cfg: dict[str, Any], seq: list[list[np.ndarray]], dtype: Any,
                 patch: bool, with_grads: bool) -> list[dict[str, Any]]:  # fmt: skip
    model = Model(torch, dtype)
    clip = quantile_clip(model.params, **cfg)
    q = cfg.get("quantile", 0.9)
    out = []
    for t, grads in enumerate(seq):
        model.set_grads(grads, dtype)
        if clip.global_threshold:
            hist = clip.state["global_history"]
            saved: Any = hist.clone() if len(hist) else hist
            thresholds = [math.inf if len(hist) == 0 else torch.quantile(hist, q).item()]
        else:
            saved = {id(p): copy.deepcopy(clip.state[p]) for p in model.params}
            thresholds = [
                math.inf if len(clip.state[p]) == 0 else torch.quantile(clip.state[p]["history"], q).item()
                for p in model.params
            ]
        clip.step()
        if clip.global_threshold:
            norms = [clip.state["global_history"][-1].item()]
            if patch and not math.isfinite(norms[0]):
                clip.state["global_history"] = saved
            hist_len = [len(clip.state["global_history"])]
        else:
            norms = [clip.state[p]["history"][-1].item() for p in model.params]
            for p, n in zip(model.params, norms):
                if patch and not math.isfinite(n):
                    clip.state[p] = saved[id(p)]
                    if not clip.state[p]:  # the package's "first step" marker is an empty state
                        del clip.state[p]
            hist_len = [len(clip.state[p]["history"]) if p in clip.state else 0 for p in model.params]
        step = {"norms": [enc(n) for n in norms], "thresholds": [enc(x) for x in thresholds], "history_len": hist_len}
        if with_grads:
            step["grads"] = model.grads()
        out.append(step)
        del t
    return out


# ------------------------------------------------------------------------------------- adagc

ADAGC_CONFIGS = [
    {"warmup_steps": 20},
    {"warmup_steps": 5, "beta": 0.9, "lambda_rel": 1.2, "lambda_abs": 3.0},
]


def run_adagc(torch: Any, adagc: Any, cfg: dict[str, Any], seq: list[list[np.ndarray]], dtype: Any, patch: bool,
              with_grads: bool) -> list[dict[str, Any]]:  # fmt: skip
    model = Model(torch, dtype)
    opt = adagc(model.params, lr=0.0, betas=(0.0, 0.999), weight_decay=0.0, foreach=False, **cfg)
    warmup_steps = cfg.get("warmup_steps", 100)
    out = []
    for t, grads in enumerate(seq, start=1):
        model.set_grads(grads, dtype)
        saved = {}
        for p in model.params:
            st = opt.state[p]
            if "exp_avg" in st:
                st["exp_avg"].zero_()
            saved[id(p)] = st["gamma"].clone() if "gamma" in st else None
        was_warm = [saved[id(p)] is None or t < warmup_steps for p in model.params]
        values = [p.detach().clone() for p in model.params]
        total = math.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in grads))
        opt.step()
        with torch.no_grad():
            for p, v in zip(model.params, values):
                p.copy_(v)
        if patch:
            for p, warm in zip(model.params, was_warm):
                st = opt.state[p]
                bad = not math.isfinite(st["gamma"].item()) or (warm and not math.isfinite(total))
                if bad:
                    if saved[id(p)] is None:
                        del st["gamma"]
                    else:
                        st["gamma"] = saved[id(p)]
        step = {
            "warmup": was_warm,
            "gamma": [enc(opt.state[p]["gamma"].item()) if "gamma" in opt.state[p] else None for p in model.params],
        }
        if with_grads:
            step["grads"] = [flat(opt.state[p]["exp_avg"].double().numpy()) for p in model.params]
        out.append(step)
    return out


def stats_only(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in s.items() if k != "grads"} for s in steps]


def trajectories(torch: Any, run: Any, ref: Any, configs: list[dict[str, Any]], seq: list[list[np.ndarray]]) -> Any:
    out = []
    for cfg in configs:
        f64 = run(torch, ref, cfg, seq, torch.float64, True, True)
        out.append({
            "config": {k: enc(v) if isinstance(v, float) else v for k, v in cfg.items()},
            "steps": run(torch, ref, cfg, seq, torch.float32, True, True),
            "raw": stats_only(run(torch, ref, cfg, seq, torch.float32, False, False)),
            "f64": stats_only(f64[:-1]) + f64[-1:],  # the last step with its grads: the overflow case
        })  # fmt: skip
    return out


# --------------------------------------------------------------------------------------- AGC


def agc_inputs(rng: np.random.Generator, shapes: list[tuple[int, ...]], steps: int) -> list[dict[str, Any]]:
    """Weights and grads per step: random scales, a zero weight unit, tiny and NaN grad units."""
    out = []
    for t in range(steps):
        ws, gs = [], []
        for k, s in enumerate(shapes):
            w = rng.standard_normal(s) * math.exp(rng.standard_normal())
            g = rng.standard_normal(s) * math.exp(2.0 * rng.standard_normal()) * 0.01
            if t == 1 and len(s) >= 2:
                w[0] = 0.0  # a zero-initialized unit in torch layout (row 0) ...
                w[..., 0] = 0.0  # ... and in HWIO layout (output channel 0)
            if t == 2:
                w = w * 1e-6  # tiny weights and grads: with a small eps, the 1e-6 floor of ||g_u|| engages
                g = g * 1e-7
            if t == 3 and k == 0:
                g.flat[0] = np.nan
            if t == 4 and k == 0:
                w.flat[0] = np.inf
            ws.append(w.astype(np.float32))
            gs.append(g.astype(np.float32))
        out.append({"weights": ws, "grads": gs})
    return out


TIMM_SHAPES = [(4, 3), (4,), (3, 2, 2, 2), (2, 5)]
OPTAX_SHAPES = [(3, 4), (4,), (2, 2, 2, 3), (1, 5), (2, 3, 2), (2, 1, 2, 2, 3), (5, 1)]
AGC_CONFIGS = [{"clipping": 0.01, "eps": 1e-3}, {"clipping": 0.05, "eps": 0.1}, {"clipping": 0.01, "eps": 1e-9}]


def agc_timm(torch: Any, seq: list[dict[str, Any]]) -> list[dict[str, Any]]:
    spec = importlib.util.spec_from_file_location("timm_agc", str(pathlib.Path(_module_file("timm")) / "utils/agc.py"))
    assert spec is not None and spec.loader is not None
    agc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agc)
    out = []
    for cfg in AGC_CONFIGS:
        steps = []
        for step in seq:
            params = []
            for w, g in zip(step["weights"], step["grads"]):
                p = torch.nn.Parameter(torch.tensor(w))
                p.grad = torch.tensor(g)
                params.append(p)
            agc.adaptive_clip_grad(params, clip_factor=cfg["clipping"], eps=cfg["eps"])
            steps.append([flat(p.grad.numpy()) for p in params])
        out.append({"config": cfg, "clipped": steps})
    return out


def agc_optax(seq: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import jax.numpy as jnp
    import optax

    cases = [(cfg, None, list(range(len(OPTAX_SHAPES)))) for cfg in AGC_CONFIGS]
    # axis= (optax's override): reduce (0, 1) of the 4-D and 3-D leaves, and axis 1 of the 2-D one.
    cases += [(AGC_CONFIGS[0], (0, 1), [2, 4]), (AGC_CONFIGS[0], 1, [0])]
    out = []
    for cfg, axis, leaves in cases:
        tx = optax.adaptive_grad_clip(cfg["clipping"], eps=cfg["eps"], axis=axis)
        steps = []
        for step in seq:
            params = {f"t{k}": jnp.asarray(step["weights"][k]) for k in leaves}
            grads = {f"t{k}": jnp.asarray(step["grads"][k]) for k in leaves}
            updates, _ = tx.update(grads, tx.init(params), params)
            steps.append([flat(np.asarray(updates[f"t{k}"])) for k in leaves])
        out.append({"config": cfg, "axis": list(axis) if isinstance(axis, tuple) else axis, "leaves": leaves,
                    "clipped": steps})  # fmt: skip
    return out


def encode_agc_inputs(seq: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"weights": [flat(w) for w in s["weights"]], "grads": [flat(g) for g in s["grads"]]} for s in seq]


# ---------------------------------------------------------------------------- apply_if_finite

FINITE_PATTERN = "FFNFNNFNNNNFNFNNNF"


def apply_if_finite() -> dict[str, Any]:
    import jax.numpy as jnp
    import optax

    tx = optax.apply_if_finite(optax.identity(), max_consecutive_errors=2)
    state = tx.init(jnp.zeros(3, jnp.float32))
    steps = []
    for t, c in enumerate(FINITE_PATTERN):
        g = np.array([1.0, -2.0, 0.5 * (t + 1)], np.float32)
        if c == "N":
            g[t % 3] = np.nan if t % 2 else np.inf
        updates, state = tx.update(jnp.asarray(g), state)
        u = np.asarray(updates)
        applied = bool(np.any(u != 0) or np.any(np.isnan(u)))
        steps.append({
            "grad": flat(g),
            "applied": applied,
            "notfinite_count": int(state.notfinite_count),
            "last_finite": bool(state.last_finite),
            "total_notfinite": int(state.total_notfinite),
        })  # fmt: skip
    return {"max_consecutive_errors": 2, "steps": steps}


def _module_file(name: str) -> str:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations
    return next(iter(spec.submodule_search_locations))


def _version(name: str) -> str:
    from importlib import metadata

    return metadata.version(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=OUT, help=f"output file (default: {OUT})")
    args = parser.parse_args(argv)

    import torch
    import zclip
    from autoclip.torch import QuantileClip
    from pytorch_optimizer import AdaGC

    torch.set_num_threads(1)
    seq = sequence()
    rng = np.random.default_rng(7)
    timm_in = agc_inputs(rng, TIMM_SHAPES, 6)
    optax_in = agc_inputs(rng, OPTAX_SHAPES, 6)
    data = {
        "meta": {
            "generator": "scripts/adaptive_golden.py",
            "versions": {
                name: _version(name)
                for name in ("zclip", "autoclip", "timm", "pytorch_optimizer", "torch", "optax", "jax", "numpy")
            },
            "shapes": [list(s) for s in SHAPES],
            "steps": {"nan_warmup": NAN_WARMUP, "nan": NAN_STEP, "inf": INF_STEP, "overflow": OVERFLOW_STEP},
        },
        "sequence": [[flat(g) for g in step] for step in seq],
        "zclip": trajectories(torch, run_zclip, zclip, ZCLIP_CONFIGS, seq),
        "autoclip": trajectories(torch, run_autoclip, QuantileClip, AUTOCLIP_CONFIGS, seq),
        "adagc": trajectories(torch, run_adagc, AdaGC, ADAGC_CONFIGS, seq),
        "agc_timm": {"shapes": [list(s) for s in TIMM_SHAPES], "inputs": encode_agc_inputs(timm_in),
                     "cases": agc_timm(torch, timm_in)},
        "agc_optax": {"shapes": [list(s) for s in OPTAX_SHAPES], "inputs": encode_agc_inputs(optax_in),
                      "cases": agc_optax(optax_in)},
        "apply_if_finite": apply_if_finite(),
    }  # fmt: skip
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    args.out.write_text(text + "\n")
    print(f"wrote {args.out} ({len(text) / 1024:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
