"""Which ONNX operators the TensorRT ONNX parser reads, and a report of a bundle's graphs.

The operator table is data: ``export/tensorrt_ops.json`` (shipped as package data), taken from
``docs/operators.md`` of the ONNX-TensorRT parser (github.com/onnx/onnx-tensorrt), the revision
that opens "TensorRT 10.15 supports operators in the inclusive range of opset 9 to opset 24";
its ``source`` and ``notes`` fields say where each fact comes from. This module loads and
checks that file and walks graphs against it.

What the checker does beyond looking ops up:
- The opset range check uses the table's 9..24 and warns above 20 (TensorRT 10.0's parser
  stops there).
- An ellipsis in an ``Einsum`` equation is only a warning (the 8.x parsers refused it; 10.15
  lists no restriction).
- A node outside the standard domain ("" or "ai.onnx") is a custom op: the parser needs a
  plugin for it, so it counts as unsupported. Calls of the model's local functions are expanded
  (the parser inlines local functions); subgraphs of If/Loop/Scan are walked.
- Attribute-level restrictions (Resize modes, TopK ``sorted``, Q/DQ zero points, constant
  reduction axes, ...) are checked per node.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

TABLE_NAME = "tensorrt_ops.json"
_TABLE_KEYS = (
    "source", "tensorrt_version", "opset_range", "opset_range_tensorrt_10_0", "standard_domains",
    "supported", "unsupported", "resize_coordinate_transformation_modes", "resize_modes",
    "resize_nearest_modes", "axes_initializer_ops",
)  # fmt: skip


def load_table(path: str | Path | None = None) -> dict:
    """The operator table (``export/tensorrt_ops.json`` by default), checked for shape.

    Raises ``ValueError`` naming the file and the field that is missing or malformed.
    """
    if path is None:
        text = resources.files("export").joinpath(TABLE_NAME).read_text(encoding="utf-8")
        where = f"export/{TABLE_NAME}"
    else:
        text, where = Path(path).read_text(encoding="utf-8"), str(path)
    table = json.loads(text)
    missing = [key for key in _TABLE_KEYS if key not in table]
    if missing:
        raise ValueError(f"{where}: missing fields {missing}")
    for op, entry in table["supported"].items():
        if not isinstance(entry, dict) or set(entry) != {"types", "note"}:
            raise ValueError(f"{where}: supported[{op!r}] must be {{types, note}}, got {entry!r}")
    both = sorted(set(table["supported"]) & set(table["unsupported"]))
    if both:
        raise ValueError(f"{where}: ops listed as supported and unsupported: {both}")
    unknown = sorted(set(table["axes_initializer_ops"]) - set(table["supported"]))
    if unknown:
        raise ValueError(f"{where}: axes_initializer_ops not in supported: {unknown}")
    return table


_TABLE = load_table()
SOURCE: str = _TABLE["source"]
TABLE_TENSORRT_VERSION: str = _TABLE["tensorrt_version"]
OPSET_RANGE: tuple[int, int] = tuple(_TABLE["opset_range"])  # inclusive
OPSET_RANGE_TENSORRT_10_0: tuple[int, int] = tuple(_TABLE["opset_range_tensorrt_10_0"])
STANDARD_DOMAINS: tuple[str, ...] = tuple(_TABLE["standard_domains"])
# op type -> (supported Types column, restriction note)
SUPPORTED: dict[str, tuple[str, str]] = {
    op: (entry["types"], entry["note"]) for op, entry in _TABLE["supported"].items()
}
UNSUPPORTED: dict[str, str] = dict(_TABLE["unsupported"])
_RESIZE_COORDINATE_MODES = frozenset(_TABLE["resize_coordinate_transformation_modes"])
_RESIZE_MODES = frozenset(_TABLE["resize_modes"])
_RESIZE_NEAREST_MODES = frozenset(_TABLE["resize_nearest_modes"])
_REDUCE_OPS = frozenset(_TABLE["axes_initializer_ops"])


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
