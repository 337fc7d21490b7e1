"""The latency report's figure: p50 per backend (text + video, p90 whiskers) and the E sweep."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _backend_bars(axis: Any, results: dict) -> None:
    """Stacked text/video p50 bars per timed backend, p90 whiskers, speed-ups and the paper."""
    timed = [r for r in results["backends"] if r["status"] == "timed"]
    names = [r["backend"] for r in timed]
    text = [r["latency"]["text"]["p50"] for r in timed]
    video = [r["latency"]["video"]["p50"] for r in timed]
    total = [r["latency"]["total"]["p50"] for r in timed]
    p90 = [r["latency"]["total"]["p90"] for r in timed]
    x = np.arange(len(timed))
    axis.bar(x, text, label="text encoder", color="#8fb3d9")
    axis.bar(x, video, bottom=text, label="video graph", color="#2f6ea8")
    axis.errorbar(x, total, yerr=[np.zeros(len(x)), np.subtract(p90, total)], fmt="none",
                  ecolor="black", capsize=4, label="p50 → p90")  # fmt: skip
    for xi, row in zip(x, timed):
        speedup = row.get("speedup_vs_torch")
        if speedup:
            axis.annotate(f"{speedup:.2f}×", (xi, row["latency"]["total"]["p90"]),
                          ha="center", va="bottom", fontsize=8)  # fmt: skip
    paper = results["paper"]
    axis.axhline(
        paper["latency_ms"],
        color="#c0392b",
        linestyle="--",
        linewidth=1,
        label=f"paper {paper['latency_ms']:.0f} ms ({paper['device']}, GPU)",
    )
    axis.set_xticks(x, names, rotation=20)
    axis.set_ylabel("ms per call (p50)")
    setting = results["setting"]
    axis.set_title(
        f"{setting['preset']} T={setting['frames']} {setting['size'][0]}x{setting['size'][1]} "
        f"E={setting['expressions']}", fontsize=10,
    )  # fmt: skip
    axis.set_ylim(0, 1.3 * max([*p90, paper["latency_ms"]]))
    axis.legend(fontsize=8, ncol=2, loc="upper left")


def _sweep_lines(axis: Any, results: dict) -> None:
    """p50 against E, one line per backend."""
    for name, entries in results["e_sweep"].items():
        axis.plot([e["expressions"] for e in entries], [e["p50"] for e in entries],
                  marker="o", label=name)  # fmt: skip
    axis.set_xlabel("expressions E on one video")
    axis.set_ylabel("ms per call (p50)")
    axis.set_xticks(results["setting"]["e_sweep"])
    axis.set_title("E sweep", fontsize=10)
    axis.legend(fontsize=8)


def write_plot(results: dict, path: str | Path) -> Path | None:
    """A bar chart of p50 per backend (text + video, p90 whiskers) and the E sweep.

    Returns the PNG's path, or None (with a warning) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'proxyformer[bench]'): no plot")
        return None
    sweep = results["e_sweep"]
    figure, axes = plt.subplots(1, 2 if sweep else 1, figsize=(12 if sweep else 7, 4.5))
    axes = np.atleast_1d(axes)
    _backend_bars(axes[0], results)
    if sweep:
        _sweep_lines(axes[1], results)
    machine = results["machine"]
    figure.suptitle(
        f"{machine['cpu']} ({machine['cores']} cores)"
        + (f" + {machine['gpu']}" if machine.get("gpu") else ""), fontsize=10,
    )  # fmt: skip
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
