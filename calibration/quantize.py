"""INT8 variants of ``video.onnx`` (and of its split parts, ``video_encoder`` and
``video_decoder``, where the bundle has them): explicit Q/DQ from calibration ranges, for two
targets.

- ``tensorrt``: the explicit-quantization form TensorRT builds from (TensorRT 11 has no
  implicit INT8): QuantizeLinear/DequantizeLinear pairs with symmetric int8 activations
  (zero point 0, per tensor) and symmetric per-channel int8 weights on Conv, MatMul and Gemm;
  biases stay float; Softmax, LayerNorm, Resize and everything else stay in float.
- ``cpu``: the form ONNX Runtime's x86 int8 kernels (VNNI/AMX: u8 x s8) run: uint8 asymmetric
  activations and int8 symmetric per-channel weights, as Q/DQ (which ORT fuses into
  QLinearConv / MatMulIntegerToFloat) or as QOperator nodes (``cpu_format``). Which one is
  faster is measured by ``benchmarks/latency.py``, not assumed.

Both leave the class path in float by default (``class_path_nodes``): the Conv/MatMul/Gemm
nodes that only ``pred_logits`` depends on -- mask pooling, the mask geometry and shape, the
video-level selection block, the class MLP. They work on T x N tokens rather than pixels (a
negligible share of the compute), yet their output picks the query, i.e. the whole track, and
INT8 noise there flips picks that the masks themselves would survive.

Calibration (ONNX Runtime's calibrators: entropy, percentile, minmax; or MinMax in bounded
memory, ``calibration.ranges``) runs once per
method; its tensor ranges are cached as JSON in the bundle, so re-quantising with other nodes
left in float (the sensitivity pass) costs no new calibration. The split graphs are quantized
from the video graph's cached ranges, translated to their tensors (``calibration.correspond``):
the same scales at the same places, with no second calibration.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from runtime.files import apply_umask
from runtime.manifest import SPLIT_GRAPHS, Manifest
from runtime.precisions import INT8_PRECISIONS, INT8_TENSORRT, precision_name

from .data import CalibrationSet
from .ranges import RANGE_BACKENDS, collect_minmax

log = logging.getLogger(__name__)

# The INT8 variants calibration writes, by their precision names (runtime.precisions).
TARGETS = INT8_PRECISIONS
METHODS = ("entropy", "percentile", "minmax")
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")


class _SkipPreprocessHint(logging.Filter):
    """ONNX Runtime suggests its pre-processing (shape inference + ORT graph optimisation). It
    is skipped on purpose: optimised graphs can hold ORT-only fused ops TensorRT cannot parse."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


class _Reader:
    """onnxruntime's CalibrationDataReader over a calibration set."""

    def __init__(self, calibration: CalibrationSet) -> None:
        self.samples = calibration.samples
        self.index, self.end = 0, len(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.index, self.end = start_index, min(end_index, len(self.samples))

    def get_next(self):
        if self.index >= self.end:
            return None
        self.index += 1
        return self.samples[self.index - 1]

    def rewind(self) -> None:
        self.index, self.end = 0, len(self.samples)


def quantize_video(
    manifest: Manifest,
    calibration: CalibrationSet | None,
    target: str = INT8_TENSORRT,
    method: str = "entropy",
    exclude: list[str] | None = None,
    output: Path | None = None,
    cpu_format: str = "qdq",
    percentile: float = 99.999,
    class_path: bool = False,
    range_backend: str = "calibrator",
    threads: int | None = None,
    range_pieces: int = 1,
    graph: str = "video",
) -> Path:
    """Write an INT8 copy of the bundle's FP32 ``video.onnx`` (or of a part of the split video
    graph) and return its path.

    Args:
        manifest: the bundle.
        calibration: the samples; ``None`` reuses the cached ranges of ``method``.
        target: "int8-tensorrt" or "int8-cpu" (see the module docstring).
        method: "entropy", "percentile" or "minmax".
        exclude: node names left in float (from the sensitivity pass).
        output: where to write (default: ``video.int8-<target>.onnx`` in the bundle).
        cpu_format: for the cpu target, "qdq" or "qoperator".
        class_path: also quantize the class path (``class_path_nodes``), float by default.
        range_backend: "calibrator" (onnxruntime's calibrator, every method), or "onnxruntime"
            / "openvino" (MinMax only, in bounded memory, run by that engine:
            ``calibration.ranges``).
        threads: the bounded range backend's threads.
        range_pieces: the bounded range backend's graph pieces (``collect_minmax``).
        graph: "video", or "video_encoder" / "video_decoder": a part of the split video graph,
            quantized with the video graph's cached ranges of ``method`` (``calibration`` must
            be None: run the video graph's first), ``exclude`` naming video-graph nodes.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    target = precision_name(target, TARGETS, "calibration target")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if graph not in ("video", *SPLIT_GRAPHS):
        raise ValueError(f"graph must be 'video' or one of {SPLIT_GRAPHS}, got {graph!r}")
    source = manifest.variant_path(graph, "fp32")
    output = output or manifest.root / f"{graph}.{target}.onnx"
    cache = range_cache(manifest, method)
    exclude = list(exclude or [])
    if calibration is None and not cache.is_file():
        raise FileNotFoundError(f"no calibration samples and no cached ranges at {cache}")
    if graph != "video":
        if calibration is not None:
            raise ValueError(
                f"{graph} is quantized from the video graph's cached ranges: "
                "quantize the video graph first, then pass calibration=None"
            )
        cache, exclude = _split_graph_ranges(manifest, graph, method, exclude)
    if not class_path and graph != SPLIT_GRAPHS[0]:  # the encoder's nodes feed every output
        exclude += [node for node in class_path_nodes(source) if node not in exclude]
    check_range_backend(range_backend, method)
    if calibration is not None and range_backend != "calibrator":
        # A cached range file is these samples' (new samples delete it), and quantize_static
        # reuses it on the calibrator's path too: another target costs no second pass.
        if not cache.is_file():
            collect_minmax(manifest, calibration, cache, list(QUANTIZED_OPS), range_backend,
                           threads, range_pieces)  # fmt: skip
        calibration = None  # quantize_static reads the ranges from the cache
    calibrate_method = {
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
        "minmax": CalibrationMethod.MinMax,
    }[method]
    if target == INT8_TENSORRT:
        options = dict(
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            extra_options={
                "ActivationSymmetric": True,  # zero point 0: TensorRT's only INT8 form
                "WeightSymmetric": True,
                "QuantizeBias": False,  # TensorRT fuses float biases itself
                # Q/DQ on the inputs of Conv/MatMul/Gemm only (TensorRT's explicit-quantization
                # placement): by default ONNX Runtime also quantizes their outputs, which would
                # feed Softmax (after q @ k) and LayerNorm a dequantized int8 tensor.
                "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
            },
        )
    else:
        options = dict(
            quant_format=QuantFormat.QDQ if cpu_format == "qdq" else QuantFormat.QOperator,
            activation_type=QuantType.QUInt8,  # x86 int8 GEMMs are u8 x s8
            weight_type=QuantType.QInt8,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    # A Q/DQ pair per consumer: a node left in float then reads the float tensor, not the
    # dequantized copy its quantized siblings (q/k/v projections of one input) share.
    options["extra_options"]["DedicatedQDQPair"] = True
    # One sample at a time (ONNX Runtime's "strided" collection): its calibrators otherwise
    # hold every sample's intermediate tensors, attention maps included, before merging them
    # into ranges or histograms -- tens of GB for 64 clips.
    options["extra_options"] |= {"CalibPercentile": percentile, "CalibStridedMinMax": 1}
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="proxyformer-int8-"))
    hint = _SkipPreprocessHint()
    logging.getLogger().addFilter(hint)
    try:
        # The calibrator writes an augmented copy of the model; keep it out of the bundle.
        local = work / source.name
        shutil.copy(source, local)
        for extra in manifest.variant(graph, "fp32").get("external_data", []):
            shutil.copy(manifest.path(extra), work / extra)
        tmp_output = work / output.name
        quantize_static(
            str(local),
            str(tmp_output),
            _Reader(calibration) if calibration is not None else None,
            op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=True,
            reduce_range=False,
            nodes_to_exclude=exclude,
            calibrate_method=calibrate_method,
            calibration_cache_path=str(cache),
            **options,
        )
        # onnxruntime writes the range cache through mkstemp, which leaves it 0600 in the
        # bundle: give it the mode an ordinary write has, so a shared bundle stays readable.
        if cache.is_file():
            apply_umask(cache, directory=False)
        tmp_output.replace(output)
    finally:
        logging.getLogger().removeFilter(hint)
        shutil.rmtree(work, ignore_errors=True)
    log.info("quantised %s for %s (%s) in %.1f s", output.name, target, method,
             time.perf_counter() - started)  # fmt: skip
    return output


def _split_graph_ranges(manifest: Manifest, graph: str, method: str,
                        exclude: list[str]) -> tuple[Path, list[str]]:  # fmt: skip
    """The range cache of a part of the split video graph, translated from the video graph's
    (``calibration.correspond``), and ``exclude`` (video-graph nodes) as the part's nodes."""
    import onnx
    from onnxruntime.quantization.calibrate import MinMaxCalibrater

    from .correspond import node_names, split_correspondence, translate_ranges

    started = time.perf_counter()
    whole, encoder, decoder = (
        onnx.load(str(manifest.variant_path(name, "fp32")), load_external_data=False)
        for name in ("video", *SPLIT_GRAPHS)
    )
    tensors = split_correspondence(whole, encoder, decoder, manifest.root)[graph]
    part = encoder if graph == SPLIT_GRAPHS[0] else decoder
    # The tensors this graph's quantizer looks up, selected as ONNX Runtime's calibrator does.
    work = Path(tempfile.mkdtemp(prefix="proxyformer-select-"))
    try:
        calibrater = MinMaxCalibrater(manifest.variant_path(graph, "fp32"),
                                      op_types_to_calibrate=list(QUANTIZED_OPS),
                                      augmented_model_path=str(work / "augmented.onnx"),
                                      use_external_data_format=True)  # fmt: skip
        needed = calibrater.select_tensors_to_calibrate(calibrater.model)[0]
        del calibrater
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cache = range_cache(manifest, method, graph)
    count = translate_ranges(range_cache(manifest, method), cache, tensors, needed, graph)
    exclude = node_names(part, whole, tensors, exclude)
    log.info("%s: ranges of %d tensors from the video graph's in %.1f s", graph, count,
             time.perf_counter() - started)  # fmt: skip
    return cache, exclude


def check_range_backend(range_backend: str, method: str) -> None:
    """Refuse a range backend that is unknown or cannot compute ``method``."""
    if range_backend not in RANGE_BACKENDS:
        raise ValueError(f"range backend must be one of {RANGE_BACKENDS}, got {range_backend!r}")
    if range_backend != "calibrator" and method != "minmax":
        raise ValueError(
            f"--range-backend {range_backend} computes MinMax ranges only (two numbers per "
            f"tensor and clip); {method} needs every tensor's histogram: use --method minmax, "
            "or --range-backend calibrator"
        )


def range_cache(manifest: Manifest, method: str, graph: str = "video") -> Path:
    """The cached ranges of ``method``: the video graph's, or those translated from them for
    a part of the split video graph."""
    suffix = "" if graph == "video" else f".{graph}"
    return manifest.root / "calibration" / f"ranges-{method}{suffix}.json"


def class_path_nodes(path: Path, output: str = "pred_logits") -> list[str]:
    """Names of the Conv/MatMul/Gemm nodes of the graph at ``path`` that only ``output``
    depends on (no other graph output does), in graph order: the video graph's class path.
    Nodes shared with the boxes or masks (backbone, decoder, mask kernels) are never in it."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    outputs = [o.name for o in model.graph.output]
    if output not in outputs:
        raise ValueError(f"{path} has no output {output!r} (outputs: {outputs})")
    producer = {name: node for node in model.graph.node for name in node.output}

    def ancestors(names: list[str]) -> set[int]:
        seen: set[int] = set()
        stack = list(names)
        while stack:
            node = producer.get(stack.pop())
            if node is not None and id(node) not in seen:
                seen.add(id(node))
                stack.extend(node.input)
        return seen

    only = ancestors([output]) - ancestors([o for o in outputs if o != output])
    return [
        n.name for n in model.graph.node if id(n) in only and n.op_type in QUANTIZED_OPS and n.name
    ]


def quantized_nodes(path: Path) -> list[str]:
    """Names of the float nodes whose inputs got Q/DQ (the candidates of the sensitivity pass)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    produced_by_dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return [
        n.name for n in model.graph.node
        if n.op_type in QUANTIZED_OPS and any(i in produced_by_dq for i in n.input)
    ]  # fmt: skip


def qdq_summary(path: Path) -> dict:
    """Counts of Q/DQ nodes and quantized ops, and the zero points and dtypes used."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    zero_points, dtypes = set(), set()
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zp = inits.get(node.input[2])
            if zp is not None:
                values = numpy_helper.to_array(zp)
                zero_points.update(np.unique(values).tolist())
                dtypes.add(str(values.dtype))
    return {
        "quantize_linear": counts.get("QuantizeLinear", 0),
        "dequantize_linear": counts.get("DequantizeLinear", 0),
        "quantized_ops": len(quantized_nodes(path)),
        "qoperator_nodes": {
            k: v
            for k, v in counts.items()
            if k.startswith("QLinear")
            or k in ("MatMulInteger", "ConvInteger", "DynamicQuantizeLinear")
        },  # fmt: skip
        "zero_points": sorted(zero_points)[:8],
        "zero_point_dtypes": sorted(dtypes),
    }
