"""fastclip vs optax-style global-norm clipping under ``jax.jit`` (with and without donated
buffers), side by side in one run, against the same 1-thread NumPy floor as ``fastclip bench``.

Needs jax and optax (``pip install jax optax``; not installed by the project):
``python benches/compare_optax.py``. optax's ``clip_by_global_norm`` is
``g * min(1, c / global_norm(g))``; it is written out here so that the jitted function returns the
clipped tree, whose buffers are donated to it (XLA may then work in place).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import fastclip as fc
import jax
import jax.numpy as jnp
import numpy as np
import optax
from fastclip._bench.measure import floor_times
from fastclip._bench.peers import Shrinking
from fastclip._bench.workloads import gpt2_small_shapes, make_arrays, resnet50_shapes


def median(f: Callable[[], Any], n: int = 9) -> float:
    f()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return sorted(times)[n // 2]


def clip_tree(grads: list[Any], c: float) -> list[Any]:
    scale = jnp.minimum(1.0, c / optax.global_norm(grads))
    return [g * scale for g in grads]


def compare(name: str, shapes: list[tuple[int, ...]]) -> str:
    gs = make_arrays(np.float32, shapes)
    floor, _ = floor_times(sum(g.nbytes for g in gs), 9, 3.0)
    thr = Shrinking(math.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in gs)))
    t_fc = median(lambda: fc.clip_grad_norm_(gs, thr.next()))

    donated = jax.jit(clip_tree, donate_argnums=0)
    box = [[jnp.asarray(g) for g in gs]]

    def run_donated() -> None:
        box[0] = donated(box[0], 1.0)
        jax.block_until_ready(box[0])

    plain = jax.jit(clip_tree)
    fixed = [jnp.asarray(g) for g in gs]
    t_d = median(run_donated)
    t_p = median(lambda: jax.block_until_ready(plain(fixed, 1.0)))
    return (
        f"{name:16s} floor {floor * 1e3:7.2f} ms | fastclip {t_fc * 1e3:7.2f} ms ({t_fc / floor:.2f}x) | "
        f"optax jit donated {t_d * 1e3:7.2f} ms ({t_d / floor:.2f}x) | "
        f"optax jit {t_p * 1e3:7.2f} ms ({t_p / floor:.2f}x)"
    )


def main() -> None:
    print(f"jax {jax.__version__}, optax {optax.__version__}, fastclip {fc.__version__} ({fc.isa()})")
    for name, shapes in [
        ("64M f32", [(1 << 26,)]),
        ("GPT-2 small f32", gpt2_small_shapes()),
        ("ResNet-50 f32", resnet50_shapes()),
    ]:
        print(compare(name, shapes), flush=True)


if __name__ == "__main__":
    main()
