"""Measuring: median wall times, the memory-bandwidth floor, peak extra memory, the machine."""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Any, Callable

import numpy as np

from .. import _fastclip

__all__ = ["Progress", "floor_times", "machine", "median_time", "peak_extra_bytes"]


def median_time(f: Callable[[], Any], reps: int, budget_s: float) -> float:
    """Median wall time of ``f`` over ``reps`` calls (fewer if they exceed ``budget_s``), after one
    warm-up call."""
    f()
    times = []
    start = time.perf_counter()
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s and len(times) >= 3:
            break
    times.sort()
    return times[len(times) // 2]


def floor_times(nbytes: int, reps: int, budget_s: float) -> tuple[float, float]:
    """(read + read/write floor, read/write floor) in seconds for ``nbytes`` of float32 data."""
    a = np.random.default_rng(1).standard_normal(max(1, nbytes // 4), dtype=np.float32)
    c = np.float32(1.0)
    rw = median_time(lambda: np.multiply(a, c, out=a), reps, budget_s)
    both = median_time(lambda: (np.dot(a, a), np.multiply(a, c, out=a)), reps, budget_s)
    return both, rw


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_extra_bytes(f: Callable[[], Any]) -> int | None:
    """How far one call of ``f`` raises the resident set above where it started: the RSS
    high-water mark (VmHWM) is reset through /proc/self/clear_refs, then read after the call.
    ``None`` where the kernel does not offer that (not Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return None
    before = _status_kib("VmRSS")
    f()
    peak = _status_kib("VmHWM")
    if before is None or peak is None:
        return None
    return max(0, peak - before) * 1024


class Progress:
    """A plain-text progress bar on stderr."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total, self.done, self.enabled = total, 0, enabled

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / max(1, self.total))
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {label:<40.40}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def machine() -> dict[str, Any]:
    """The CPU model, core count, fastclip's ISA and the versions that matter for the numbers."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "isa": _fastclip.isa(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "rayon_threads": os.environ.get("RAYON_NUM_THREADS", "default"),
    }
