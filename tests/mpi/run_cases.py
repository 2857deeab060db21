"""``mpiexec -n N python tests/mpi/run_cases.py``: every case of ``dist_cases.py`` on MPI.COMM_WORLD (and
on a split communicator), each rank checking its own results. Prints one ``rank R: K failures``
line per rank (details first); exits 1 if any rank failed."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fastclip as fc
import numpy as np
from dist_cases import run_all
from mpi4py import MPI


def main() -> int:
    world = MPI.COMM_WORLD
    failures = run_all(world)
    # a sub-communicator (even and odd ranks), and MPI.COMM_NULL for a process outside any group
    sub = world.Split(world.rank % 2, world.rank)
    failures += [f"(split) {f}" for f in run_all(sub)]
    outside = world.Split(MPI.UNDEFINED if world.rank == 0 else 0, world.rank)
    try:
        fc.get_total_norm([np.ones(2)], group=outside)
        if world.rank == 0:
            failures.append(f"rank {world.rank}: MPI.COMM_NULL accepted")
    except ValueError as e:
        if world.rank != 0 or "COMM_NULL" not in str(e):
            failures.append(f"rank {world.rank}: {e}")
    for f in failures:
        print(f, flush=True)
    print(f"rank {world.rank}: {len(failures)} failures", flush=True)
    world.Barrier()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
