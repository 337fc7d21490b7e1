"""Which ONNX operators the TensorRT ONNX parser reads, and a report of a bundle's graphs.

Source of the table: ``docs/operators.md`` of the ONNX-TensorRT parser (github.com/onnx/
onnx-tensorrt), the revision that opens "TensorRT 10.15 supports operators in the inclusive
range of opset 9 to opset 24". Its types column and the restrictions that can matter for an
exported PyTorch model are kept below (shortened); ops the table marks "N" are unsupported.

Version notes (from the same repository's docs/operators.md history and docs/Changelog.md):
- TensorRT 10.0's table covers opsets 9 to 20; 10.15's covers 9 to 24. The range check below
  uses 9..24 and adds a warning above 20, since an older 10.x parser stops there.
- ``RotaryEmbedding``, ``RMSNormalization`` and ``TensorScatter`` arrived in TensorRT 10.15.
- The 8.x tables restricted ``Einsum`` (no ellipsis, no diagonal, no broadcasting between
  inputs); 10.15 lists no restriction, so an ellipsis in an equation is only a warning.
- INT8/INT4/FP8/FP4 exist only through Q/DQ quantization from a wider float type; UINT8 is
  accepted only as a network input or output (our uint8 frames are a network input).

A node outside the standard domain ("" or "ai.onnx") is a custom op: the parser needs a
plugin for it, so it counts as unsupported. Calls of the model's local functions are expanded
(the parser inlines local functions); subgraphs of If/Loop/Scan are walked.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

SOURCE = "onnx/onnx-tensorrt docs/operators.md, TensorRT 10.15 revision"
TABLE_TENSORRT_VERSION = "10.15"
OPSET_RANGE = (9, 24)  # inclusive, TensorRT 10.15's parser
OPSET_RANGE_TENSORRT_10_0 = (9, 20)
STANDARD_DOMAINS = ("", "ai.onnx")

_F = "FP32, FP16, BF16"
_FI = "FP32, FP16, BF16, INT32, INT64"
_FIB = "FP32, FP16, BF16, INT32, INT64, BOOL"
_AXES_INIT = "`axes` must be an initializer"
_AXES_CONST = "`axes` must resolve to a constant"

# op type -> (supported Types column, restriction note). Supported by TensorRT 10.15's parser.
SUPPORTED: dict[str, tuple[str, str]] = {
    "Abs": (_FI, ""),
    "Acos": (_F, ""),
    "Acosh": (_F, ""),
    "Add": (_FI, ""),
    "And": ("BOOL", ""),
    "ArgMax": (_FI, ""),
    "ArgMin": (_FI, ""),
    "Asin": (_F, ""),
    "Asinh": (_F, ""),
    "Atan": (_F, ""),
    "Atanh": (_F, ""),
    "Attention": (
        "FP32, FP16, BF16, INT8, FP8",
        (
            "Q, K, V and attn_mask 4D; no past_key/past_value/nonpad_kv_seqlen inputs, no "
            "present_*/qk_matmul_output outputs, no qk_matmul_output_mode or softcap"
        ),
    ),
    "AveragePool": (_F, "2D or 3D only; dilations empty or all ones"),
    "BatchNormalization": (_F, ""),
    "BlackmanWindow": ("FP32, FP16", ""),
    "Cast": ("FP32, FP16, BF16, INT32, INT64, UINT8, BOOL", ""),
    "CastLike": ("FP32, FP16, BF16, INT32, INT64, UINT8, BOOL", ""),
    "Ceil": (_F, ""),
    "Celu": (_F, ""),
    "Clip": (_F, ""),
    "Concat": (_FIB, ""),
    "Constant": (
        "FP32, FP16, BF16, FP8, FP4, INT4, INT32, INT64, BOOL",
        "no sparse_value / value_string / value_strings",
    ),
    "ConstantOfShape": ("FP32, FP16, BF16, FP8, FP4, INT4, INT32, INT64, BOOL", ""),
    "Conv": (_F, ""),
    "ConvTranspose": (_F, ""),
    "Cos": (_F, ""),
    "Cosh": (_F, ""),
    "CumSum": (_F, "`axis` must be a build-time constant"),
    "DeformConv": ("FP32, FP16", "1D or 2D spatial input; symmetric pads per spatial axis"),
    "DepthToSpace": (_FI, ""),
    "DequantizeLinear": ("INT8, FP8, FP4, INT4", "`x_zero_point` must be zero"),
    "Div": (_FI, ""),
    "Dropout": (_F, "`is_training` must be an initializer equal to False"),
    "Einsum": (
        _F,
        (
            "no restriction listed for 10.15; TensorRT 8.x refused ellipsis, diagonal and "
            "broadcasting between inputs"
        ),
    ),
    "Elu": (_F, ""),
    "Equal": (_FI, ""),
    "Erf": (_F, ""),
    "Exp": (_F, ""),
    "Expand": (_FIB, ""),
    "EyeLike": (_FIB, "input must have static dimensions"),
    "Flatten": (_FIB, ""),
    "Floor": (_F, ""),
    "Gather": (_FIB, ""),
    "GatherElements": (_FIB, ""),
    "GatherND": (_FIB, ""),
    "Gelu": ("FP32, FP16, BF16, INT8, INT32, INT64", ""),
    "Gemm": (_F, ""),
    "GlobalAveragePool": (_F, ""),
    "GlobalLpPool": (_F, ""),
    "GlobalMaxPool": (_F, ""),
    "Greater": (_FI, ""),
    "GreaterOrEqual": (_FI, ""),
    "GridSample": ("FP32, FP16", "4D input only"),
    "GroupNormalization": (_F, ""),
    "GRU": (_F, "bidirectional: same activations both directions"),
    "HammingWindow": ("FP32, FP16", ""),
    "HannWindow": ("FP32, FP16", ""),
    "HardSigmoid": (_F, ""),
    "HardSwish": (_F, ""),
    "Hardmax": (_F, "the `axis` dimension must be a build-time constant"),
    "Identity": (_FIB, ""),
    "If": (_FIB, "both branches' outputs: same rank, different names"),
    "ImageScaler": (_F, ""),
    "InstanceNormalization": (_F, ""),
    "IsInf": (_F, ""),
    "IsNaN": (_FI, ""),
    "LayerNormalization": (_F, "only the first output Y"),
    "LeakyRelu": (_F, ""),
    "Less": (_FI, ""),
    "LessOrEqual": (_FI, ""),
    "Log": (_F, ""),
    "LogSoftmax": (_F, ""),
    "Loop": (_FIB, "scan outputs of static length; carried shapes constant across iterations"),
    "LRN": (_F, ""),
    "LSTM": (_F, "bidirectional: same activations both directions; input_forget=0; layout=0"),
    "LpNormalization": (_F, ""),
    "LpPool": (_F, "dilations empty or all ones"),
    "MatMul": (_F, ""),
    "Max": (_FI, ""),
    "MaxPool": (_F, "2D or 3D only; no `Indices` output; dilations empty or all ones"),
    "Mean": ("FP32, FP16, BF16, FP8, INT32, INT64", ""),
    "MeanVarianceNormalization": (_F, ""),
    "Min": (_FI, ""),
    "Mish": ("FP32, FP16", ""),
    "Mod": (_FI, ""),
    "Mul": (_FI, ""),
    "Neg": (_FI, ""),
    "NonMaxSuppression": ("FP32, FP16", ""),
    "NonZero": ("FP32, FP16", ""),
    "Not": ("BOOL", ""),
    "OneHot": (_FIB, "`depth` must be a build-time constant"),
    "Or": ("BOOL", ""),
    "Pad": (_FI, ""),
    "ParametricSoftplus": (_F, ""),
    "Pow": (_FI, ""),
    "PRelu": (_F, ""),
    "QuantizeLinear": (_F, "`y_zero_point` must be zero"),
    "RandomNormal": (_F, "`seed` is ignored"),
    "RandomNormalLike": (_F, "`seed` is ignored"),
    "RandomUniform": (_F, "`seed` is ignored"),
    "RandomUniformLike": (_F, "`seed` is ignored"),
    "Range": (_FI, ""),
    "Reciprocal": (_F, ""),
    "ReduceL1": (_FI, _AXES_INIT),
    "ReduceL2": (_FI, _AXES_INIT),
    "ReduceLogSum": (_FI, _AXES_INIT),
    "ReduceLogSumExp": (_FI, _AXES_INIT),
    "ReduceMax": (_FI, _AXES_INIT),
    "ReduceMean": (_FI, _AXES_INIT),
    "ReduceMin": (_FI, _AXES_INIT),
    "ReduceProd": (_FI, _AXES_INIT),
    "ReduceSum": (_FI, _AXES_INIT),
    "ReduceSumSquare": (_FI, _AXES_INIT),
    "Relu": (_FI, ""),
    "Reshape": (_FIB, ""),
    "Resize": (
        _F,
        (
            "coordinate modes half_pixel, pytorch_half_pixel, tf_half_pixel_for_nn, "
            "asymmetric, align_corners; modes nearest, linear (no cubic); nearest modes floor, "
            "ceil, round_prefer_floor, round_prefer_ceil; aspect policy stretch; no antialias; "
            "tensor `scales` need `axes` = 0..rank-1"
        ),
    ),
    "ReverseSequence": (_FIB, ""),
    "RMSNormalization": (_F, "new in TensorRT 10.15"),
    "RNN": (_F, "bidirectional: same activations both directions"),
    "RoiAlign": ("FP32, FP16", ""),
    "RotaryEmbedding": (_F, "`position_ids` INT64; new in TensorRT 10.15"),
    "Round": (_F, ""),
    "STFT": ("FP32", "`frame_step` and `window` initializers; real input"),
    "ScaledTanh": (_F, ""),
    "Scan": (_F, ""),
    "Scatter": (_FI, ""),
    "ScatterElements": (_FI, ""),
    "ScatterND": (_FI, "`reduction` must be none"),
    "Selu": (_F, ""),
    "Shape": (_FIB, ""),
    "Shrink": (_FI, ""),
    "Sigmoid": (_F, ""),
    "Sign": (_FI, ""),
    "Sin": (_F, ""),
    "Sinh": (_F, ""),
    "Size": (_FIB, ""),
    "Slice": (_FIB, ""),
    "Softmax": (_F, ""),
    "Softplus": (_F, ""),
    "Softsign": (_F, ""),
    "SpaceToDepth": (_FI, ""),
    "Split": (_FIB, ""),
    "Sqrt": (_F, ""),
    "Squeeze": (_FIB, _AXES_CONST),
    "Sub": (_FI, ""),
    "Sum": (_FI, ""),
    "Tan": (_F, ""),
    "Tanh": (_F, ""),
    "TensorScatter": (
        "FP32, FP16, BF16, INT32",
        "`past_cache` and `update` 4D, axis -2; new in TensorRT 10.15",
    ),
    "ThresholdedRelu": (_F, ""),
    "Tile": (_FIB, ""),
    "TopK": (_FI, "`sorted` must be 1; K < 3840"),
    "Transpose": (_FIB, ""),
    "Trilu": (_FIB, ""),
    "Unsqueeze": (_FIB, _AXES_CONST),
    "Upsample": (_F, ""),
    "Where": (_FIB, ""),
    "Xor": ("BOOL", ""),
}

# Marked "N" in the table.
UNSUPPORTED: dict[str, str] = {
    op: "not supported by the TensorRT ONNX parser"
    for op in (
        "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr",
        "BitwiseXor", "CenterCropPad", "Col2Im", "Compress", "ConcatFromSequence", "ConvInteger",
        "DFT", "Det", "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool",
        "MelWeightMatrix", "Multinomial", "NegativeLogLikelihoodLoss", "Optional",
        "OptionalGetElement", "OptionalHasElement", "QLinearConv", "QLinearMatMul",
        "RegexFullMatch", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
        "SequenceInsert", "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss",
        "SplitToSequence", "StringConcat", "StringNormalizer", "StringSplit", "TfIdfVectorizer",
        "Unique",
    )
}  # fmt: skip
UNSUPPORTED["DynamicQuantizeLinear"] = (
    "not supported; export static Q/DQ (calibration) instead of dynamic quantization"
)

_RESIZE_COORDINATE_MODES = {
    "half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners",
}  # fmt: skip
_RESIZE_MODES = {"nearest", "linear"}
_RESIZE_NEAREST_MODES = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
_REDUCE_OPS = {op for op, (_, note) in SUPPORTED.items() if note == _AXES_INIT}


def op_support(op_type: str, domain: str = "") -> tuple[bool, str, str]:
    """(supported, types, note) of one operator in TensorRT 10's ONNX parser."""
    if domain not in STANDARD_DOMAINS:
        return False, "", f"custom op of domain {domain!r}: needs a TensorRT plugin"
    if op_type in SUPPORTED:
        types, note = SUPPORTED[op_type]
        return True, types, note
    if op_type in UNSUPPORTED:
        return False, "", UNSUPPORTED[op_type]
    return False, "", "not in TensorRT's operator table"


# -- the report ----------------------------------------------------------------------------


def tensorrt_report(graphs: dict[str, onnx.ModelProto | str | Path]) -> dict:
    """Check ONNX graphs against the TensorRT 10 ONNX parser's operator table.

    Args:
        graphs: name -> ``onnx.ModelProto`` or a path to an ``.onnx`` file (loaded without
            external data, so big graphs are cheap).
    Returns:
        A JSON-serialisable dict: ``ok`` (no problems), ``problems`` and ``warnings`` (readable
        strings naming the graph, op and node), ``source``, ``tensorrt_version`` and
        ``opset_range`` of the table, and per graph ``path``, ``opset``, ``nodes`` and ``ops``
        (op -> count, domain, supported, types, note).
    """
    import onnx

    report: dict = {
        "ok": True,
        "problems": [],
        "warnings": [],
        "source": SOURCE,
        "tensorrt_version": TABLE_TENSORRT_VERSION,
        "opset_range": list(OPSET_RANGE),
        "graphs": {},
    }
    for name, graph in graphs.items():
        path = None
        if isinstance(graph, (str, Path)):
            path = str(graph)
            model = onnx.load(path, load_external_data=False)
        else:
            model = graph
        entry = _graph_report(name, model)
        entry["path"] = path
        report["graphs"][name] = entry
        report["problems"].extend(entry["problems"])
        report["warnings"].extend(entry["warnings"])
    report["ok"] = not report["problems"]
    return report


def _graph_report(name: str, model) -> dict:
    problems: list[str] = []
    warnings: list[str] = []
    opset = next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), None)
    low, high = OPSET_RANGE
    if opset is None:
        problems.append(f"{name}: no standard-domain opset import")
    elif not low <= opset <= high:
        problems.append(
            f"{name}: opset {opset} is outside the TensorRT parser's range {low}..{high}; "
            "re-export with --opset 18"
        )
    elif opset > OPSET_RANGE_TENSORRT_10_0[1]:
        warnings.append(
            f"{name}: opset {opset} needs a recent TensorRT 10.x parser "
            f"(10.0 reads opsets up to {OPSET_RANGE_TENSORRT_10_0[1]})"
        )

    functions = {(f.domain, f.name): f for f in model.functions}
    nodes = list(_walk(model.graph.node, functions))
    constants = _constants(model.graph, nodes)
    counts: Counter = Counter()
    domains: dict[str, str] = {}
    for node in nodes:
        domain = "" if node.domain == "ai.onnx" else node.domain
        key = node.op_type if domain == "" else f"{domain}::{node.op_type}"
        counts[key] += 1
        domains[key] = domain
        for check in _node_checks(node, domain, constants):
            (problems if check[0] else warnings).append(f"{name}: {check[1]}")

    ops = {}
    for key in sorted(counts):
        op_type = key.split("::")[-1]
        supported, types, note = op_support(op_type, domains[key])
        ops[key] = {
            "count": counts[key],
            "domain": domains[key],
            "supported": supported,
            "types": types,
            "note": note,
        }
        if not supported:
            problems.append(f"{name}: {key} ({counts[key]} nodes): {note}")
    return {
        "opset": opset,
        "nodes": sum(counts.values()),
        "ops": ops,
        "problems": problems,
        "warnings": warnings,
    }


def _walk(nodes, functions: dict, depth: int = 0):
    """Every node, with local-function calls expanded and control-flow subgraphs entered."""
    import onnx

    if depth > 32:
        raise ValueError("ONNX local functions nest more than 32 deep (recursive?)")
    for node in nodes:
        function = functions.get((node.domain, node.op_type))
        if function is not None:
            yield from _walk(function.node, functions, depth + 1)
            continue
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attribute.g.node, functions, depth + 1)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from _walk(subgraph.node, functions, depth + 1)


def _constants(graph, nodes: list) -> dict[str, object]:
    """Initializers and outputs of Constant nodes: name -> TensorProto (None if not a tensor)."""
    constants: dict[str, object] = {t.name: t for t in graph.initializer}
    constants[""] = None  # an omitted optional input
    for node in nodes:
        if node.op_type == "Constant" and node.domain in STANDARD_DOMAINS:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            for output in node.output:
                constants[output] = value
    return constants


def _node_checks(node, domain: str, constants: dict) -> list[tuple[bool, str]]:
    """Attribute-level restrictions of the table: (is_problem, message) pairs."""
    if domain != "":
        return []
    import onnx

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def text(value) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    where = f"{node.op_type} node {node.name or '(unnamed)'}"
    checks: list[tuple[bool, str]] = []
    op = node.op_type
    if op == "Resize":
        coordinate = text(attrs.get("coordinate_transformation_mode", "half_pixel"))
        mode = text(attrs.get("mode", "nearest"))
        nearest = text(attrs.get("nearest_mode", "round_prefer_floor"))
        policy = text(attrs.get("keep_aspect_ratio_policy", "stretch"))
        if coordinate not in _RESIZE_COORDINATE_MODES:
            checks.append((True, f"{where}: coordinate_transformation_mode {coordinate!r}"))
        if mode not in _RESIZE_MODES:
            checks.append((True, f"{where}: mode {mode!r} (TensorRT: nearest, linear)"))
        if mode == "nearest" and nearest not in _RESIZE_NEAREST_MODES:
            checks.append((True, f"{where}: nearest_mode {nearest!r}"))
        if policy != "stretch":
            checks.append((True, f"{where}: keep_aspect_ratio_policy {policy!r}"))
        if attrs.get("antialias", 0):
            checks.append((True, f"{where}: antialias is not supported"))
    elif op == "TopK" and attrs.get("sorted", 1) != 1:
        checks.append((True, f"{where}: sorted=0 is not supported"))
    elif op == "LayerNormalization" and sum(1 for o in node.output[1:] if o) > 0:
        checks.append((True, f"{where}: only the first output Y is supported"))
    elif op == "MaxPool" and len(node.output) > 1 and node.output[1]:
        checks.append((True, f"{where}: the Indices output is not supported"))
    elif op == "ScatterND" and text(attrs.get("reduction", "none")) != "none":
        checks.append((True, f"{where}: reduction {text(attrs['reduction'])!r}"))
    elif op == "Einsum" and "..." in text(attrs.get("equation", "")):
        equation = text(attrs["equation"])
        checks.append((False, f"{where}: ellipsis in {equation!r} (older parsers refuse it)"))
    elif op in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
        zero_point = constants.get(node.input[2])
        if zero_point is not None and _nonzero(zero_point):
            checks.append((True, f"{where}: zero point must be 0 (symmetric quantization)"))
    elif op in _REDUCE_OPS and len(node.input) > 1 and node.input[1] not in constants:
        # an empty name (no axes input) is in constants too: see _constants
        checks.append((False, f"{where}: axes {node.input[1]!r} is not an initializer"))
    return checks


def _nonzero(tensor) -> bool:
    """Whether an initializer holds a nonzero value (False when its data is external)."""
    from onnx import numpy_helper

    if tensor.data_location == 1:  # TensorProto.EXTERNAL: not loaded, cannot tell
        return False
    try:
        return bool(numpy_helper.to_array(tensor).astype("float64").any())
    except (ValueError, TypeError):
        return False


# -- presenting ----------------------------------------------------------------------------


def format_tensorrt_report(report: dict) -> str:
    """A readable table per graph: op, count, supported, note; then problems and warnings."""
    low, high = report["opset_range"]
    lines = [
        f"TensorRT ONNX parser support ({report['source']}; opsets {low}..{high})",
    ]
    for name, graph in report["graphs"].items():
        lines.append(f"graph {name} (opset {graph['opset']}, {graph['nodes']} nodes):")
        width = max([len("op"), *(len(op) for op in graph["ops"])])
        lines.append(f"  {'op':<{width}}  {'count':>5}  TRT  note")
        for op, entry in graph["ops"].items():
            mark = "yes" if entry["supported"] else "NO "
            lines.append(f"  {op:<{width}}  {entry['count']:>5}  {mark}  {entry['note']}".rstrip())
    if report["problems"]:
        lines.append("problems:")
        lines.extend(f"  - {problem}" for problem in report["problems"])
    if report.get("warnings"):
        lines.append("warnings:")
        lines.extend(f"  - {warning}" for warning in report["warnings"])
    lines.append("TensorRT compatible: " + ("yes" if report["ok"] else "NO"))
    return "\n".join(lines)


def check_tensorrt_compatible(report: dict) -> None:
    """Raise ``ValueError`` listing every problem of a ``tensorrt_report``."""
    if not report["ok"]:
        raise ValueError(
            "the graphs cannot be parsed by TensorRT's ONNX parser "
            f"({report['source']}):\n" + "\n".join(f"  - {p}" for p in report["problems"])
        )
