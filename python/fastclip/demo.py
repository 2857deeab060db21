"""``fastclip demo``: the seed document's experiment, with and without gradient clipping.

A 3-layer network without activations (1 -> 32 -> 32 -> 1) learns ``y = x + 3`` from 1000 samples
``x ~ N(0, 1)``, with SGD (learning rate 0.01) on batches of 16 drawn without replacement, for 100
steps. Weights and biases start ``~ N(0, 1)``, and the first weight is shifted by +2 ("initial
weights too large"), so the first gradients are in the hundreds and, unclipped, the loss explodes to
NaN within a few steps. The same run is repeated under four settings, all from the same initial
weights and batches (one ``--seed``):

- ``none``: ``grad_clip=None``;
- ``value``: ``ClipGradByValue(max=1.0, min=-1.0)``;
- ``norm``: ``ClipGradByNorm(1.0)``, the seed's;
- ``global``: ``ClipGradByGlobalNorm(1.0)``.

As in the seed's code with ``is_clip=True``, the weights' ``ParamAttr`` has ``need_clip=True`` and
the biases keep the default (also True), so every gradient is clipped in the clipped settings.

``python -m fastclip demo [--seed N] [--steps N] [--json PATH] [--plot PATH]`` prints a table of the
losses; :func:`run_experiment` is the same thing as a function.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from .clip import ClipGradByGlobalNorm, ClipGradByNorm, ClipGradByValue
from .initializer import Assign
from .nn import Layer, Linear, MSELoss
from .optimizer import SGD
from .param import ParamAttr

__all__ = [
    "SETTINGS",
    "Experiment",
    "Net",
    "add_arguments",
    "first_nonfinite",
    "format_table",
    "plot",
    "run",
    "run_experiment",
    "settled",
    "train",
]

TOTAL_DATA, BATCH_SIZE, INPUT_SIZE, HIDDEN_SIZE = 1000, 16, 1, 32
#: The seed's ``a``: added to every element of the first weight ("initial weights too large").
WEIGHT1_SHIFT = 2.0
LEARNING_RATE = 0.01
STEPS = 100
#: The steps the printed table shows (those below ``--steps``).
TABLE_STEPS = (0, 1, 2, 3, 10, 25, 50, 80, 99)
#: Settled means: the median of the last SETTLE_WINDOW losses is below SETTLE_LOSS (a single
#: 16-sample batch is noisy, so the last loss alone says little).
SETTLE_WINDOW, SETTLE_LOSS = 10, 2.0

ClipFactory = Optional[Callable[[], Any]]

#: Setting name -> (factory of the optimizer's ``grad_clip``, or None; description).
SETTINGS: dict[str, tuple[ClipFactory, str]] = {
    "none": (None, "grad_clip=None"),
    "value": (lambda: ClipGradByValue(max=1.0, min=-1.0), "ClipGradByValue(max=1.0, min=-1.0)"),
    "norm": (lambda: ClipGradByNorm(1.0), "ClipGradByNorm(1.0)"),
    "global": (lambda: ClipGradByGlobalNorm(1.0), "ClipGradByGlobalNorm(1.0)"),
}


@dataclass(frozen=True)
class Experiment:
    """Everything random in one run, drawn once from one seed and shared by all settings.

    ``weights``/``biases``: the three layers' initial values (float32, first weight already
    shifted); ``x``, ``y``: the data set ``[1000, 1]``; ``batches``: ``[steps, 16]`` row indices,
    each row drawn without replacement.
    """

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    x: np.ndarray
    y: np.ndarray
    batches: np.ndarray

    @classmethod
    def from_seed(cls, seed: int, steps: int = STEPS) -> Experiment:
        """Draw, from ``np.random.default_rng(seed)`` and in the seed's order: the initial weights
        and biases ``~ N(0, 1)`` (float32; +2 on the first weight), then ``x ~ N(0, 1)`` with
        ``y = x + 3``, then ``steps`` batches ``rng.choice(1000, 16, replace=False)``."""
        rng = np.random.default_rng(seed)
        sizes = [(INPUT_SIZE, HIDDEN_SIZE), (HIDDEN_SIZE, HIDDEN_SIZE), (HIDDEN_SIZE, 1)]
        weights, biases = [], []
        for shape in sizes:
            weights.append(rng.standard_normal(shape, dtype=np.float32))
            biases.append(rng.standard_normal(shape[1:], dtype=np.float32))
        weights[0] += np.float32(WEIGHT1_SHIFT)
        x = rng.standard_normal((TOTAL_DATA, INPUT_SIZE), dtype=np.float32)
        y = x + np.float32(3.0)
        batches = np.array([rng.choice(TOTAL_DATA, BATCH_SIZE, replace=False) for _ in range(steps)], dtype=np.intp)
        return cls(tuple(weights), tuple(biases), x, y, batches.reshape(steps, BATCH_SIZE))


class Net(Layer):
    """The seed's network: three :class:`~fastclip.nn.Linear` layers, no activations.

    Each parameter is set through ``ParamAttr(initializer=Assign(...))`` as in the seed; the weights
    get ``need_clip=is_clip``, the biases the default ``need_clip=True``.
    """

    def __init__(self, experiment: Experiment, is_clip: bool) -> None:
        super().__init__()
        layers = []
        for k, (w, b) in enumerate(zip(experiment.weights, experiment.biases), start=1):
            weight_attr = ParamAttr(name=f"linear_weight_{k}", initializer=Assign(w), need_clip=is_clip)
            bias_attr = ParamAttr(name=f"linear_bias_{k}", initializer=Assign(b))
            layers.append(Linear(w.shape[0], w.shape[1], weight_attr=weight_attr, bias_attr=bias_attr))
        self.linear1, self.linear2, self.linear3 = layers

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        """``linear3(linear2(linear1(inputs)))``."""
        return self.linear3(self.linear2(self.linear1(inputs)))


def train(experiment: Experiment, setting: str, steps: int | None = None) -> list[float | None]:
    """Train a fresh :class:`Net` under ``setting`` (a key of :data:`SETTINGS`); the loss of each step.

    Each step records the batch's loss, then backward, ``opt.step()``, ``opt.clear_grad()``, as the
    seed's loop does. Once the loss is NaN or inf the run stops and the remaining entries are None.
    ``steps`` defaults to the experiment's number of batches. Raises ``KeyError`` for an unknown
    setting and ``ValueError`` for more steps than batches.
    """
    make_clip, _ = SETTINGS[setting]
    steps = len(experiment.batches) if steps is None else steps
    if steps > len(experiment.batches):
        raise ValueError(f"{steps} steps but only {len(experiment.batches)} batches were drawn")
    model = Net(experiment, is_clip=make_clip is not None)
    loss_fn = MSELoss(reduction="mean")
    opt = SGD(learning_rate=LEARNING_RATE, parameters=model.parameters(), grad_clip=make_clip and make_clip())
    losses: list[float | None] = [None] * steps
    # Overflow to inf (and inf - inf = NaN) is the expected outcome here, not something to warn about.
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(steps):
            idx = experiment.batches[t]
            loss = float(loss_fn(model(experiment.x[idx]), experiment.y[idx]))
            if not math.isfinite(loss):
                break
            losses[t] = loss
            model.backward(loss_fn.backward())
            opt.step()
            opt.clear_grad()
    return losses


def run_experiment(seed: int = 0, steps: int = STEPS) -> dict[str, list[float | None]]:
    """The loss curves of every setting for one seed: ``{"none": [...], "value": ..., "norm": ..., "global": ...}``.

    ``None`` marks the steps from the first non-finite loss on. Raises ``ValueError`` if ``steps < 1``.

    >>> curves = run_experiment(seed=0, steps=5)
    >>> first_nonfinite(curves["none"]) is not None, first_nonfinite(curves["norm"])
    (True, None)
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    experiment = Experiment.from_seed(seed, steps)
    return {name: train(experiment, name) for name in SETTINGS}


def first_nonfinite(losses: list[float | None]) -> int | None:
    """The first step whose loss is None (non-finite), or None if every step is finite."""
    return next((t for t, loss in enumerate(losses) if loss is None), None)


def _finite_tail(losses: list[float | None]) -> list[float] | None:
    """The last :data:`SETTLE_WINDOW` losses, or None if one of them is None (non-finite)."""
    tail = [v for v in losses[-SETTLE_WINDOW:] if v is not None]
    return tail if len(tail) == len(losses[-SETTLE_WINDOW:]) else None


def settled(losses: list[float | None]) -> bool:
    """Whether the median of the last 10 losses is finite and below 2.0 (the demo's "it settled")."""
    tail = _finite_tail(losses)
    return tail is not None and float(np.median(tail)) < SETTLE_LOSS


def _fmt(v: float | None) -> str:
    if v is None:
        return "nan/inf"
    return f"{v:.4g}" if abs(v) < 1e6 else f"{v:.3g}"


def format_table(curves: dict[str, list[float | None]]) -> str:
    """The table ``run`` prints: loss at :data:`TABLE_STEPS`, first non-finite step, median of the last 10."""
    steps = len(next(iter(curves.values())))
    names = list(curves)
    width = 12
    lines = ["step".rjust(16) + "".join(n.rjust(width) for n in names)]
    lines.append("-" * len(lines[0]))
    for t in (t for t in TABLE_STEPS if t < steps):
        lines.append(str(t).rjust(16) + "".join(_fmt(curves[n][t]).rjust(width) for n in names))
    lines.append("-" * len(lines[0]))
    row = "".join(str(k if (k := first_nonfinite(curves[n])) is not None else "-").rjust(width) for n in names)
    lines.append("first non-finite" + row)
    tails = [_finite_tail(curves[n]) for n in names]
    meds = ["-" if tail is None else _fmt(float(np.median(tail))) for tail in tails]
    lines.append(f"median last {min(SETTLE_WINDOW, steps):<4}" + "".join(m.rjust(width) for m in meds))
    return "\n".join(lines)


def plot(curves: dict[str, list[float | None]], path: str, seed: int) -> None:
    """Write a PNG of the loss curves (log-scale y), marking where each run went non-finite.

    Raises ``ImportError`` with an install hint if matplotlib is missing.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("--plot needs matplotlib: pip install 'fastclip-rs[demo]'") from exc

    colors = {"none": "#d62728", "value": "#ff7f0e", "norm": "#1f77b4", "global": "#2ca02c"}
    series = {name: np.array([np.nan if v is None else v for v in losses]) for name, losses in curves.items()}
    steps = len(next(iter(curves.values())))
    # The exploding run reaches 1e20 and more; a y range that tall flattens every other curve. Cap
    # the axis a decade above what the runs that never diverge reach, and mark where a run leaves it.
    calm = [ys for name, ys in series.items() if first_nonfinite(curves[name]) is None]
    top = 10 ** math.ceil(math.log10(max(float(np.nanmax(np.concatenate(calm))) if calm else 1e4, 1e3)) + 1)
    finite = np.concatenate(list(series.values()))
    finite = finite[np.isfinite(finite) & (finite > 0)]
    bottom = 10 ** math.floor(math.log10(float(finite.min()))) if finite.size else 1e-2

    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.subplots()
    ax.set_yscale("log")
    ax.set_ylim(bottom, top)
    ax.set_xlim(0, max(steps - 1, 1))
    for name, ys in series.items():
        color = colors.get(name)
        label = f"{name}: {SETTINGS[name][1]}" if name in SETTINGS else name
        ax.plot(np.arange(steps), ys, color=color, lw=1.6, label=label, zorder=3)
        k = first_nonfinite(curves[name])
        if k is None:
            continue
        ax.axvline(k, color=color, ls=":", lw=1.2)
        above = np.flatnonzero(ys[:k] > top)
        if above.size:  # left the axis: an arrow where it crossed the top, the values in the note
            ax.plot(above[0], top, marker="^", ms=11, color=color, mec="black", clip_on=False, zorder=5)
        elif k > 0:
            ax.plot(k - 1, ys[k - 1], marker="X", ms=10, color=color, mec="black", zorder=5)
        shown = ", ".join(f"{v:.2g}" for v in ys[max(0, k - 3) : k])
        ax.annotate(
            f"{name}: loss {shown}, then NaN/inf at step {k}",
            xy=(k, 0.96),
            xycoords=("data", "axes fraction"),
            xytext=(6, 0),
            textcoords="offset points",
            va="top",
            color=color,
            fontsize=9,
            fontweight="bold",
        )
    ax.axhline(SETTLE_LOSS, color="gray", ls="--", lw=0.9, label=f"loss {SETTLE_LOSS:g} (settled below)", zorder=2)
    ax.set_xlabel("training step (SGD, lr 0.01, batches of 16)")
    ax.set_ylabel("MSE loss of the batch (log scale)")
    ax.set_title(
        f"Gradient clipping on the seed's experiment: 3 linear layers, first weight +2, y = x + 3 (seed {seed})",
        fontsize=10,
    )
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=9, frameon=False)
    fig.savefig(path, dpi=120)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``demo`` subcommand's options: ``--seed``, ``--steps``, ``--json``, ``--plot``."""
    parser.description = "The seed document's experiment: loss without gradient clipping and with each clip."
    parser.add_argument("--seed", type=int, default=0, help="one seed for weights, data and batches (default 0)")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"training steps (default {STEPS})")
    parser.add_argument("--json", metavar="PATH", help="write every loss as JSON (null where not finite)")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of the loss curves (needs matplotlib)")
    parser.add_argument(
        "--ranks", type=int, default=None, help="train data parallel on N MPI ranks (needs mpi4py and mpich)"
    )


def run(args: argparse.Namespace) -> int:
    """Run the experiment, print the table, write ``--json``/``--plot``; 0 on success, 2 on a usage error."""
    if args.steps < 1:
        print(f"fastclip demo: --steps must be >= 1, got {args.steps}", file=sys.stderr)
        return 2
    if getattr(args, "ranks", None) is not None:
        if args.ranks < 1:
            print(f"fastclip demo: --ranks must be >= 1, got {args.ranks}", file=sys.stderr)
            return 2
        from . import demo_distributed

        return demo_distributed.launch(args.ranks, args.seed, args.steps)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("fastclip demo: --plot needs matplotlib: pip install 'fastclip-rs[demo]'", file=sys.stderr)
            return 2
    curves = run_experiment(args.seed, args.steps)
    print(
        f"The seed's experiment (seed {args.seed}): Linear 1->32->32->1 without activations, first weight +2,\n"
        f"y = x + 3, SGD lr {LEARNING_RATE}, {args.steps} steps of batches of {BATCH_SIZE} from {TOTAL_DATA} samples."
    )
    print("Loss (MSE of the batch) per setting:")
    print("  " + "; ".join(f"{name} = {desc}" for name, (_, desc) in SETTINGS.items()))
    print()
    print(format_table(curves))
    if args.json:
        doc = {
            "seed": args.seed,
            "steps": args.steps,
            "settings": {
                name: {"grad_clip": SETTINGS[name][1], "first_nonfinite": first_nonfinite(v), "loss": v}
                for name, v in curves.items()
            },
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, allow_nan=False)
        print(f"\nwrote {os.path.abspath(args.json)}")
    if args.plot:
        plot(curves, args.plot, args.seed)
        print(f"\nwrote {os.path.abspath(args.plot)}")
    return 0
