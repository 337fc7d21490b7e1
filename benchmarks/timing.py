"""Timing: warm-up, repeated calls, percentiles and spread, and the device synchronisation that
makes a clock reading mean "the work is done"."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

try:
    from tqdm import tqdm
except ImportError:  # the GPU check (benchmarks/gpu_check.py) runs where tqdm may be absent

    def tqdm(iterable, **_):
        return iterable


# One call of a runner: the feeds in, (text encoder seconds, video graph seconds) out.
Runner = Callable[[dict[str, np.ndarray]], tuple[float, float]]


def synchronize(device: Any) -> None:
    """Wait for the work queued on a CUDA ``torch.device``; nothing on a CPU device.

    CUDA kernels run asynchronously, so a clock read without this measures the launch only.
    """
    if device.type == "cuda":
        import torch  # only a CUDA device gets here, and then torch is loaded already

        torch.cuda.synchronize(device)


def summarize_times(seconds: Sequence[float]) -> dict[str, float]:
    """mean, p50, p90, p99, min, max, std (ms) and spread = (p90 - p50) / p50 of timings."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    return {
        "mean": float(ms.mean()),
        "p50": p50,
        "p90": p90,
        "p99": p99,
        "min": float(ms.min()),
        "max": float(ms.max()),
        "std": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
        "spread": (p90 - p50) / p50 if p50 > 0 else float("nan"),
        "runs": len(ms),
    }


def time_runner(
    runner: Runner,
    feeds: dict[str, np.ndarray],
    warmup: int,
    runs: int,
    desc: str = "",
) -> dict:
    """Warm up, then time ``runs`` calls.

    Returns:
        ``{"total", "text", "video"}`` statistics (``summarize_times``) and ``"times_ms"``, the
        raw per-call totals.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    for _ in range(warmup):
        runner(feeds)
    text, video = [], []
    for _ in tqdm(range(runs), desc=desc, leave=False, disable=None):
        text_s, video_s = runner(feeds)
        text.append(text_s)
        video.append(video_s)
    total = [t + v for t, v in zip(text, video)]
    return {
        "total": summarize_times(total),
        "text": summarize_times(text),
        "video": summarize_times(video),
        "times_ms": [round(t * 1e3, 4) for t in total],
    }


def time_calls(
    call: Callable[[], Any], warmup: int, runs: int, cuda: bool = False
) -> list[float]:
    """Seconds of ``runs`` calls of ``call`` after ``warmup`` untimed ones.

    With ``cuda`` each call is measured between two CUDA events on the current stream (the
    GPU's own clock: no host-side launch time or synchronisation in the figure); otherwise on
    the host clock (a CPU device: the work is done when the call returns).
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    for _ in range(warmup):
        call()
    if not cuda:
        seconds = []
        for _ in range(runs):
            start = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - start)
        return seconds
    import torch  # CUDA only

    pairs = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return [start.elapsed_time(end) / 1e3 for start, end in pairs]
