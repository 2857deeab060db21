"""The seed's experiment trained data parallel on N MPI ranks, with ZeRO-style sharded gradients.

``python -m fastclip.demo_distributed --ranks N [--seed S] [--steps K]`` starts
``mpiexec -n N`` itself (the ``mpiexec`` of the ``mpich`` wheel beside this Python, or the one on
``PATH``; ``pip install mpich mpi4py``). Every rank builds the same network and data
(:class:`fastclip.demo.Experiment`), then each step:

1. takes its slice of the batch of 16 (uneven where 16 is not a multiple of N) and back-propagates
   the batch's mean loss restricted to its rows (``sum`` loss times 1/16, exact);
2. reduce-scatters the flattened float32 gradients (``MPI.Reduce_scatter``, sum): rank ``r`` ends up
   with the summed gradient of its contiguous slice ``[lo_r, hi_r)`` of the flattened parameters
   (a tail of one tensor, whole tensors, a head of another);
3. steps an :class:`~fastclip.optimizer.SGD` over its slice only: its parameters are views of the
   slice (``fastclip.Parameter`` over ``weight.reshape(-1)[a:b]``) and its ``grad_clip`` is
   ``ClipGradByGlobalNorm(1.0, group=MPI.COMM_WORLD)``, whose global norm spans every rank's slice;
4. all-gathers the updated slices so that every rank has the whole model again.

The loss of each step is the all-reduced sum of the ranks' squared errors over 16. Rank 0 prints the
per-rank shards, the loss table of the distributed run (the single-process demo's table) and how far
each setting's losses are from the single-process run's (:func:`fastclip.demo.train`): equal within
float32 summation-order rounding. Settings: ``none``, ``value`` (elementwise: needs no group) and
``global``; ``norm`` (each tensor's own norm) is left out because a slice of a tensor does not know
its tensor's norm.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
from typing import Any

import numpy as np

from . import demo
from .clip import ClipGradByGlobalNorm, ClipGradByValue
from .nn import MSELoss
from .optimizer import SGD
from .param import Parameter

__all__ = ["SETTINGS", "add_arguments", "launch", "main", "mpiexec_path", "run", "shard_bounds", "train_sharded"]

#: The settings the distributed run trains (a subset of :data:`fastclip.demo.SETTINGS`).
SETTINGS = ("none", "value", "global")
#: A distributed loss must equal the single-process one within this relative difference.
RTOL = 1e-3


def shard_bounds(total: int, ranks: int) -> list[tuple[int, int]]:
    """Contiguous ``[lo, hi)`` ranges of ``range(total)``, the first ``total % ranks`` one longer."""
    base, extra = divmod(total, ranks)
    out, lo = [], 0
    for r in range(ranks):
        hi = lo + base + (1 if r < extra else 0)
        out.append((lo, hi))
        lo = hi
    return out


def _make_clip(setting: str, comm: Any) -> Any:
    if setting == "none":
        return None
    if setting == "value":
        return ClipGradByValue(max=1.0, min=-1.0)
    if setting == "global":
        return ClipGradByGlobalNorm(1.0, group=comm)
    raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")


class _Shard:
    """This rank's slice of the flattened parameters: the pieces, and Parameters viewing them."""

    def __init__(self, params: list[Parameter], lo: int, hi: int) -> None:
        self.params = params
        self.sizes = [p.size for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int).tolist()
        self.lo, self.hi = lo, hi
        self.grad = np.zeros(hi - lo, np.float32)  # the reduce-scatter lands here
        self.pieces: list[tuple[int, int, int]] = []  # (param index, a, b): param.reshape(-1)[a:b]
        self.views: list[Parameter] = []
        for i, (p, start) in enumerate(zip(params, self.offsets[:-1])):
            a, b = max(lo, start), min(hi, start + p.size)
            if a < b:
                self.pieces.append((i, a - start, b - start))
                view = Parameter(p.value.reshape(-1)[a - start : b - start], name=f"{p.name}[{a - start}:{b - start}]")
                view.grad = self.grad[a - lo : b - lo]
                self.views.append(view)

    def describe(self) -> str:
        if not self.pieces:
            return "no parameters"
        parts = ", ".join(f"{self.params[i].name}[{a}:{b}]" for i, a, b in self.pieces)
        return f"elements [{self.lo}, {self.hi}) = {self.hi - self.lo}: {parts}"


def train_sharded(experiment: demo.Experiment, setting: str, comm: Any) -> tuple[list[float | None], str, int]:
    """Train one setting data parallel on ``comm`` (an ``mpi4py.MPI.Comm``); every rank returns the
    same losses (``None`` from the first non-finite one), plus its shard's description and batch rows."""
    from mpi4py import MPI

    rank, size = comm.Get_rank(), comm.Get_size()
    model = demo.Net(experiment, is_clip=setting != "none")
    params = model.parameters()
    total = sum(p.size for p in params)
    bounds = shard_bounds(total, size)
    shard = _Shard(params, *bounds[rank])
    counts = [hi - lo for lo, hi in bounds]
    opt = SGD(learning_rate=demo.LEARNING_RATE, parameters=shard.views, grad_clip=_make_clip(setting, comm))
    loss_fn = MSELoss(reduction="sum")
    flat_grad = np.zeros(total, np.float32)
    flat_value = np.zeros(total, np.float32)
    batch = demo.BATCH_SIZE
    inv = np.float32(1.0 / batch)  # 1/16: a power of two, so scaling is exact
    losses: list[float | None] = [None] * len(experiment.batches)
    rows = len(np.array_split(np.arange(batch), size)[rank])
    with np.errstate(over="ignore", invalid="ignore"):
        for t, idx in enumerate(experiment.batches):
            mine = np.array_split(idx, size)[rank]
            for p in params:
                p.grad = None
            local = 0.0
            if mine.size:
                loss = loss_fn(model(experiment.x[mine]), experiment.y[mine])
                local = float(loss)
                model.backward(loss_fn.backward(inv))
            for p, start in zip(params, shard.offsets[:-1]):
                g = p.grad
                flat_grad[start : start + p.size] = 0.0 if g is None else g.reshape(-1)
            step_loss = comm.allreduce(local, op=MPI.SUM) / batch
            if not math.isfinite(step_loss):
                break
            losses[t] = step_loss
            comm.Reduce_scatter([flat_grad, MPI.FLOAT], [shard.grad, MPI.FLOAT], recvcounts=counts, op=MPI.SUM)
            opt.step()
            # every rank gets every slice back: the whole model again
            mine_values = np.concatenate([v.value for v in shard.views]) if shard.views else np.zeros(0, np.float32)
            displs = [lo for lo, _ in bounds]
            comm.Allgatherv([mine_values, MPI.FLOAT], [flat_value, counts, displs, MPI.FLOAT])
            for p, start in zip(params, shard.offsets[:-1]):
                p.value.reshape(-1)[:] = flat_value[start : start + p.size]
    return losses, shard.describe(), rows


def _max_rel_diff(a: list[float | None], b: list[float | None]) -> float:
    worst = 0.0
    for x, y in zip(a, b):
        if (x is None) != (y is None):
            return math.inf
        if x is not None and y is not None and y != 0:
            worst = max(worst, abs(x - y) / abs(y))
    return worst


def worker(seed: int, steps: int) -> int:
    """One rank's part (under mpiexec): train every setting, rank 0 prints. 1 if a setting's losses
    differ from the single-process run by more than :data:`RTOL`."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    experiment = demo.Experiment.from_seed(seed, steps)
    curves: dict[str, list[float | None]] = {}
    described: list[tuple[str, int]] = []
    for setting in SETTINGS:
        losses, desc, rows = train_sharded(experiment, setting, comm)
        curves[setting] = losses
        if setting == SETTINGS[0]:
            gathered = comm.gather((desc, rows), root=0)  # None on every rank but the root
            if gathered is not None:
                described = gathered
    if rank != 0:
        return 0
    print(
        f"The seed's experiment (seed {seed}) trained data parallel on {size} MPI rank(s): each rank takes its rows "
        f"of every batch of {demo.BATCH_SIZE},\ngradients are reduce-scattered into contiguous slices of the "
        "flattened parameters, each rank clips and steps its own slice\n(ClipGradByGlobalNorm(1.0, "
        "group=MPI.COMM_WORLD) for 'global'), then the slices are all-gathered."
    )
    print()
    for r, (desc, rows) in enumerate(described):
        print(f"  rank {r}: {rows:2d} batch rows, {desc}")
    print()
    print(demo.format_table(curves))
    single = {s: demo.train(experiment, s) for s in SETTINGS}
    diffs = {s: _max_rel_diff(curves[s], single[s]) for s in SETTINGS}
    print()
    print(
        "largest relative difference from the single-process run:   "
        + "   ".join(f"{s} {d:.1e}" for s, d in diffs.items())
    )
    ok = all(d <= RTOL for d in diffs.values())
    print(f"equal within {RTOL:g}: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


def mpiexec_path() -> str | None:
    """``mpiexec`` beside this Python (the ``mpich`` wheel's), else the one on ``PATH``."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.exists(here):
        return here
    return shutil.which("mpiexec")


def launch(ranks: int, seed: int = 0, steps: int = demo.STEPS, timeout: float | None = 600) -> int:
    """Run the distributed demo on ``ranks`` MPI processes (``mpiexec -n ranks``); its exit code.
    2 (with a message) when mpi4py or mpiexec is missing or ``ranks``/``steps`` < 1."""
    if ranks < 1 or steps < 1:
        print(f"fastclip demo: --ranks and --steps must be >= 1, got {ranks} and {steps}", file=sys.stderr)
        return 2
    try:
        import importlib.util

        have = importlib.util.find_spec("mpi4py") is not None
    except (ImportError, ValueError):
        have = False
    mpiexec = mpiexec_path()
    if not have or mpiexec is None:
        print("fastclip demo --ranks: needs mpi4py and mpiexec: pip install mpich mpi4py", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env.setdefault("RAYON_NUM_THREADS", "1")  # the ranks share the cores
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "fastclip.demo_distributed", "--worker"]
    cmd += ["--seed", str(seed), "--steps", str(steps)]
    try:
        return subprocess.run(cmd, env=env, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        print(f"fastclip demo --ranks: mpiexec did not finish within {timeout} s", file=sys.stderr)
        return 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ranks``, ``--seed``, ``--steps`` (and the internal ``--worker``)."""
    parser.description = "The seed's experiment, data parallel on N MPI ranks with sharded gradients."
    parser.add_argument("--ranks", type=int, default=2, help="MPI processes (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="one seed for weights, data and batches (default 0)")
    parser.add_argument("--steps", type=int, default=demo.STEPS, help=f"training steps (default {demo.STEPS})")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    """Under mpiexec (``--worker``) one rank's part; otherwise start mpiexec."""
    if args.worker:
        return worker(args.seed, args.steps)
    return launch(args.ranks, args.seed, args.steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastclip.demo_distributed")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
