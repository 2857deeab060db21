"""The cost of fastclip's collective next to the local clip, on GPT-2 small's gradients sharded
over N MPI ranks (ZeRO-style: each rank holds a contiguous slice of the flattened float32 grads).

    python benches/distributed_collective.py [--ranks 2] [--repeat 30] [--scale 1.0]

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

import numpy as np


def _median_ms(fn: Callable[[], object], comm: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        comm.Barrier()  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def worker(repeat: int, scale: float) -> int:
    import fastclip as fc
    from fastclip import bench
    from fastclip.distributed import FIELDS, as_communicator
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    shapes = bench.gpt2_small_shapes()
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of GPT-2 small's sizes")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.repeat, args.scale)
    import subprocess

    from fastclip.demo_distributed import mpiexec_path

    mpiexec = mpiexec_path()
    if mpiexec is None:
        print("needs mpiexec and mpi4py: pip install mpich mpi4py", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env.setdefault("RAYON_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.ranks)))
    cmd = [mpiexec, "-n", str(args.ranks), sys.executable, os.path.abspath(__file__), "--worker"]
    cmd += ["--repeat", str(args.repeat), "--scale", str(args.scale)]
    return subprocess.run(cmd, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
