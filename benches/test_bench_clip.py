"""pytest-benchmark suite: fastclip vs the NumPy way (and torch when importable), one
``benchmark.group`` per (operation, workload) so each table compares them side by side.

Not part of the normal test run (pytest's testpaths is ``tests``). Run it with::

    pytest benches -q --benchmark-only --benchmark-group-by=group
    FASTCLIP_BENCH_SCALE=0.05 pytest benches ...   # smaller workloads, quick

The workloads and implementations are those of ``python -m fastclip bench`` (``fastclip._bench``).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import pytest
from fastclip._bench.peers import OPS, Shrinking, implementations, sumsq_numpy, torch_module
from fastclip._bench.workloads import make_arrays, workloads

SCALE = float(os.environ.get("FASTCLIP_BENCH_SCALE", "1"))
WORKLOADS = {name: (dtype, shapes) for name, dtype, shapes in workloads(SCALE)}
IMPLS: dict[str, dict[str, Any]] = implementations(torch_module())


_current: dict[str, list[np.ndarray]] = {}


def arrays_for(name: str) -> list[np.ndarray]:
    """The workload's arrays; only one workload is kept alive at a time (GPT-2 is 498 MB)."""
    if name not in _current:
        _current.clear()
        dtype, shapes = WORKLOADS[name]
        _current[name] = make_arrays(dtype, shapes)
    return _current[name]


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_clip(benchmark: Any, workload: str, op: str, impl: str) -> None:
    gs = arrays_for(workload)
    benchmark.group = f"{op} | {workload}"
    nbytes = sum(g.nbytes for g in gs)
    benchmark.extra_info["bytes_moved"] = (2 if op == "value" else 3) * nbytes
    if op == "value":
        benchmark.pedantic(IMPLS[impl][op], args=(gs, 1.0), rounds=7, warmup_rounds=1)
        return
    per = [math.sqrt(sumsq_numpy(g)) for g in gs]
    thr = Shrinking(min(per) if op == "per-tensor" else math.sqrt(sum(p * p for p in per)))
    f = IMPLS[impl][op]
    benchmark.pedantic(lambda: f(gs, thr.next()), rounds=7, warmup_rounds=1)
