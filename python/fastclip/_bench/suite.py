"""The benchmark run: every workload x operation x peer, plus two experiments (per-tensor
overhead, a busy core), as one JSON-ready dict."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np

from .. import _fastclip
from ..functional import clip_grad_norm_
from .measure import Progress, floor_times, machine, median_time, peak_extra_bytes
from .peers import OPS, Shrinking, fastclip_global, implementations, sumsq_numpy, torch_module
from .workloads import MI, make_arrays, workloads

__all__ = ["busy_core_experiment", "overhead_experiment", "run_all"]


def busy_core_experiment(scale: float, reps: int, budget_s: float) -> dict[str, Any]:
    """A busy loop in another process holds one core; fastclip (default threads) against the
    1-thread NumPy floor on the 64M buffer, both measured under that contention."""
    n = max(1, round(64 * MI * scale))
    gs = make_arrays(np.float32, [(n,)])
    thr = Shrinking(math.sqrt(sumsq_numpy(gs[0])))
    quiet_fc = median_time(lambda: fastclip_global(gs, thr.next()), reps, budget_s)
    quiet_floor, _ = floor_times(n * 4, reps, budget_s)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        busy_fc = median_time(lambda: fastclip_global(gs, thr.next()), reps, budget_s)
        busy_floor, _ = floor_times(n * 4, reps, budget_s)
    finally:
        busy.kill()
        busy.wait()
    return {
        "elements": n,
        "quiet_fastclip_s": quiet_fc,
        "quiet_floor_s": quiet_floor,
        "busy_fastclip_s": busy_fc,
        "busy_floor_s": busy_floor,
        "quiet_ratio": quiet_fc / quiet_floor,
        "busy_ratio": busy_fc / busy_floor,
    }


def overhead_experiment(tensors: int, reps: int, budget_s: float) -> dict[str, Any]:
    """The fixed cost per tensor of one ``clip_grad_norm_`` call on ``tensors`` one-element float32
    arrays: with the same list as the previous call (a training loop that keeps its gradient
    buffers, as torch does), and alternating between two lists (new buffers every step)."""
    a = [np.ones(1, np.float32) for _ in range(tensors)]
    b = [np.ones(1, np.float32) for _ in range(tensors)]
    thr = Shrinking(math.sqrt(tensors))
    same = median_time(lambda: clip_grad_norm_(a, thr.next()), reps, budget_s)
    turn = [a, b]

    def alternate() -> None:
        turn.reverse()
        clip_grad_norm_(turn[0], thr.next())

    other = median_time(alternate, reps, budget_s)
    return {"tensors": tensors, "same_list_s": same, "other_list_s": other}


def _sumsq_f64(g: np.ndarray) -> float:
    f = g.reshape(-1).astype(np.float64)
    return float(np.dot(f, f))


def _call(f: Callable[..., Any], gs: list[np.ndarray], op: str, thr: Shrinking) -> Callable[[], Any]:
    """``f`` bound to its workload: value clipping at 1.0, norm clipping at a shrinking threshold."""
    if op == "value":
        return lambda: f(gs, 1.0)
    return lambda: f(gs, thr.next())


def run_all(scale: float, reps: int, budget_s: float, progress: bool, busy: bool) -> dict[str, Any]:
    """Every measurement: ``{"machine", "scale", "rows", "overhead"[, "busy_core"]}``."""
    impls = implementations(torch_module())
    wls = workloads(scale)
    bar = Progress(len(wls) * (1 + len(OPS) * len(impls)) + 1 + (1 if busy else 0), progress)
    rows: list[dict[str, Any]] = []
    for name, dtype, shapes in wls:
        gs = make_arrays(dtype, shapes)
        nbytes = sum(g.nbytes for g in gs)
        floor, floor_rw = floor_times(nbytes, reps, budget_s)
        bar.step(f"{name}: floor")
        exact = math.sqrt(sum(_sumsq_f64(g) for g in gs))
        _, got = _fastclip.norms(gs, 2.0, False)
        norm_err = abs(got - exact) / exact
        for op in OPS:
            per = [math.sqrt(sumsq_numpy(g)) for g in gs]
            thr = Shrinking(min(per) if op == "per-tensor" else math.sqrt(sum(p * p for p in per)))
            # Each implementation in its own block of calls (warm, as in a training loop that clips
            # the same buffers every step). Round-robin timing was tried: every call then starts
            # with caches another library just stirred, which mostly measures that library.
            times: dict[str, float] = {}
            for impl, table in impls.items():
                times[impl] = median_time(_call(table[op], gs, op, thr), reps, budget_s)
                bar.step(f"{name}: {op} {impl}")
            extra = peak_extra_bytes(_call(impls["fastclip"][op], gs, op, thr))
            moved = (2 if op == "value" else 3) * nbytes
            ref = floor_rw if op == "value" else floor
            row = {
                "workload": name,
                "op": op,
                "tensors": len(gs),
                "bytes": nbytes,
                "floor_s": ref,
                "median_s": times,
                "gb_s": {k: moved / t / 1e9 for k, t in times.items()},
                "ratio_to_floor": {k: t / ref for k, t in times.items()},
                "speedup_vs_numpy": times["numpy"] / times["fastclip"],
                "fastclip_peak_extra_bytes": extra,
                "norm_rel_err": norm_err,
            }
            if "torch" in times:
                row["speedup_vs_torch"] = times["torch"] / times["fastclip"]
            rows.append(row)
        del gs
    result: dict[str, Any] = {"machine": machine(), "scale": scale, "rows": rows}
    result["overhead"] = overhead_experiment(100_000, reps, budget_s)
    bar.step("per-tensor overhead")
    if busy:
        result["busy_core"] = busy_core_experiment(scale, reps, budget_s)
        bar.step("busy-core experiment")
    bar.close()
    return result
