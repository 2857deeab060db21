"""The benchmark half of ``scripts/gpu_check.sh``: fastclip.clip_grad_norm_ against
torch.nn.utils.clip_grad_norm_ on CUDA over GPT-2-small gradient shapes (148 tensors, 124,439,808
elements) in float32 and bfloat16, each checked against a float64 reference and torch's rounding.
A short table comes last.

usage: python scripts/gpu_check.py [--dry-run] [--iters N]
  --dry-run   no GPU, no CuPy, no built extension needed: the table from made-up timings
  --iters N   timed repetitions per case (default 20)

Without torch's CUDA it times fastclip on CuPy float32 alone (no baseline column).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent


def gpt2_small_shapes() -> list[tuple[int, ...]]:
    """GPT-2 small's shapes, from the benchmark's own workloads (``fastclip/_bench/workloads.py``),
    loaded by path: that module needs only NumPy, so a dry run works before the extension is built."""
    path = ROOT / "python" / "fastclip" / "_bench" / "workloads.py"
    spec = importlib.util.spec_from_file_location("_gpu_check_workloads", path)
    assert spec is not None and spec.loader is not None, path
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.gpt2_small_shapes()


def table(rows: list[dict[str, Any]]) -> str:
    """Rows of {dtype, tensors, elements, fastclip_ms, torch_ms, rel_diff} as an aligned text table."""
    head = ["dtype", "tensors", "elements", "fastclip ms", "torch ms", "speedup", "norm rel err (f64 ref)"]
    lines = []
    for r in rows:
        fc_ms, t_ms = r["fastclip_ms"], r.get("torch_ms")
        lines.append([
            r["dtype"], str(r["tensors"]), f"{r['elements']:,}", f"{fc_ms:.3f}",
            "-" if t_ms is None else f"{t_ms:.3f}",
            "-" if t_ms is None else f"{t_ms / fc_ms:.2f}x",
            "-" if r.get("rel_diff") is None else f"{r['rel_diff']:.1e}",
        ])  # fmt: skip
    widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*x) for x in lines]
    return "\n".join(out)


def timed(fn: Callable[[], Any], sync: Callable[[], Any], iters: int) -> float:
    """Median wall time of fn() in milliseconds (synchronized), after 3 warm-up calls."""
    for _ in range(3):
        fn()
    sync()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def _cupy_only(shapes: list[tuple[int, ...]], iters: int) -> list[dict[str, Any]]:
    import cupy as cp  # type: ignore[import-not-found, unused-ignore]
    import fastclip as fc

    print("torch with CUDA not available: fastclip on CuPy float32 only, no baseline", file=sys.stderr)
    rng = cp.random.default_rng(0)
    grads = [rng.standard_normal(s, dtype=cp.float32) * 1e-3 for s in shapes]
    sync = cp.cuda.get_current_stream().synchronize
    ms = timed(lambda: fc.clip_grad_norm_(grads, math.inf), sync, iters)
    n = sum(g.size for g in grads)
    return [dict(dtype="float32 (cupy)", tensors=len(grads), elements=n, fastclip_ms=ms)]


def run(iters: int) -> list[dict[str, Any]]:
    """Check and time both libraries on the GPU, one row per dtype."""
    import fastclip as fc

    shapes = gpt2_small_shapes()
    rows = []
    try:
        import torch  # type: ignore[import-not-found, unused-ignore]

        have_torch = torch.cuda.is_available()
    except ImportError:
        have_torch = False
    if not have_torch:
        return _cupy_only(shapes, iters)
    for name in ("float32", "bfloat16"):
        dtype = getattr(torch, name)
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.empty(s, device="cuda", dtype=dtype)) for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, device="cuda", dtype=dtype) * 1e-2
        exact = math.sqrt(sum(float(p.grad.double().square().sum()) for p in params))  # float64 reference
        got = fc.get_total_norm(params)
        # one clipping call checked against torch's rounding (float32 product, rounded once)
        ref = [p.grad.clone() for p in params]
        total = fc.clip_grad_norm_(params, 1.0)
        coef = torch.tensor(min(1.0, 1.0 / (total + 1e-6)), device="cuda")
        bad = sum(int(not torch.equal(p.grad, (r.float() * coef).to(dtype))) for p, r in zip(params, ref))
        if bad:
            print(f"{name}: {bad} tensors differ from the float32-product reference", file=sys.stderr)
        del ref
        # timed: the norm is now ~1, so every call scales by 1/(1 + 1e-6) in both libraries
        t_ms = timed(partial(torch.nn.utils.clip_grad_norm_, params, 1.0), torch.cuda.synchronize, iters)
        f_ms = timed(partial(fc.clip_grad_norm_, params, 1.0), torch.cuda.synchronize, iters)
        n = sum(p.numel() for p in params)
        rows.append(dict(dtype=name, tensors=len(params), elements=n, fastclip_ms=f_ms, torch_ms=t_ms,
                         rel_diff=abs(got - exact) / exact))  # fmt: skip
        params = []  # free this dtype's grads before the next
        torch.cuda.empty_cache()
    return rows


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {n}")
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="the table from made-up timings, no GPU")
    ap.add_argument("--iters", type=_positive, default=20, help="timed repetitions per case")
    a = ap.parse_args(argv)
    shapes = gpt2_small_shapes()
    n = sum(math.prod(s) for s in shapes)
    if (len(shapes), n) != (148, 124_439_808):
        raise SystemExit(f"gpu_check: GPT-2 small should be 148 tensors, 124,439,808 elements; got {len(shapes)}, {n}")
    if a.dry_run:
        rows = [
            dict(dtype="float32", tensors=len(shapes), elements=n, fastclip_ms=1.234, torch_ms=2.5, rel_diff=3e-8),
            dict(dtype="bfloat16", tensors=len(shapes), elements=n, fastclip_ms=0.7, torch_ms=None),
        ]
        print("dry run: made-up timings")
    else:
        rows = run(a.iters)
    print()
    print("fastclip.clip_grad_norm_ vs torch.nn.utils.clip_grad_norm_, GPT-2 small grads, CUDA (median ms)")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
