#!/usr/bin/env bash
# GPU check for fastclip's CUDA path: the `cuda` tests, then a benchmark of
# fastclip.clip_grad_norm_ against torch.nn.utils.clip_grad_norm_ on CUDA over GPT-2-small gradient
# shapes (148 tensors, 124,439,808 elements) in float32 and bfloat16. A short table comes last.
#
# usage: scripts/gpu_check.sh [--dry-run] [--iters N]
#   --dry-run   no GPU needed: check the script's own logic and print the table from made-up timings
#   --iters N   timed repetitions per case (default 20)
#   PYTHON=...  interpreter to use (default: .venv/bin/python if present, else python3)
#
# Installs only what it can: `pip install cupy-cuda12x` / `torch` when missing (failures are reported
# and tolerated: without CuPy the check stops, without torch the baseline column is empty). Every
# step has a timeout so the whole run stays under 5 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
ITERS=20
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --iters) ITERS="${2:?--iters needs a number}"; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[[ "$ITERS" =~ ^[1-9][0-9]*$ ]] || { echo "gpu_check: --iters must be a positive integer" >&2; exit 2; }

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"

# The benchmark (and, with --dry-run, its table logic on made-up numbers), written to a temp file.
BENCH_PY="$(mktemp "${TMPDIR:-/tmp}/fastclip_gpu_bench.XXXXXX")"
trap 'rm -f "$BENCH_PY"' EXIT
cat >"$BENCH_PY" <<'PYEOF'
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time


def gpt2_small_shapes() -> list[tuple[int, ...]]:
    """GPT-2 small (124M): token and position embeddings, 12 blocks, final layer norm."""
    d, ff, vocab, ctx = 768, 3072, 50257, 1024
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(12):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, ff), (ff,), (ff, d), (d,)]
    return [*shapes, (d,), (d,)]


def table(rows: list[dict]) -> str:
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


def timed(fn, sync, iters: int) -> float:
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


def run(iters: int) -> list[dict]:
    import fastclip as fc

    shapes = gpt2_small_shapes()
    rows = []
    try:
        import torch

        have_torch = torch.cuda.is_available()
    except ImportError:
        have_torch = False
    if not have_torch:
        import cupy as cp

        print("torch with CUDA not available: fastclip on CuPy float32 only, no baseline", file=sys.stderr)
        rng = cp.random.default_rng(0)
        grads = [rng.standard_normal(s, dtype=cp.float32) * 1e-3 for s in shapes]
        sync = cp.cuda.get_current_stream().synchronize
        ms = timed(lambda: fc.clip_grad_norm_(grads, math.inf), sync, iters)
        n = sum(g.size for g in grads)
        return [dict(dtype="float32 (cupy)", tensors=len(grads), elements=n, fastclip_ms=ms)]
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
        t_ms = timed(lambda ps=params: torch.nn.utils.clip_grad_norm_(ps, 1.0), torch.cuda.synchronize, iters)
        f_ms = timed(lambda ps=params: fc.clip_grad_norm_(ps, 1.0), torch.cuda.synchronize, iters)
        n = sum(p.numel() for p in params)
        rows.append(dict(dtype=name, tensors=len(params), elements=n, fastclip_ms=f_ms, torch_ms=t_ms,
                         rel_diff=abs(got - exact) / exact))  # fmt: skip
        params = []  # free this dtype's grads before the next
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--iters", type=int, default=20)
    a = ap.parse_args()
    shapes = gpt2_small_shapes()
    n = sum(math.prod(s) for s in shapes)
    assert (len(shapes), n) == (148, 124_439_808), (len(shapes), n)
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


main()
PYEOF

if [[ $DRY_RUN == 1 ]]; then
    "$PYTHON" "$BENCH_PY" --dry-run
    exit $?
fi

status=0
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L; then
    echo "gpu_check: no NVIDIA GPU visible (nvidia-smi); nothing to check" >&2
    exit 1
fi

try_install() {  # try_install MODULE PIP_NAME: pip install when the module is missing; never fatal
    if ! "$PYTHON" -c "import $1" >/dev/null 2>&1; then
        echo "gpu_check: $1 missing, trying pip install $2" >&2
        timeout 120 "$PYTHON" -m pip install -q "$2" || echo "gpu_check: could not install $2 (continuing)" >&2
    fi
}
try_install cupy cupy-cuda12x
try_install torch torch
try_install pytest pytest

if ! "$PYTHON" -c "import fastclip._fastclip" >/dev/null 2>&1; then
    echo "gpu_check: building the extension (maturin develop --release)" >&2
    timeout 150 "$PYTHON" -m maturin develop --release -q || echo "gpu_check: build failed" >&2
fi
"$PYTHON" -c "import cupy; print('cupy', cupy.__version__, 'devices:', cupy.cuda.runtime.getDeviceCount())" \
    || { echo "gpu_check: CuPy cannot see a GPU; stopping" >&2; exit 1; }

echo "== CUDA tests"
timeout 150 "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py -rs || status=1
echo "== benchmark"
timeout 120 "$PYTHON" "$BENCH_PY" --iters "$ITERS" || status=1
exit $status
