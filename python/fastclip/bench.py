"""``python -m fastclip bench``: fastclip against the NumPy way (and torch when importable) and
against the machine's memory-bandwidth floor, measured side by side in one run.

For each workload (one 64Mi-element float32 buffer; GPT-2 small's 148 parameter shapes; a
ResNet-50-like list of 161 tensors; 5,000 tensors of 256; the 64Mi buffer in float16) and each
operation (global-norm clip, per-tensor norm clip, value clip) it prints the median time, the
bandwidth in GB/s (bytes a minimal implementation must move: a read pass plus a read/write pass
for norm clipping, one read/write pass for value clipping), the ratio to the floor, and the
speed-up over NumPy (and torch).

The floor is what NumPy reaches on one thread over the same number of bytes: ``np.dot(a, a)``
(a read pass) plus ``np.multiply(a, c, out=a)`` (a read/write pass) on one float32 buffer; for
value clipping only the read/write pass. A ratio below 1 means faster than a single-threaded
streaming pass: on a 2-core machine the best possible is about 0.5-0.6.

``FASTCLIP_BENCH_SCALE`` (a float, default 1; ``--quick`` uses 1/32) scales every workload's
element count, so a quick run or a CI smoke test is possible.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np

from . import _fastclip
from .functional import clip_grad_norm_

# ---------------------------------------------------------------------------------------------
# Workloads

_MI = 1 << 20


def gpt2_small_shapes() -> list[tuple[int, ...]]:
    """GPT-2 small (124M): token and position embeddings, 12 blocks of 12 tensors, final norm."""
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

    big = [(64 * _MI,)]
    return [
        ("64M f32", np.float32, scaled(big)),
        ("GPT-2 small f32", np.float32, scaled(gpt2_small_shapes())),
        ("ResNet-50 f32", np.float32, scaled(resnet50_shapes())),
        # the tensor count is kept at 5,000 down to --quick's scale: it is the point of the workload
        ("5000x256 f32", np.float32, [(256,)] * min(5000, max(10, round(5000 * scale * 32)))),
        ("64M f16", np.float16, scaled(big)),
    ]


def make_arrays(dtype: Any, shapes: list[tuple[int, ...]], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for s in shapes:
        a = rng.standard_normal(math.prod(s), dtype=np.float32).reshape(s)
        out.append(a if dtype == np.float32 else a.astype(dtype))
    return out


# ---------------------------------------------------------------------------------------------
# Implementations. Every norm clip shrinks the gradients by a factor just under 1 each call (the
# threshold follows the data down by 0.1%), so every call really writes and the data never drifts
# towards subnormals.

EPS = 1e-6


class Shrinking:
    """A clip threshold that is always 0.1% under the current norm(s)."""

    def __init__(self, norm: float) -> None:
        self.value = norm

    def next(self) -> float:
        self.value *= 0.999
        return self.value


def fastclip_global(gs: list[np.ndarray], c: float) -> float:
    return clip_grad_norm_(gs, c)  # the public call (one fused extension call for a list of arrays)


def fastclip_per_tensor(gs: list[np.ndarray], c: float) -> None:
    each, _ = _fastclip.norms(gs, 2.0, True)
    _fastclip.scale_(gs, [c / max(n, c) for n in each])


def fastclip_value(gs: list[np.ndarray], v: float) -> None:
    _fastclip.clamp_(gs, -v, v)


def _sumsq_numpy(g: np.ndarray) -> float:
    f = g.reshape(-1)
    if f.dtype == np.float16:  # NumPy's own float16 dot accumulates in float16 and overflows
        f = f.astype(np.float32)
    return float(np.dot(f, f))


def numpy_global(gs: list[np.ndarray], c: float) -> float:
    total = math.sqrt(sum(_sumsq_numpy(g) for g in gs))
    coef = min(1.0, c / (total + EPS))
    for g in gs:
        g *= g.dtype.type(coef)
    return total


def numpy_per_tensor(gs: list[np.ndarray], c: float) -> None:
    for g in gs:
        n = math.sqrt(_sumsq_numpy(g))
        g *= g.dtype.type(c / max(n, c))


def numpy_value(gs: list[np.ndarray], v: float) -> None:
    for g in gs:
        np.clip(g, -v, v, out=g)


def _torch() -> Any:
    try:
        import torch
    except Exception:
        return None
    return torch


def torch_impls(torch: Any) -> dict[str, Callable[..., Any]]:
    """torch.nn.utils on zero-copy views of the same buffers (parameters whose .grad is the view)."""

    def params(gs: list[np.ndarray]) -> list[Any]:
        ps = []
        for g in gs:
            t = torch.from_numpy(g)
            # a stride-0 parameter of the right shape: no second copy of the data
            p = torch.nn.Parameter(torch.zeros(1, dtype=t.dtype).expand(t.shape))
            p.grad = t
            ps.append(p)
        return ps

    # The parameters of the last workload, with the list they were made for. Keeping the list itself
    # (not its id) matters: once a workload's list is freed, the next one may get the same id.
    cache: list[Any] = [None, None]

    def get(gs: list[np.ndarray]) -> list[Any]:
        if cache[0] is not gs:
            cache[0], cache[1] = gs, params(gs)
        return cache[1]

    def glob(gs: list[np.ndarray], c: float) -> None:
        torch.nn.utils.clip_grad_norm_(get(gs), c)

    def per(gs: list[np.ndarray], c: float) -> None:
        for p in get(gs):
            torch.nn.utils.clip_grad_norm_([p], c)

    def value(gs: list[np.ndarray], v: float) -> None:
        torch.nn.utils.clip_grad_value_(get(gs), v)

    return {"global": glob, "per-tensor": per, "value": value}


# ---------------------------------------------------------------------------------------------
# Measurement


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


def floor_times(nbytes: int, reps: int, budget_s: float) -> tuple[float, float]:
    """(read + read/write floor, read/write floor) in seconds for ``nbytes`` of float32 data."""
    a = np.random.default_rng(1).standard_normal(max(1, nbytes // 4), dtype=np.float32)
    c = np.float32(1.0)
    rw = median_time(lambda: np.multiply(a, c, out=a), reps, budget_s)
    both = median_time(lambda: (np.dot(a, a), np.multiply(a, c, out=a)), reps, budget_s)
    return both, rw


def busy_core_experiment(scale: float, reps: int, budget_s: float) -> dict[str, Any]:
    """A busy loop in another process holds one core; fastclip (default threads) against the
    1-thread NumPy floor on the 64M buffer, both measured under that contention."""
    n = max(1, round(64 * _MI * scale))
    gs = make_arrays(np.float32, [(n,)])
    thr = Shrinking(math.sqrt(_sumsq_numpy(gs[0])))
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


def machine() -> dict[str, Any]:
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


def _sumsq_f64(g: np.ndarray) -> float:
    f = g.reshape(-1).astype(np.float64)
    return float(np.dot(f, f))


def _call(f: Callable[..., Any], gs: list[np.ndarray], op: str, thr: Shrinking) -> Callable[[], Any]:
    """``f`` bound to its workload: value clipping at 1.0, norm clipping at a shrinking threshold."""
    if op == "value":
        return lambda: f(gs, 1.0)
    return lambda: f(gs, thr.next())


def run_all(scale: float, reps: int, budget_s: float, progress: bool, busy: bool) -> dict[str, Any]:
    torch = _torch()
    impls: dict[str, dict[str, Callable[..., Any]]] = {
        "fastclip": {"global": fastclip_global, "per-tensor": fastclip_per_tensor, "value": fastclip_value},
        "numpy": {"global": numpy_global, "per-tensor": numpy_per_tensor, "value": numpy_value},
    }
    if torch is not None:
        impls["torch"] = torch_impls(torch)
    wls = workloads(scale)
    ops = ("global", "per-tensor", "value")
    bar = Progress(len(wls) * (1 + len(ops) * len(impls)) + 1 + (1 if busy else 0), progress)
    rows: list[dict[str, Any]] = []
    for name, dtype, shapes in wls:
        gs = make_arrays(dtype, shapes)
        nbytes = sum(g.nbytes for g in gs)
        floor, floor_rw = floor_times(nbytes, reps, budget_s)
        bar.step(f"{name}: floor")
        exact = math.sqrt(sum(_sumsq_f64(g) for g in gs))
        _, got = _fastclip.norms(gs, 2.0, False)
        norm_err = abs(got - exact) / exact
        for op in ops:
            per = [math.sqrt(_sumsq_numpy(g)) for g in gs]
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


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def report(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, isa={m['isa']}, numpy {m['numpy']}, "
        f"RAYON_NUM_THREADS={m['rayon_threads']}; scale={result['scale']:g}",
        "floor = 1-thread NumPy np.dot(a, a) + np.multiply(a, c, out=a) over the same bytes "
        "(value clip: the multiply only); ratio < 1 is faster than the floor",
    ]
    has_torch = any("speedup_vs_torch" in r for r in result["rows"])
    head = (
        f"{'workload':<16} {'op':<10} {'fastclip':>10} {'GB/s':>6} {'floor x':>7} "
        f"{'numpy':>10} {'numpy x':>7} {'vs numpy':>8}"
    )
    if has_torch:
        head += f" {'torch':>10} {'vs torch':>8}"
    head += f" {'peak extra':>10} {'norm err':>8}"
    lines += [head, "-" * len(head)]
    for r in result["rows"]:
        t = r["median_s"]
        line = (
            f"{r['workload']:<16} {r['op']:<10} {t['fastclip'] * 1e3:>8.2f}ms {r['gb_s']['fastclip']:>6.1f} "
            f"{r['ratio_to_floor']['fastclip']:>7.2f} {t['numpy'] * 1e3:>8.2f}ms {r['ratio_to_floor']['numpy']:>7.2f} "
            f"{r['speedup_vs_numpy']:>7.1f}x"
        )
        if has_torch:
            line += f" {t.get('torch', float('nan')) * 1e3:>8.2f}ms {r.get('speedup_vs_torch', float('nan')):>7.1f}x"
        line += f" {_fmt_bytes(r['fastclip_peak_extra_bytes']):>10} {r['norm_rel_err']:>8.1e}"
        lines.append(line)
    o = result.get("overhead")
    if o:
        n = o["tensors"]
        lines.append(
            f"per-tensor overhead of clip_grad_norm_ on {n:,} one-element arrays: "
            f"{o['same_list_s'] / n * 1e9:.0f} ns (the same list as the previous call), "
            f"{o['other_list_s'] / n * 1e9:.0f} ns (a different list each call)"
        )
    b = result.get("busy_core")
    if b:
        lines.append(
            f"busy core ({b['elements']} f32, a busy loop on the other core): global clip "
            f"{b['busy_fastclip_s'] * 1e3:.1f} ms = {b['busy_ratio']:.2f}x the 1-thread floor under the same load "
            f"(quiet: {b['quiet_fastclip_s'] * 1e3:.1f} ms = {b['quiet_ratio']:.2f}x)"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    impls = list(rows[0]["ratio_to_floor"])
    labels = [f"{r['workload']}\n{r['op']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.8), 5))
    width = 0.8 / len(impls)
    for k, impl in enumerate(impls):
        xs = [i + k * width for i in range(len(rows))]
        ax.bar(xs, [r["ratio_to_floor"].get(impl, float("nan")) for r in rows], width, label=impl)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("time / memory-bandwidth floor (lower is better)")
    ax.set_title(f"fastclip bench ({result['machine']['cpu']}, {result['machine']['cores']} cores)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="1/32 of the sizes and fewer repeats (< 1 minute)")
    parser.add_argument("--json", metavar="PATH", help="write every measurement as JSON")
    parser.add_argument("--plot", metavar="PATH", help="draw the ratios to the floor as a bar chart (matplotlib)")
    parser.add_argument("--reps", type=int, default=None, help="timed calls per measurement (median taken)")
    parser.add_argument("--no-busy", action="store_true", help="skip the busy-core experiment")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args: argparse.Namespace) -> int:
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
        try:
            plot(result, args.plot)
        except ImportError:
            print("--plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
            return 1
    return 0
