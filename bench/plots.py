"""PNG plots of benchmark results (matplotlib, headless). Without matplotlib installed the
figures are still printed and saved as JSON; only the pictures are skipped."""

from __future__ import annotations

import pathlib
from typing import Any


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        print("(matplotlib is not installed: no plot; pip install -e '.[bench]')")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ramp(result: dict[str, Any], path: pathlib.Path) -> pathlib.Path | None:
    """Connections open and server memory against time while ramping."""
    plt = _pyplot()
    if plt is None or not result["timeline"]:
        return None
    t = [p["t"] for p in result["timeline"]]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(t, [p["open"] for p in result["timeline"]], label="connections open", color="C0")
    ax.set_xlabel("seconds")
    ax.set_ylabel("connections open")
    ax2 = ax.twinx()
    ax2.plot(t, [p["rss_kib"] / 1024 for p in result["timeline"]], label="server RSS (MiB)",
             color="C1")
    ax2.set_ylabel("server RSS, all workers (MiB)")
    ax.set_title(f"chatd: ramp to {result['target']:,} connections, {result['workers']} workers"
                 f" ({result['kib_per_connection']} KiB/connection)")
    fig.legend(loc="upper left", bbox_to_anchor=(0.1, 0.88))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_sweep(result: dict[str, Any], path: pathlib.Path) -> pathlib.Path | None:
    """msg/s and p99 against the in-flight window, one line per pair count, chatd and relay."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for k, pairs in enumerate(sorted({r["pairs"] for r in result["runs"]})):
        runs = sorted((r for r in result["runs"] if r["pairs"] == pairs),
                      key=lambda r: r["window"])
        w = [r["window"] for r in runs]
        ax.plot(w, [r["chatd"]["msgs_per_s"] for r in runs], "o-", color=f"C{k}",
                label=f"chatd, {pairs} pairs")
        ax.plot(w, [r["relay"]["msgs_per_s"] for r in runs], "x--", color=f"C{k}",
                label=f"relay, {pairs} pairs")
        ax2.plot(w, [r["chatd"]["p99_ms"] for r in runs], "o-", color=f"C{k}",
                 label=f"chatd, {pairs} pairs")
    for a in (ax, ax2):
        a.set_xscale("log", base=2)
        a.set_xlabel("messages in flight per sender")
        a.legend(fontsize=8)
    ax.set_ylabel("msg/s (send -> DELIVERED)")
    ax2.set_ylabel("p99 latency at peak (ms)")
    fig.suptitle("chatd 1:1 throughput vs a bare trio relay (same run)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
