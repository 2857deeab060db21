#!/usr/bin/env bash
# GPU check for fastclip's CUDA path: the `cuda` tests, then a benchmark of
# fastclip.clip_grad_norm_ against torch.nn.utils.clip_grad_norm_ on CUDA over GPT-2-small gradient
# shapes (148 tensors, 124,439,808 elements) in float32 and bfloat16 (scripts/gpu_check.py). A short
# table comes last.
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
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[[ "$ITERS" =~ ^[1-9][0-9]*$ ]] || { echo "gpu_check: --iters must be a positive integer" >&2; exit 2; }

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"

# The benchmark (and, with --dry-run, its table logic on made-up numbers) is scripts/gpu_check.py.
BENCH_PY=scripts/gpu_check.py

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
