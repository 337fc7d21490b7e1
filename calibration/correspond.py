"""Which tensor of ``video.onnx`` each tensor of the split video graph is, so that the ranges
calibrated on the one video graph quantize ``video_encoder`` and ``video_decoder`` too.

The three graphs are exported from the same modules (``export.graphs``), but separately: the
exporter numbers its tensors per graph (``add_63`` in the decoder is ``add_8338`` in the video
graph), and it computes some shapes differently in each (the video graph reads the frame count
off ``frames``, the decoder off ``level2``, and it folds to a constant a ``Reshape`` target that
the video graph computes). So tensors are matched by what computes them, not by name:

- each tensor gets a digest of its node's op, attributes and the digests of its inputs
  (a Merkle hash over the graph), initializers a digest of their contents;
- graph inputs are seeded by name (``frames``, ``text_features``, ``attention_mask``), and the
  decoder's ``level0..3`` by the digests of the encoder's outputs of those names;
- small integer tensors (shapes and the arithmetic on them) are digested by their value where
  it can be worked out from the graph's shape annotations: a ``Shape`` of a tensor is its
  symbolic dims (``["T", 256, 96, 160]``), whichever tensor it was read from; a ``Reshape``
  target with one entry that is not a fixed size (``"E*T"``, ``-1`` or unknown) is that entry
  as ``-1``, which is what it resolves to.

Equal digests are equal values (the same ops on equal inputs), so a part's tensor and the video
graph's tensor of its digest have the same range on the same clips: the translation is exact,
not an approximation. A tensor the video graph has no digest for is refused by name
(``translate_ranges``), never given another's range. ``tests/test_calibration_split.py``
checks the translated ranges against ranges collected on the split graphs themselves.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

import onnx
from onnx import helper, numpy_helper

_INTEGER = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}
# Dims that onnx's shape inference invents for what it cannot resolve: not comparable between
# graphs (each numbers its own).
_INVENTED_DIM = re.compile(r"_o\d+__d\d+$|^unk__")
_SMALL = 16  # integer initializers up to this many entries are evaluated as values
_NONE = b"-"  # the digest of an omitted optional input

Value = tuple  # the entries of a small integer tensor: int, a symbolic dim (str) or None
_ARITHMETIC = {"Mul": lambda a, b: a * b, "Add": lambda a, b: a + b,
               "Sub": lambda a, b: a - b, "Div": lambda a, b: a // b,
               "Mod": lambda a, b: a % b}  # fmt: skip


def _digest(*parts) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(part if isinstance(part, bytes) else repr(part).encode())
        digest.update(b"\x00")
    return digest.digest()


def _dims(info) -> list | None:
    """A tensor's dims from its annotation: ints, symbolic names, None where invented."""
    if not info.type.tensor_type.HasField("shape"):
        return None
    dims = []
    for dim in info.type.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        elif dim.dim_param and not _INVENTED_DIM.search(dim.dim_param):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return dims


def _attribute(node, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _known(value: Value | None) -> bool:
    return value is not None and all(isinstance(entry, (int, str)) for entry in value)


def _evaluate(node, values: dict[str, Value], annotations: dict) -> Value | None:
    """The entries of ``node``'s first output when it is a small integer tensor that the
    shape annotations and the constants determine (entries may be None: unknown)."""
    op = node.op_type
    inputs = [values.get(name) if name else None for name in node.input]
    if op == "Shape":
        info = annotations.get(node.input[0])
        dims = _dims(info) if info is not None else None
        if dims is None:
            return None
        return tuple(dims[_attribute(node, "start", 0) : _attribute(node, "end", None)])
    if op == "Constant":
        tensor = _attribute(node, "value")
        if isinstance(tensor, onnx.TensorProto) and tensor.data_type in _INTEGER:
            array = numpy_helper.to_array(tensor)
            if array.ndim <= 1 and array.size <= _SMALL:
                return tuple(int(x) for x in array.ravel())
        return None
    if op in ("Cast", "Identity", "Unsqueeze", "Squeeze"):
        return inputs[0]
    if op == "Concat" and inputs and all(value is not None for value in inputs):
        return tuple(entry for value in inputs for entry in value)
    if op == "Gather" and inputs[0] is not None and _known(inputs[1]):
        if all(isinstance(i, int) and -len(inputs[0]) <= i < len(inputs[0]) for i in inputs[1]):
            return tuple(inputs[0][i] for i in inputs[1])
        return None
    if op == "Slice" and inputs[0] is not None and all(_known(v) for v in inputs[1:3]):
        if len(inputs) > 3 and inputs[3] is not None and inputs[3] not in ((0,), (-1,)):
            return None  # a 1-D value has one axis
        step = inputs[4][0] if len(inputs) > 4 and _known(inputs[4]) else 1
        start, end = inputs[1][0], inputs[2][0]
        if all(isinstance(x, int) for x in (start, end, step)):
            return tuple(inputs[0][start:end:step])
        return None
    if op in _ARITHMETIC and len(inputs) == 2 and all(v is not None for v in inputs):
        a, b = inputs
        size = max(len(a), len(b))
        if len(a) not in (1, size) or len(b) not in (1, size):
            return None
        a, b = (v * size if len(v) == 1 else v for v in (a, b))
        return tuple(
            _ARITHMETIC[op](x, y) if isinstance(x, int) and isinstance(y, int) and (
                op not in ("Div", "Mod") or y != 0) else None
            for x, y in zip(a, b)
        )  # fmt: skip
    return None


def tensor_digests(model: onnx.ModelProto, root: str | Path,
                   seeds: dict[str, bytes] | None = None) -> dict[str, bytes]:  # fmt: skip
    """Every tensor of ``model`` (nodes in topological order, as exported) by its digest.

    Args:
        model: the graph, loaded without its external data.
        root: the folder its external data is in (initializers are digested by content).
        seeds: digests for graph inputs; the other inputs are seeded by their names.
    """
    graph = model.graph
    annotations = {v.name: v for v in [*graph.value_info, *graph.input, *graph.output]}
    digests: dict[str, bytes] = {"": _NONE}
    values: dict[str, Value] = {}
    for tensor in graph.initializer:
        array = numpy_helper.to_array(tensor, base_dir=str(root))
        if tensor.data_type in _INTEGER and array.ndim <= 1 and array.size <= _SMALL:
            values[tensor.name] = tuple(int(x) for x in array.ravel())
        content = hashlib.blake2b(array.tobytes(), digest_size=16).digest()
        digests[tensor.name] = _digest("constant", str(array.dtype), array.shape, content)
    for graph_input in graph.input:
        if graph_input.name not in digests:
            digests[graph_input.name] = (seeds or {}).get(graph_input.name) or _digest(
                "input", graph_input.name
            )

    def operand(name: str, reshape_target: bool) -> bytes:
        value = values.get(name)
        if value is not None and reshape_target:
            # One entry that is not a fixed size (-1, symbolic, unknown) is what Reshape
            # infers from the element count, however the graph wrote it ("E*T" or -1).
            unknown = [i for i, e in enumerate(value) if not isinstance(e, int) or e < 0]
            if len(unknown) == 1:
                value = tuple(-1 if i == unknown[0] else e for i, e in enumerate(value))
        return _digest("value", value) if _known(value) else digests[name]

    for node in graph.node:
        value = _evaluate(node, values, annotations)
        if value is not None:
            values[node.output[0]] = value
            if _known(value):
                digests[node.output[0]] = _digest("value", value)
                continue
        attributes = sorted((a.name, a.SerializeToString()) for a in node.attribute)
        operands = tuple(
            operand(name, node.op_type == "Reshape" and index == 1) if name else _NONE
            for index, name in enumerate(node.input)
        )
        base = _digest(node.domain, node.op_type, attributes, operands)
        for index, name in enumerate(node.output):
            digests[name] = _digest(base, index)
    return digests


def split_correspondence(
    whole: onnx.ModelProto, encoder: onnx.ModelProto, decoder: onnx.ModelProto, root: str | Path
) -> dict[str, dict[str, str]]:
    """For ``video_encoder`` and ``video_decoder``: each of its tensors -> the video graph's
    tensor of the same value (those the video graph has; the others are left out)."""
    # One video-graph tensor per digest: equal digests are equal values, so any stands for
    # the others.
    lookup: dict[bytes, str] = {}
    for name, digest in tensor_digests(whole, root).items():
        if name:
            lookup.setdefault(digest, name)
    encoder_digests = tensor_digests(encoder, root)
    seeds = {output.name: encoder_digests[output.name] for output in encoder.graph.output}
    decoder_digests = tensor_digests(decoder, root, seeds)
    result = {}
    for graph, digests in (("video_encoder", encoder_digests), ("video_decoder", decoder_digests)):
        result[graph] = {
            name: lookup[digest] for name, digest in digests.items()
            if name and digest in lookup
        }  # fmt: skip
    return result


def node_names(part: onnx.ModelProto, whole: onnx.ModelProto, tensors: dict[str, str],
               names: Iterable[str]) -> list[str]:  # fmt: skip
    """The part's nodes that are the video graph's nodes ``names`` (matched by their first
    output), for a list of nodes left in float made on the video graph."""
    wanted = set(names)
    whole_outputs = {node.output[0]: node.name for node in whole.graph.node if node.output}
    return [
        node.name for node in part.graph.node
        if node.output and whole_outputs.get(tensors.get(node.output[0], "")) in wanted
    ]  # fmt: skip


def translate_ranges(source: Path, target: Path, tensors: dict[str, str],
                     needed: Iterable[str], graph: str) -> int:  # fmt: skip
    """Write the range cache ``target`` for a part of the video graph: the range of each of
    its ``needed`` tensors (those its quantizer looks up) is that of the video graph's tensor
    of the same value in ``source``. Returns how many were written.

    Raises:
        ValueError: a needed tensor has no counterpart in the video graph, or its counterpart
            has no range in ``source`` (named, with how many more).
    """
    from onnxruntime.quantization.calibrate import TensorsData, load_tensors_data, save_tensors_data

    ranges = load_tensors_data(source)
    needed = sorted(needed)
    unmatched = [name for name in needed if name not in tensors]
    unranged = [name for name in needed if name in tensors and tensors[name] not in ranges.data]
    for problem, names in (
        ("has no tensor of the same value in the video graph", unmatched),
        (f"matches a video-graph tensor with no range in {source}", unranged),
    ):
        if names:
            more = f" (and {len(names) - 3} more)" if len(names) > 3 else ""
            raise ValueError(
                f"{graph}: tensor(s) {names[:3]}{more} {problem}; the split graphs must be "
                "exported with the video graph from one model (export/to_onnx.py --split)"
            )  # fmt: skip
    part = TensorsData(ranges.calibration_method,
                       {name: ranges.data[tensors[name]] for name in needed})  # fmt: skip
    target.parent.mkdir(parents=True, exist_ok=True)
    save_tensors_data(part, target)
    return len(needed)
