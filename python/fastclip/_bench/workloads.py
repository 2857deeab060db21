"""The benchmark workloads: real models' parameter shapes, and the arrays to clip."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["MI", "gpt2_small_shapes", "make_arrays", "resnet50_shapes", "workloads"]

MI = 1 << 20


def gpt2_small_shapes() -> list[tuple[int, ...]]:
    """GPT-2 small (124M): token and position embeddings, 12 blocks of 12 tensors, final norm
    (148 tensors, 124,439,808 elements)."""
    d, v, ctx = 768, 50257, 1024
    shapes: list[tuple[int, ...]] = [(v, d), (ctx, d)]
    for _ in range(12):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return [*shapes, (d,), (d,)]


def resnet50_shapes() -> list[tuple[int, ...]]:
    """ResNet-50's 161 parameter tensors (53 convolutions, 53 batch norms x 2, the classifier)."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    cin = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [(width, cin, 1, 1), (width,), (width,)]
            shapes += [(width, width, 3, 3), (width,), (width,)]
            shapes += [(4 * width, width, 1, 1), (4 * width,), (4 * width,)]
            if b == 0:
                shapes += [(4 * width, cin, 1, 1), (4 * width,), (4 * width,)]
            cin = 4 * width
    return [*shapes, (1000, 2048), (1000,)]


def workloads(scale: float) -> list[tuple[str, Any, list[tuple[int, ...]]]]:
    """(name, dtype, shapes) of every workload, element counts multiplied by ``scale``."""

    def scaled(shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        if scale == 1.0:
            return shapes
        return [(max(1, round(math.prod(s) * scale)),) for s in shapes]

    big: list[tuple[int, ...]] = [(64 * MI,)]
    return [
        ("64M f32", np.float32, scaled(big)),
        ("GPT-2 small f32", np.float32, scaled(gpt2_small_shapes())),
        ("ResNet-50 f32", np.float32, scaled(resnet50_shapes())),
        # the tensor count is kept at 5,000 down to --quick's scale: it is the point of the workload
        ("5000x256 f32", np.float32, [(256,)] * min(5000, max(10, round(5000 * scale * 32)))),
        ("64M f16", np.float16, scaled(big)),
    ]


def make_arrays(dtype: Any, shapes: list[tuple[int, ...]], seed: int = 0) -> list[np.ndarray]:
    """Standard-normal arrays of ``shapes`` in ``dtype`` (drawn in float32, then converted)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in shapes:
        a = rng.standard_normal(math.prod(s), dtype=np.float32).reshape(s)
        out.append(a if dtype == np.float32 else a.astype(dtype))
    return out
