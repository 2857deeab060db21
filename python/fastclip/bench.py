"""``python -m fastclip bench``: fastclip against the NumPy way (and torch when importable) and
against the machine's memory-bandwidth floor, measured side by side in one run.

This module is the command line only; the workloads, peers, measurements and reports are in
:mod:`fastclip._bench` (see its docstring for what is measured and what the floor is).

``FASTCLIP_BENCH_SCALE`` (a float, default 1; ``--quick`` uses 1/32) scales every workload's
element count, so a quick run or a CI smoke test is possible. ``--plot`` needs matplotlib.
"""

from __future__ import annotations

import argparse
import json
import os

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``fastclip bench`` options."""
    parser.add_argument("--quick", action="store_true", help="1/32 of the sizes and fewer repeats (< 1 minute)")
    parser.add_argument("--json", metavar="PATH", help="write every measurement as JSON")
    parser.add_argument("--plot", metavar="PATH", help="draw the ratios to the floor as a bar chart (matplotlib)")
    parser.add_argument("--reps", type=int, default=None, help="timed calls per measurement (median taken)")
    parser.add_argument("--no-busy", action="store_true", help="skip the busy-core experiment")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table, then write the JSON and the plot if asked.

    Raises ``ModuleNotFoundError`` for ``--plot`` without matplotlib (after the table and the JSON);
    ``fastclip``'s command line turns that one into a message saying what to install.
    """
    from ._bench.report import plot, report
    from ._bench.suite import run_all

    env = os.environ.get("FASTCLIP_BENCH_SCALE")
    scale = float(env) if env else (1 / 32 if args.quick else 1.0)
    reps = args.reps or (5 if args.quick else 11)
    budget_s = 1.0 if args.quick else 4.0
    result = run_all(scale, reps, budget_s, not args.no_progress, not args.no_busy)
    print(report(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    if args.plot:
        plot(result, args.plot)
    return 0
