"""MinMax calibration ranges in bounded memory, clip by clip.

ONNX Runtime's MinMax calibrator adds a ReduceMin and a ReduceMax after every tensor it will
quantize, so only two numbers per tensor come out of a clip. Yet on paper-swin-t at 360x640 it
was killed at 24 GB on a single 9-frame clip: the reductions hang off the graph as side branches
to graph outputs, and neither onnxruntime (its arena on or off) nor OpenVINO runs them as soon
as their tensor exists, so every calibrated tensor stays alive to the end of the graph.

Here the augmented graph (made by ONNX Runtime's own ``MinMaxCalibrater``, so the tensors and
their names are those its quantizer looks up) is rewired by ``reduce_before_use`` so that each
tensor's consumers wait for its reductions, and the tensor is freed as in the plain graph. It
runs one clip at a time in onnxruntime without its arena, or in OpenVINO at f32; each clip's
minima and maxima are folded into running ones (``np.fmin``/``np.fmax``, NaN skipped as the
calibrator's ``nanmin``/``nanmax`` do). The ranges are written as ONNX Runtime's calibration
cache, which ``quantize_static`` reads instead of calibrating, so everything after the ranges
(Q/DQ placement, both INT8 targets, the cache's reuse) is unchanged.

Measured on paper-swin-t at 360x640, one clip of 9 frames and one expression (2 cores, AMX):
onnxruntime 38 s at a 6.1 GB peak, OpenVINO 32 s at 11.9 GB (the rewiring's Adds cost it its
fusions); the calibrator's unmodified graph was killed at 24 GB in both.

At 19 frames the rewiring is not enough: onnxruntime's plain video graph alone peaks at 9.7 GB
(no arena), and OpenVINO's rewired graph grows with the fusions it loses. ``groups`` splits the
calibrated tensors into that many groups (in graph order) and runs one augmented graph per
group over every clip, each rewired for its own tensors only: the weights are saved once and
shared by the group graphs, and only one group's graph is loaded at a time. K groups cost K
runs per clip.

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
import onnx
from tqdm import tqdm

from runtime.manifest import Manifest

from .data import CalibrationSet

log = logging.getLogger(__name__)

# "calibrator": onnxruntime's own calibrator (every method); the others: MinMax here, run by
# that engine.
RANGE_BACKENDS = ("calibrator", "onnxruntime", "openvino")
_SUFFIXES = ("_ReduceMin", "_ReduceMax")


def reduce_before_use(model) -> int:
    """Make every calibrated tensor's consumers wait for its ReduceMin and ReduceMax, in place
    on the augmented ``ModelProto``; returns how many tensors were rewired.

    In the augmented graph a ReduceMin/ReduceMax pair hangs off each calibrated tensor as a
    side branch to a graph output. Neither OpenVINO nor onnxruntime runs those branches as soon
    as their tensor exists: both kept every calibrated tensor alive until the end of the graph
    and were killed at 24 GB on one 9-frame clip of paper-swin-t (onnxruntime even with its
    arena off). So each consumer of a tensor ``t`` now reads ``t + z``, where ``z`` is an exact
    zero computed from the reductions (``Where(s < s, s, 0)`` with ``s = min + max``, in the
    reductions' keepdims shape, so ``t + z`` has ``t``'s shape and values, NaN and infinities
    included): the reductions run before the consumers, and ``t`` is freed when they are done,
    as in the plain graph. The price is one elementwise Add per calibrated tensor.
    """
    from onnx import TensorProto, helper

    graph = model.graph
    reductions = {}
    for node in graph.node:
        if node.op_type in ("ReduceMin", "ReduceMax") and node.name.endswith(_SUFFIXES):
            reductions.setdefault(node.input[0], {})[node.op_type] = node.output[0]
    zero = "proxyformer_calibration_zero"
    graph.initializer.append(helper.make_tensor(zero, TensorProto.FLOAT, [], [0.0]))
    new_nodes, rewired = [], {}
    for tensor, pair in reductions.items():
        if set(pair) != {"ReduceMin", "ReduceMax"}:
            continue
        base = f"{tensor}_calibration"
        rewired[tensor] = f"{base}_after_ranges"
        new_nodes += [
            helper.make_node("Add", [pair["ReduceMin"], pair["ReduceMax"]], [f"{base}_sum"]),
            helper.make_node("Less", [f"{base}_sum", f"{base}_sum"], [f"{base}_false"]),
            helper.make_node("Where", [f"{base}_false", f"{base}_sum", zero], [f"{base}_zero"]),
            helper.make_node("Add", [tensor, f"{base}_zero"], [rewired[tensor]]),
        ]
    for node in graph.node:
        if node.op_type in ("ReduceMin", "ReduceMax") and node.name.endswith(_SUFFIXES):
            continue
        for index, name in enumerate(node.input):
            if name in rewired:
                node.input[index] = rewired[name]
    # Graph outputs keep reading the tensor itself (nothing runs after them).
    graph.node.extend(new_nodes)
    return len(rewired)


def keep_reductions(model, tensors: set[str]) -> None:
    """Drop, in place, the ReduceMin/ReduceMax pairs of every calibrated tensor not in
    ``tensors``, what reads them (the calibrator reshapes each reduction into its graph
    output) and those graph outputs: one group's augmented graph."""
    graph = model.graph
    dropped = set()
    kept = []
    for node in graph.node:  # in topological order: a reader comes after what it reads
        reduction = node.op_type in ("ReduceMin", "ReduceMax") and node.name.endswith(_SUFFIXES)
        if (reduction and node.input[0] not in tensors) or dropped.intersection(node.input):
            dropped.update(node.output)
            continue
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    outputs = [o for o in graph.output if o.name not in dropped]
    del graph.output[:]
    graph.output.extend(outputs)


def calibrated_tensors(model) -> list[str]:
    """The tensors the augmented graph reduces, in graph order."""
    return list(dict.fromkeys(
        node.input[0] for node in model.graph.node
        if node.op_type in ("ReduceMin", "ReduceMax") and node.name.endswith(_SUFFIXES)
    ))  # fmt: skip


def _openvino_runner(path: Path, threads: int | None):
    """(run(feeds) -> {output name: array}, engine version) for OpenVINO at f32."""
    from runtime.backends.openvino import import_openvino, shared_core

    ov = import_openvino()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    core = shared_core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    ports = {
        name: port for port in compiled.outputs for name in port.get_names()
        if name.endswith(_SUFFIXES)
    }  # fmt: skip
    request = compiled.create_infer_request()

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = request.infer(feeds)
        return {name: results[port] for name, port in ports.items()}

    return run, f"openvino {ov.__version__}"


def _onnxruntime_runner(path: Path, threads: int | None):
    """(run, engine version) for an onnxruntime CPU session without its memory arena (an arena
    keeps the peak of the largest run): the parity check's session."""
    import onnxruntime as ort

    from export.parity import ort_session

    session = ort_session(path, threads)
    names = [o.name for o in session.get_outputs() if o.name.endswith(_SUFFIXES)]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, feeds)))

    return run, f"onnxruntime {ort.__version__}"


_RUNNERS = {"onnxruntime": _onnxruntime_runner, "openvino": _openvino_runner}


def collect_minmax(
    manifest: Manifest,
    calibration: CalibrationSet,
    cache: Path,
    op_types: list[str],
    engine: str = "onnxruntime",
    threads: int | None = None,
    groups: int = 1,
) -> dict:
    """Write the MinMax ranges of ``calibration`` to ``cache`` (ONNX Runtime's format).

    Args:
        manifest: the bundle; its FP32 video graph is calibrated.
        calibration: the clips, each the video graph's feeds.
        cache: the range cache ``quantize_static`` reads (``calibration.quantize.range_cache``).
        op_types: the op types whose tensors are calibrated (the quantizer's).
        engine: what runs the augmented graph: "onnxruntime" (no arena) or "openvino" (f32).
        threads: the engine's threads (default: all cores).
        groups: run the calibrated tensors in this many groups, one augmented graph each
            (module docstring); 1 runs them all at once.

    Returns:
        What was done: engine, tensors, clips, groups, seconds, the augmented graphs' node
        counts.
    """
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        MinMaxCalibrater,
        TensorData,
        TensorsData,
        save_tensors_data,
    )

    if engine not in _RUNNERS:
        raise ValueError(f"engine must be one of {sorted(_RUNNERS)}, got {engine!r}")
    if not len(calibration):
        raise ValueError("no calibration clips")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    started = time.perf_counter()
    source = manifest.variant_path("video", "fp32")
    work = Path(tempfile.mkdtemp(prefix="proxyformer-ranges-"))
    lowest: dict[str, np.ndarray] = {}
    highest: dict[str, np.ndarray] = {}
    try:
        augmented = work / "augmented.onnx"
        # The quantizer's own selection of tensors and its ReduceMin/ReduceMax naming.
        calibrater = MinMaxCalibrater(
            source, op_types_to_calibrate=op_types, augmented_model_path=str(augmented),
            use_external_data_format=True,
        )  # fmt: skip
        calibrater.augment_graph()
        model = calibrater.model
        del calibrater
        # The weights once, beside the first graph; every group's graph points at them.
        onnx.save_model(model, str(augmented), save_as_external_data=True,
                        location=augmented.name + ".data")  # fmt: skip
        tensors = calibrated_tensors(model)
        del model  # its copy of the weights is not needed any more
        chunks = [list(c) for c in np.array_split(np.array(tensors, dtype=object), groups)
                  if len(c)]  # fmt: skip
        nodes, rewired = [], 0
        for index, chunk in enumerate(chunks):
            part = onnx.load(str(augmented), load_external_data=False)
            keep_reductions(part, set(chunk))
            rewired += reduce_before_use(part)
            nodes.append(len(part.graph.node))
            path = work / f"group{index}.onnx"
            onnx.save_model(part, str(path))
            del part
            run, version = _RUNNERS[engine](path, threads)
            label = f"ranges ({engine}, group {index + 1}/{len(chunks)})"
            for sample in tqdm(calibration.samples, desc=label, disable=None):
                for name, value in run(sample).items():
                    tensor, _, which = name.rpartition("_")
                    value = np.asarray(value, dtype=np.float32)
                    # fmin/fmax skip NaN, as the calibrator's nanmin/nanmax do.
                    table, merge = (lowest, np.fmin) if which == "ReduceMin" else (highest, np.fmax)
                    table[tensor] = value if tensor not in table else merge(table[tensor], value)
            del run
            path.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if set(lowest) != set(highest):
        raise RuntimeError(
            f"{engine} returned a minimum without a maximum (or the reverse) for "
            f"{sorted(set(lowest) ^ set(highest))[:5]}"
        )
    ranges = TensorsData(
        CalibrationMethod.MinMax,
        {name: TensorData(lowest=lowest[name], highest=highest[name]) for name in sorted(lowest)},
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_tensors_data(ranges, cache)
    seconds = time.perf_counter() - started
    log.info("MinMax ranges of %d tensors from %d clips in %d group(s) in %s in %.1f s",
             len(lowest), len(calibration), len(chunks), version, seconds)  # fmt: skip
    return {
        "engine": engine,
        "tensors": len(lowest),
        "clips": len(calibration),
        "groups": len(chunks),
        "augmented_nodes": nodes,
        "rewired_tensors": rewired,
        "seconds": round(seconds, 1),
    }
