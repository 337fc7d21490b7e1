"""MinMax calibration ranges in bounded memory, clip by clip and piece by piece.

ONNX Runtime's MinMax calibrator adds a ReduceMin and a ReduceMax after every tensor it will
quantize, so only two numbers per tensor come out of a clip. Yet on paper-swin-t at 360x640 it
was killed at 24 GB on a single 9-frame clip: the reductions hang off the graph as side branches
to graph outputs, and neither onnxruntime (its arena on or off) nor OpenVINO runs them as soon
as their tensor exists, so every calibrated tensor stays alive to the end of the graph.

Three things bound the memory here:

- Each tensor's consumers wait for its reductions (``reduce_before_use``), so a tensor is freed
  as in the plain graph.
- The graph is cut into consecutive pieces (``graph_pieces``), each its own graph with the
  reductions of the tensors it makes; a clip runs through them one after the other, and only
  the tensors a later piece reads are carried across. The peak is then that of the largest
  piece and what crosses into it, not of the whole graph: onnxruntime's plain video graph
  alone peaks at 9.7 GB at 19 frames (no arena), above the 8 GB target, and OpenVINO's
  rewired whole graph at 12.2 GB. Cuts fall before LayerNorms (``_spans``), where little
  crosses, and shape-only work (Video-Swin's window masks) runs before the block that uses it
  (``_schedule``), so no cut carries an attention map across it.
- onnxruntime runs each piece without its arena and without its memory pattern
  (``export.parity.ort_session``): with the pattern, every clip after the first peaked 1.7 GB
  higher.

The tensors are those ONNX Runtime's calibrator selects, by the names its quantizer looks up.
Each clip's minima and maxima are folded into running ones (``np.fmin``/``np.fmax``, NaN
skipped as the calibrator's ``nanmin``/``nanmax`` do) and written as ONNX Runtime's calibration
cache, which ``quantize_static`` reads instead of calibrating, so everything after the ranges
(Q/DQ placement, both INT8 targets, the cache's reuse) is unchanged.

Histogram methods (entropy, percentile) need every tensor's values, not two numbers; they stay
with ONNX Runtime's calibrator.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tqdm import tqdm

from runtime.allocator import trim_heap
from runtime.manifest import Manifest, installed_versions

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
    if reductions:  # a piece that reduces nothing gets no unused initializer
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


def graph_pieces(model, tensors: list[str], pieces: int) -> list[Piece]:
    """Cut ``model``'s graph (nodes in topological order) into at most ``pieces`` consecutive
    pieces (:func:`_spans`), each a graph of its own that reduces the calibrated ``tensors`` it
    produces (rewired by :func:`reduce_before_use`).

    A piece's inputs are the tensors it reads that an earlier piece (or the caller) produced;
    its outputs, the tensors a later piece reads or the model returns, and its reductions. A
    model input that is calibrated is reduced by the first piece that reads it. Initializers
    stay where the model keeps them: with ``model`` loaded without its external data, every
    piece points at the one weights file.
    """
    from onnx import helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes = _schedule(list(graph.node), set(initializers))
    if not nodes:
        raise ValueError("the graph has no nodes to cut")
    spans = _spans(nodes, pieces)
    model_inputs = [i.name for i in graph.input if i.name not in initializers]
    model_outputs = [o.name for o in graph.output]
    types = _elem_types(model)
    producer, last_reader = {name: -1 for name in model_inputs}, {}
    for index, span in enumerate(spans):
        for position in span:
            node = nodes[position]
            for name in node.input:
                if name:
                    last_reader[name] = index
            for name in node.output:
                producer[name] = index
    for name in model_outputs:
        last_reader[name] = len(spans)  # read "after" the last piece: always an output
    calibrated = set(tensors)
    reduced: set[str] = set()
    result = []
    for index, span in enumerate(spans):
        part = [nodes[position] for position in span]
        made = {name for node in part for name in node.output if name}
        read = [name for node in part for name in node.input if name]
        inputs = list(dict.fromkeys(n for n in read if n not in made and n not in initializers))
        outputs = [n for node in part for n in node.output
                   if n and last_reader.get(n, -1) > index]  # fmt: skip
        # A piece's own tensors in graph order, then model inputs it is the first to read.
        mine = [n for node in part for n in node.output if n in calibrated]
        mine += [n for n in inputs if n in calibrated and producer.get(n) == -1]
        mine = [n for n in dict.fromkeys(mine) if n not in reduced]
        reduced.update(mine)
        reductions = []
        for name in mine:
            for op, suffix in zip(("ReduceMin", "ReduceMax"), _SUFFIXES):
                reductions.append(helper.make_node(
                    # keepdims=1 as ONNX Runtime's calibrator: a 0-size axis cannot be dropped.
                    op, [name], [name + suffix], name=name + suffix, keepdims=1
                ))  # fmt: skip
        used = {n for node in part for n in node.input}
        piece_graph = helper.make_graph(
            part + reductions,
            f"{graph.name}_piece{index}",
            [helper.make_tensor_value_info(n, types[n], None) for n in inputs],
            [helper.make_tensor_value_info(n, types[n], None) for n in outputs]
            + [helper.make_tensor_value_info(n + s, types[n], None)
               for n in mine for s in _SUFFIXES],
            [initializers[n] for n in initializers if n in used],
        )  # fmt: skip
        piece = helper.make_model(piece_graph, opset_imports=model.opset_import,
                                  ir_version=model.ir_version)  # fmt: skip
        reduce_before_use(piece)
        result.append(Piece(piece, inputs, outputs, mine, last_reader))
    return result


# Ops whose output follows from their input's shape alone.
_SHAPE_OPS = ("Shape", "Size", "Constant")


def _schedule(nodes: list, initializers: set[str]) -> list:
    """``nodes`` (in topological order) reordered so that shape-only work runs just before the
    block that uses it, not in the middle of the one before.

    A node is shape-only when its values follow from constants and tensor shapes alone
    (``_SHAPE_OPS``, and nodes that read only initializers or shape-only outputs): Video-Swin's
    shifted-window attention masks are built this way from each block's input shape, in about
    1,700 nodes (of 4,385 in paper-swin-t's video graph). The exporter emitted them after a
    stage-1 attention's q·kᵀ, so a piece cut by count inside them carried that 1.7 GB attention
    map across 25 pieces of shape arithmetic, and the piece after peaked at 6.1 GB. Here each
    shape-only node moves to just before the LayerNorm that opens the block of its first
    data-dependent consumer (or just after its own last input, if that comes later); every
    other node keeps its order (Shape and Size too, so no tensor lives longer for them), and
    the result is still topological.
    """
    shape_only: list[bool] = []
    light: set[str] = set()
    for node in nodes:
        flag = node.op_type in _SHAPE_OPS or all(
            not name or name in initializers or name in light for name in node.input
        )
        shape_only.append(flag)
        if flag:
            light.update(node.output)
    if not any(shape_only):
        return nodes
    consumers: dict[str, list[int]] = {}
    producer: dict[str, int] = {}
    anchor, last_norm = [], None
    for index, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(index)
        for name in node.output:
            producer[name] = index
        if node.op_type == "LayerNormalization":
            last_norm = index
        anchor.append(last_norm if last_norm is not None else index)
    count = len(nodes)
    target = [float(count)] * count  # read by nothing data-dependent: the end
    for index in reversed(range(count)):
        if shape_only[index]:
            target[index] = min(
                [float(count)]
                + [anchor[c] - 0.5 if not shape_only[c] else target[c]
                   for name in nodes[index].output for c in consumers.get(name, [])]
            )  # fmt: skip
    keys: list[float] = []
    for index, node in enumerate(nodes):
        # Shape and Size of a data tensor stay put: moved, they would keep it alive.
        reads_data = node.op_type in ("Shape", "Size") and node.input[0] not in light
        if not shape_only[index] or reads_data:
            keys.append(float(index))
            continue
        inputs = [keys[producer[name]] for name in node.input if name in producer]
        keys.append(max([target[index], *inputs]))
    # Ties (a node placed at its last input's key) keep their original order.
    return [nodes[i] for i in sorted(range(count), key=lambda i: (keys[i], i))]


def _spans(nodes: list, pieces: int) -> list[np.ndarray]:
    """Node index ranges of at most ``pieces`` pieces of about equal node count, each cut just
    before a LayerNormalization where the graph has them.

    Where a cut falls decides what crosses it. Before a LayerNorm, the start of a transformer
    block's attention or MLP half, little is alive besides the residual stream; a cut at an
    arbitrary node of Video-Swin's stage 1 can fall inside window attention and carry its
    1-2 GB attention maps across (measured: the worst piece then started at 4.3 GB and peaked
    at 8.9). A graph without LayerNorms is cut by node count alone.
    """
    count = len(nodes)
    candidates = np.array([i for i, node in enumerate(nodes)
                           if node.op_type == "LayerNormalization" and i > 0])  # fmt: skip
    if not len(candidates):
        return [span for span in np.array_split(np.arange(count), min(pieces, count))]
    targets = [count * k / pieces for k in range(1, pieces)]
    cuts = sorted({int(candidates[np.abs(candidates - t).argmin()]) for t in targets})
    spans = []
    longest = 2 * -(-count // pieces)  # a stretch without LayerNorms is cut by count
    for a, b in zip([0, *cuts], [*cuts, count]):
        parts = -(-(b - a) // longest) if b - a > longest else 1
        spans += [span for span in np.array_split(np.arange(a, b), parts)]
    return spans


@dataclass
class Piece:
    """One piece of a cut graph: its ``ModelProto``, what it reads and returns, the calibrated
    tensors it reduces, and (shared by all pieces) the last piece that reads each tensor."""

    model: Any
    inputs: list[str]
    outputs: list[str]
    reduces: list[str]
    last_reader: dict[str, int]


def _elem_types(model) -> dict[str, int]:
    """Every tensor's element type, from the graph's value infos, shape inference filling in
    what the exporter did not record."""

    def known(m) -> dict[str, int]:
        infos = [*m.graph.input, *m.graph.output, *m.graph.value_info]
        types = {i.name: i.type.tensor_type.elem_type for i in infos}
        types.update({init.name: init.data_type for init in m.graph.initializer})
        return {name: kind for name, kind in types.items() if kind}

    types = known(model)
    if any(n and n not in types for node in model.graph.node for n in node.output):
        types = known(onnx.shape_inference.infer_shapes(model)) | types
    return types


def _openvino_runner(path: Path, threads: int | None):
    """run(feeds) -> {output name: array} for OpenVINO at f32, compiled at the first call for
    that call's input shapes (every clip has the same): compiled for the graph's dynamic axes,
    OpenVINO plans its memory per call, and the rewired paper-size graph at 19 frames was
    stopped at 23 GB; for the one shape, 12.2 GB (the runtime's backend compiles static shapes
    for the same reason).

    Each compiled piece keeps its own intermediate buffers between calls, so pieces do not
    bound OpenVINO's memory the way they bound onnxruntime's (no arena): 64 pieces of
    paper-swin-t at 19 frames were killed at 24 GB, and with ``CompiledModel.release_memory()``
    after each call they were at 19.7 GB and growing within the first clip."""
    from runtime.backends.openvino import import_openvino, shared_core

    import_openvino()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    state: dict[str, Any] = {}

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "request" not in state:
            # OpenVINO's ONNX reader needs every input's rank, which a piece's inputs do not
            # declare: they get the first call's shapes, in a copy beside the weights file.
            proto = onnx.load(str(path), load_external_data=False)
            for value in proto.graph.input:
                if value.name in feeds:
                    shape = value.type.tensor_type.shape
                    shape.Clear()
                    for size in feeds[value.name].shape:
                        shape.dim.add().dim_value = size
            static = path.with_name(f"{path.stem}.static.onnx")
            onnx.save_model(proto, str(static))
            del proto
            core = shared_core()
            compiled = core.compile_model(core.read_model(str(static)), "CPU", config)
            state["ports"] = {port.get_any_name(): port for port in compiled.outputs}
            state["request"] = compiled.create_infer_request()
        results = state["request"].infer(feeds)
        return {name: np.array(results[port]) for name, port in state["ports"].items()}

    return run


def _onnxruntime_runner(path: Path, threads: int | None):
    """run(feeds) -> {output name: array} for an onnxruntime CPU session without its memory
    arena (an arena keeps the peak of the largest run): the parity check's session."""
    from export.parity import ort_session, run_ort

    session = ort_session(path, threads)
    return lambda feeds: run_ort(session, feeds)


_RUNNERS = {"onnxruntime": _onnxruntime_runner, "openvino": _openvino_runner}


def collect_minmax(
    manifest: Manifest,
    calibration: CalibrationSet,
    cache: Path,
    op_types: list[str],
    engine: str = "onnxruntime",
    threads: int | None = None,
    pieces: int = 1,
    graph: str = "video",
) -> dict:
    """Write the MinMax ranges of ``calibration`` to ``cache`` (ONNX Runtime's format).

    Args:
        manifest: the bundle; its FP32 ``graph`` (the video graph) is calibrated.
        calibration: the clips, each the graph's feeds, all of one shape.
        cache: the range cache ``quantize_static`` reads (``calibration.quantize.range_cache``).
        op_types: the op types whose tensors are calibrated (the quantizer's).
        engine: what runs the graph: "onnxruntime" (no arena) or "openvino" (f32).
        threads: the engine's threads (default: all cores).
        pieces: cut the graph into at most this many consecutive pieces (before LayerNorms:
            ``_spans``), run one after the other on each clip; 1 runs the whole graph at once.

    Returns:
        What was done: engine, tensors, clips, pieces, seconds, the pieces' node counts.
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
    if isinstance(pieces, bool) or not isinstance(pieces, int) or pieces < 1:
        raise ValueError(f"pieces must be a positive int, got {pieces!r}")
    shapes = {name: tuple(value.shape) for name, value in calibration.samples[0].items()}
    for index, sample in enumerate(calibration.samples):
        found = {name: tuple(value.shape) for name, value in sample.items()}
        if found != shapes:
            raise ValueError(
                f"calibration clip {index} has input shapes {found}, clip 0 has {shapes}: "
                "ranges are collected at one shape (build the clips with one --frames)"
            )
    started = time.perf_counter()
    source = manifest.variant_path(graph, "fp32")
    work = Path(tempfile.mkdtemp(prefix="proxyformer-ranges-"))
    lowest: dict[str, np.ndarray] = {}
    highest: dict[str, np.ndarray] = {}
    try:
        # The quantizer's own selection of tensors (ONNX Runtime's MinMax calibrator's).
        calibrater = MinMaxCalibrater(source, op_types_to_calibrate=op_types,
                                      augmented_model_path=str(work / "augmented.onnx"),
                                      use_external_data_format=True)  # fmt: skip
        tensors = sorted(calibrater.select_tensors_to_calibrate(calibrater.model)[0])
        # The weights once, in one file every piece points at (small constants, such as the
        # shapes Reshape reads at load, stay inline), from the model the calibrator loaded.
        weights = work / "weights.onnx"
        onnx.save_model(calibrater.model, str(weights), save_as_external_data=True,
                        location="weights.data")  # fmt: skip
        del calibrater
        model = onnx.load(str(weights), load_external_data=False)
        cut = graph_pieces(model, tensors, pieces)
        del model
        runs = []
        for index, piece in enumerate(cut):
            path = work / f"piece{index}.onnx"
            onnx.save_model(piece.model, str(path))
            runs.append(_RUNNERS[engine](path, threads))
        nodes = [len(piece.model.graph.node) for piece in cut]
        for piece in cut:
            piece.model = None  # the protos are on disk; the engines hold what they need
        label = f"ranges ({engine}, {len(cut)} piece(s))"
        for number, sample in enumerate(tqdm(calibration.samples, desc=label, disable=None)):
            clip_started = time.perf_counter()
            values = dict(sample)
            for index, (piece, run) in enumerate(zip(cut, runs)):
                results = run({name: values[name] for name in piece.inputs})
                for name in piece.reduces:
                    # Shape [1], as the calibrator's Reshape leaves them.
                    low, high = (np.asarray(results.pop(name + s), np.float32).reshape(-1)
                                 for s in _SUFFIXES)  # fmt: skip
                    # fmin/fmax skip NaN, as the calibrator's nanmin/nanmax do.
                    lowest[name] = low if name not in lowest else np.fmin(lowest[name], low)
                    highest[name] = high if name not in highest else np.fmax(highest[name], high)
                values.update(results)
                del results
                # Free what no later piece reads.
                for name in [n for n in values if piece.last_reader.get(n, -1) <= index]:
                    del values[name]
                trim_heap()
            del values
            log.info("ranges: clip %d/%d in %.1f s", number + 1, len(calibration),
                     time.perf_counter() - clip_started)  # fmt: skip
        del runs
    finally:
        shutil.rmtree(work, ignore_errors=True)
    missing = sorted(set(tensors) - set(lowest))
    if missing:
        raise RuntimeError(
            f"{engine} returned no range for {len(missing)} tensor(s): {missing[:5]}"
        )
    ranges = TensorsData(
        CalibrationMethod.MinMax,
        {name: TensorData(lowest=lowest[name], highest=highest[name]) for name in sorted(lowest)},
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_tensors_data(ranges, cache)
    seconds = time.perf_counter() - started
    package = "openvino" if engine == "openvino" else "onnxruntime"
    version = f"{engine} {installed_versions((package,)).get(package, '?')}"
    log.info("MinMax ranges of %d tensors from %d clips in %d piece(s) in %s in %.1f s",
             len(lowest), len(calibration), len(cut), version, seconds)  # fmt: skip
    return {
        "engine": version,
        "tensors": len(lowest),
        "clips": len(calibration),
        "pieces": len(cut),
        "piece_nodes": nodes,
        "seconds": round(seconds, 1),
    }
