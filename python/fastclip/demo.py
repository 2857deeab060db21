"""Placeholder until the demo issue lands: clip a few random gradients and print the norms."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    import fastclip as fc

    rng = np.random.default_rng(args.seed)
    grads = [rng.standard_normal(s).astype(np.float32) * 10 for s in [(256, 128), (128,), (128, 10)]]
    total = fc.clip_grad_norm_(grads, max_norm=1.0)
    print(f"fastclip {fc.__version__} ({fc.isa()}): total norm {total:.4f} -> {fc.get_total_norm(grads):.6f}")
    return 0
