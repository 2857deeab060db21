"""The benchmark's results as a text table and as a bar chart (matplotlib, optional)."""

from __future__ import annotations

from typing import Any

__all__ = ["plot", "report"]


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def report(result: dict[str, Any]) -> str:
    """The results of :func:`fastclip._bench.suite.run_all` as aligned text, one row per
    (workload, operation), then the overhead and busy-core lines."""
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
    """Draw every row's time / floor per peer as a log-scale bar chart to ``path`` (PNG).

    Raises ``ModuleNotFoundError`` (``name == "matplotlib"``) when matplotlib is not installed.
    """
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
