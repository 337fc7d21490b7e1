"""One latency row in a child process of its own, with its peak resident memory.

Rows timed one after another in one process inherit each other's memory: a heap the allocator
keeps, an arena onnxruntime never returns, torch's caching of the baseline model. At the paper
size one onnxruntime row alone peaks near 21 GB, so two rows in one process may not even fit in
24 GB. In a child of its own (``spawn``: a fresh interpreter, nothing inherited) a row's peak
RSS is its own, and a row killed for memory is reported as failed instead of ending the run.

The child rebuilds what the row needs from the bundle: the inputs (``make_feeds`` is seeded, so
every row gets the same ones) and, for a PyTorch row only, the baseline model. The GFLOPs and
the GEMM peaks come from the parent, measured once.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

from runtime.child import ChildDied, max_rss_mb, run_in_child

log = logging.getLogger(__name__)


def _child(
    connection: Any,
    bundle: str,
    name: str,
    setting: dict,
    gflops: dict[int, dict[str, float]],
    peaks: dict,
    torch_device: str,
    status: dict[str, str],
    log_level: int,
) -> None:
    """The child's body: rebuild the workload, time the row, send ``(row, sweep)`` back."""
    logging.basicConfig(level=log_level, format="%(levelname)s %(message)s")
    try:
        import torch

        from benchmarks.runners import BACKENDS
        from benchmarks.suite import Workload, measure_backend, workload_feeds
        from benchmarks.workload import load_baseline_model
        from runtime.manifest import Manifest

        torch.set_num_threads(setting["threads"])
        manifest = Manifest.load(bundle)
        model = None
        if BACKENDS[name].runtime == "torch":
            model = load_baseline_model(manifest, torch_device)
        feeds = workload_feeds(manifest, setting)
        before = max_rss_mb()
        row, sweep = measure_backend(
            name, manifest, Workload(setting, model, feeds, gflops), peaks, torch_device, status
        )
        if row["status"] == "timed":
            row["memory"] = {
                "peak_rss_mb": max_rss_mb(),
                "rss_before_open_mb": before,
                "process": "child (spawn)",
            }
        connection.send((row, sweep))
    except BaseException as error:  # noqa: BLE001 - whatever stops the row is its reason
        connection.send(
            (
                {
                    "backend": name,
                    "status": "failed",
                    "reason": f"{type(error).__name__}: {error}",
                    "traceback": traceback.format_exc(),
                },
                None,
            )
        )
    finally:
        connection.close()


def _count_child(connection: Any, bundle: str, setting: dict, torch_device: str) -> None:
    """The child's body of ``gflops_in_child``: the model, its GFLOPs per E, sent back."""
    try:
        import torch

        from benchmarks.suite import workload_feeds
        from benchmarks.workload import count_gflops, load_baseline_model
        from runtime.manifest import Manifest

        torch.set_num_threads(setting["threads"])
        manifest = Manifest.load(bundle)
        model = load_baseline_model(manifest, torch_device)
        counts = {
            e: count_gflops(model, setting["frame_format"], feeds, torch_device)
            for e, feeds in workload_feeds(manifest, setting).items()
        }
        connection.send(counts)
    except BaseException as error:  # noqa: BLE001 - sent back and raised in the parent
        connection.send(RuntimeError(f"counting GFLOPs failed: {type(error).__name__}: {error}"))
    finally:
        connection.close()


# Expressions of the predictor's memory points (any text: the graphs' memory does not depend on it).
POINT_TEXTS = ("the red circle moving left", "the big blue square", "the small green triangle",
               "the yellow diamond", "the circle above the square", "the shape on the right",
               "the smallest object", "the object moving up")  # fmt: skip


def point_body(connection: Any, load: Any) -> None:
    """The body of a memory point's child: ``load()`` returns ``(call, warm)``, or the reason
    the point is skipped (a string); ``call`` runs once more first when ``warm`` (OpenVINO
    compiles for the shape in its first call). Sends the peak RSS, the RSS once loaded and the
    last call's seconds, or how the point failed."""
    import time

    try:
        before = max_rss_mb()
        loaded_call = load()
        if isinstance(loaded_call, str):
            connection.send({"status": "skipped", "reason": loaded_call})
            return
        call, warm = loaded_call
        loaded = max_rss_mb()
        if warm:
            call()
        started = time.perf_counter()
        call()
        seconds = time.perf_counter() - started
        connection.send({"status": "measured", "peak_rss_mb": max_rss_mb(),
                         "rss_loaded_mb": loaded, "rss_before_mb": before, "seconds": seconds})  # fmt: skip
    except BaseException as error:  # noqa: BLE001 - whatever stops the point is its reason
        connection.send({"status": "failed", "reason": f"{type(error).__name__}: {error}"})
    finally:
        connection.close()


def predictor_point_child(connection: Any, bundle: str, runtime: str, precision: str, mode: str,
                          frames: int, expressions: int, options: dict) -> None:  # fmt: skip
    """One memory point as the runtime makes it, in this (spawned) process: an
    ``RVOSPredictor`` of the row's backend segments ``frames`` random frames at the bundle's
    size for ``expressions`` expressions in one window with ``mode``'s graphs ("video", or
    "split": every expression in one ``video_decoder`` call), twice on OpenVINO and in
    onnxruntime's shared arena (``point_body``). No torch here: what a budget measures is the
    runtime's process."""

    def load():
        import numpy as np

        from runtime.backends import BackendUnavailable
        from runtime.budget import Plan
        from runtime.manifest import BundleError
        from runtime.predictor import RVOSPredictor

        try:
            predictor = RVOSPredictor(bundle, backend=runtime, precision=precision,
                                      memory_budget=None, **options)  # fmt: skip
            plan = Plan(mode, frames, expressions, 0, 0)
            predictor.prepare(plan)
        except (BackendUnavailable, BundleError) as reason:
            return str(reason)
        height, width = predictor.size
        clip = np.random.default_rng(0).integers(0, 256, (frames, height, width, 3), np.uint8)
        texts = [POINT_TEXTS[i % len(POINT_TEXTS)] for i in range(expressions)]

        def call():
            predictor.segment(clip, texts, window=frames, plan=plan)

        # Twice on OpenVINO (it compiles in the first call) and in onnxruntime's shared arena
        # (what one run leaves in it adds to the next run's peak).
        return call, runtime == "openvino" or options.get("cpu_arena") == "shared"

    point_body(connection, load)


def gflops_in_child(bundle: str | Path, setting: dict, torch_device: str) -> dict:
    """``count_gflops`` at every E of the run, in a child process: counting runs the model
    eagerly (about 10 GB at the paper size), which the benchmark's own process must not keep
    while the rows' processes run."""
    try:
        counts = run_in_child(_count_child, (str(bundle), setting, torch_device), "gflops")
    except ChildDied as error:
        raise RuntimeError(f"counting GFLOPs: {error}") from None
    if isinstance(counts, BaseException):
        raise counts
    return counts


def measure_in_child(
    name: str,
    bundle: str | Path,
    setting: dict,
    gflops: dict[int, dict[str, float]],
    peaks: dict,
    torch_device: str,
    status: dict[str, str],
) -> tuple[dict, list[dict] | None]:
    """``benchmarks.suite.measure_backend`` for one row, in a fresh child process.

    Returns:
        (the row, with ``memory.peak_rss_mb`` when it ran; its E sweep or None). A child that
        dies (a signal, the kernel's OOM killer) gives a failed row naming how it died.
    """
    level = logging.getLogger().getEffectiveLevel()
    arguments = (str(bundle), name, setting, gflops, peaks, torch_device, status, level)
    try:
        row, sweep = run_in_child(_child, arguments, f"latency-{name}")
    except ChildDied as error:
        log.error("%s: %s", name, error)
        return {"backend": name, "status": "failed", "reason": str(error)}, None
    if row.get("traceback"):
        log.error("%s failed in its process:\n%s", name, row.pop("traceback"))
    return row, sweep
