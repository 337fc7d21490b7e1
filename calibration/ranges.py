"""MinMax calibration ranges in bounded memory: ONNX Runtime's augmented graph, run by OpenVINO.

ONNX Runtime's MinMax calibrator adds a ReduceMin and a ReduceMax after every tensor it will
quantize and runs that augmented graph on each calibration clip: only two numbers per tensor
come out, but the graph is run by an ONNX Runtime session with every graph optimisation off and
its CPU memory arena on. For paper-swin-t at 360x640 that session ran the 24 GB machine out of
memory on one clip of 9 frames, and the optimised FP32 session already peaks near 21 GB at
19 frames.

Here the same augmented graph (built by ONNX Runtime's own ``MinMaxCalibrater``, so the tensors
and their names are exactly those its quantizer asks for) runs in OpenVINO at f32, whose peak
on the paper-size graph is a fraction of that, one clip at a time: each clip's minima and
maxima are folded into running ones (``np.nanmin``/``np.nanmax``, as the calibrator merges
them) and the clip's tensors are gone before the next. The ranges are written as ONNX Runtime's
calibration cache, which ``quantize_static`` then reads instead of calibrating, so everything
after the ranges (Q/DQ placement, both INT8 targets, the cache's reuse) is unchanged.

Histogram methods (entropy, percentile) need every tensor's values, not two numbers; they stay
with ONNX Runtime's calibrator.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from runtime.manifest import Manifest

from .data import CalibrationSet

log = logging.getLogger(__name__)

RANGE_BACKENDS = ("onnxruntime", "openvino")
_SUFFIXES = ("_ReduceMin", "_ReduceMax")


def collect_minmax_openvino(
    manifest: Manifest,
    calibration: CalibrationSet,
    cache: Path,
    op_types: list[str],
    threads: int | None = None,
) -> dict:
    """Write the MinMax ranges of ``calibration`` to ``cache`` (ONNX Runtime's format).

    Args:
        manifest: the bundle; its FP32 video graph is calibrated.
        calibration: the clips, each the video graph's feeds.
        cache: the range cache ``quantize_static`` reads (``calibration.quantize.range_cache``).
        op_types: the op types whose tensors are calibrated (the quantizer's).
        threads: OpenVINO's ``INFERENCE_NUM_THREADS`` (default: all cores).

    Returns:
        What was done: tensors, clips, seconds, the augmented graph's node count.
    """
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        MinMaxCalibrater,
        TensorData,
        TensorsData,
        save_tensors_data,
    )

    from runtime.backends.openvino import import_openvino, shared_core

    ov = import_openvino()
    if not len(calibration):
        raise ValueError("no calibration clips")
    started = time.perf_counter()
    source = manifest.variant_path("video", "fp32")
    work = Path(tempfile.mkdtemp(prefix="proxyformer-ranges-"))
    try:
        augmented = work / "augmented.onnx"
        # The quantizer's own selection of tensors and its ReduceMin/ReduceMax naming.
        calibrater = MinMaxCalibrater(
            source, op_types_to_calibrate=op_types, augmented_model_path=str(augmented),
            use_external_data_format=True,
        )  # fmt: skip
        calibrater.augment_graph()
        nodes = len(calibrater.model.graph.node)
        del calibrater  # its copy of the model (the weights) is not needed any more
        core = shared_core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        compiled = core.compile_model(core.read_model(str(augmented)), "CPU", config)
        ports = {
            name: port
            for port in compiled.outputs
            for name in port.get_names()
            if name.endswith(_SUFFIXES)
        }
        request = compiled.create_infer_request()
        lowest: dict[str, np.ndarray] = {}
        highest: dict[str, np.ndarray] = {}
        for sample in tqdm(calibration.samples, desc="ranges (openvino)", disable=None):
            results = request.infer(sample)
            for name, port in ports.items():
                tensor, _, which = name.rpartition("_")
                value = np.asarray(results[port], dtype=np.float32)
                if which == "ReduceMin":
                    lowest[tensor] = value if tensor not in lowest else np.fmin(lowest[tensor], value)
                else:
                    highest[tensor] = (
                        value if tensor not in highest else np.fmax(highest[tensor], value)
                    )
        del request, compiled
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if set(lowest) != set(highest):
        raise RuntimeError(
            f"OpenVINO returned a minimum without a maximum (or the reverse) for "
            f"{sorted(set(lowest) ^ set(highest))[:5]}"
        )
    ranges = TensorsData(
        CalibrationMethod.MinMax,
        {name: TensorData(lowest=lowest[name], highest=highest[name]) for name in sorted(lowest)},
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_tensors_data(ranges, cache)
    seconds = time.perf_counter() - started
    log.info("MinMax ranges of %d tensors from %d clips in OpenVINO in %.1f s (openvino %s)",
             len(lowest), len(calibration), seconds, ov.__version__)  # fmt: skip
    return {
        "backend": "openvino",
        "tensors": len(lowest),
        "clips": len(calibration),
        "augmented_nodes": nodes,
        "seconds": round(seconds, 1),
    }
