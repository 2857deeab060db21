"""The cost of fastclip's collective next to the local clip, on GPT-2 small's gradients sharded
over N MPI ranks (ZeRO-style: each rank holds a contiguous slice of the flattened float32 grads).

    python -m fastclip.bench_distributed [--ranks 2] [--repeat 30] [--scale 1.0]
    python benches/distributed_collective.py ...    (the same)

starts ``mpiexec -n N`` itself (``pip install mpich mpi4py``). Per rank, medians over ``--repeat``
calls (a barrier before each):

- ``local clip``: ``clip_grad_norm_(shard, 1.0)`` without a group: this rank's slice only;
- ``group clip``: ``clip_grad_norm_(shard, 1.0, group=MPI.COMM_WORLD)``: the same slice, the global norm;
- ``allgather``: the collective alone (10 float64 values per rank through the mpi4py adapter);
- ``get_total_norm`` with and without the group (no scaling).

No timed assertions: numbers to read, on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["add_arguments", "launch", "main", "worker"]


def _median_ms(fn: Callable[[], object], comm: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        comm.Barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def worker(repeat: int, scale: float) -> int:
    from mpi4py import MPI

    from . import functional as fc
    from ._bench.workloads import gpt2_small_shapes
    from .distributed import FIELDS, as_communicator

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    shapes = gpt2_small_shapes()
    sizes = [max(1, int(np.prod(s) * scale)) for s in shapes]
    total = sum(sizes)
    flat = np.random.default_rng(rank).standard_normal(total // size + 1, dtype=np.float32)
    # this rank's contiguous slice of the flattened gradients, cut at tensor boundaries
    base, extra = divmod(total, size)
    lo = rank * base + min(rank, extra)
    hi = lo + base + (1 if rank < extra else 0)
    shard, start = [], 0
    for n in sizes:
        a, b = max(lo, start), min(hi, start + n)
        if a < b:
            shard.append(flat[a - lo : b - lo])
        start += n
    shard = [np.ascontiguousarray(s) * 1e-3 for s in shard]  # norms ~1: clipping at 1.0 scales
    group = MPI.COMM_WORLD
    chan = as_communicator(group)
    row = np.zeros(FIELDS)
    results = {
        "local clip": _median_ms(lambda: fc.clip_grad_norm_(shard, 1e9), comm, repeat),
        "group clip": _median_ms(lambda: fc.clip_grad_norm_(shard, 1e9, group=group), comm, repeat),
        "local norm": _median_ms(lambda: fc.get_total_norm(shard), comm, repeat),
        "group norm": _median_ms(lambda: fc.get_total_norm(shard, group=group), comm, repeat),
        "allgather": _median_ms(lambda: chan.allgather_f64(row), comm, repeat),
    }
    elements = sum(s.size for s in shard)
    gathered = comm.gather((elements, len(shard), results), root=0)
    if rank != 0:
        return 0
    assert gathered is not None  # the root receives every rank's tuple
    print(
        f"GPT-2 small float32 gradients (scale {scale}: {total:,} elements, {len(shapes)} tensors) "
        f"over {size} MPI rank(s), medians of {repeat} calls, ms"
    )
    cols = list(results)
    print(f"{'rank':>4} {'elements':>12} {'tensors':>8} " + " ".join(f"{c:>11}" for c in cols) + f" {'overhead':>9}")
    for r, (n, k, res) in enumerate(gathered):
        over = res["group clip"] - res["local clip"]
        print(f"{r:>4} {n:>12,} {k:>8} " + " ".join(f"{res[c]:>11.3f}" for c in cols) + f" {over:>9.3f}")
    print(
        "(max_norm 1e9: measures without scaling; the group path is two passes (norm, then scale) plus the\n"
        " in-place pre-check, the local one fastclip's fused call; 'allgather' is the collective alone)"
    )
    return 0


def launch(ranks: int, repeat: int = 30, scale: float = 1.0) -> int:
    """Run the benchmark on ``ranks`` MPI processes (``mpiexec -n ranks``); its exit code (2 with a
    message when mpi4py/mpiexec is missing or an argument is out of range)."""
    import importlib.util
    import subprocess

    from .demo_distributed import mpiexec_path

    if ranks < 1 or repeat < 1 or not scale > 0:
        print("bench --ranks: --ranks and --repeat must be >= 1 and --scale > 0", file=sys.stderr)
        return 2
    mpiexec = mpiexec_path()
    if mpiexec is None or importlib.util.find_spec("mpi4py") is None:
        print("bench --ranks: needs mpiexec and mpi4py: pip install mpich mpi4py", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env.setdefault("RAYON_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // ranks)))
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "fastclip.bench_distributed", "--worker"]
    cmd += ["--repeat", str(repeat), "--scale", str(scale)]
    return subprocess.run(cmd, env=env).returncode


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ranks``, ``--repeat``, ``--scale`` (and the internal ``--worker``)."""
    parser.add_argument("--ranks", type=int, default=2, help="MPI processes (default 2)")
    parser.add_argument("--repeat", type=int, default=30, help="timed calls per measurement (default 30)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of GPT-2 small's sizes (default 1)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastclip.bench_distributed", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.repeat, args.scale)
    return launch(args.ranks, args.repeat, args.scale)


if __name__ == "__main__":
    sys.exit(main())
