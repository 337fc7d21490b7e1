"""Toy bundles for the backend and engine tests: tiny ONNX graphs with the real graphs' input
and output names, dtypes and named axes (T, E, L), and a manifest written through
``runtime.manifest``. Each test file supplies its own graphs (what they compute) and sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from runtime.manifest import Manifest, TensorSpec

ONNX_TYPES = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64, "uint8": TensorProto.UINT8}
# Where each precision variant of a graph goes in the bundle ("{}" is the graph's name).
VARIANT_FILES = {
    "fp32": "{}.onnx",
    "fp16": "{}.fp16.onnx",
    "int8-tensorrt": "{}.int8-tensorrt.onnx",
}
Specs = tuple[list[TensorSpec], list[TensorSpec]]


def graph_specs(
    height: int, width: int, channels: int, queries: int, mask_size: tuple[int, int] | None = None
) -> dict[str, Specs]:
    """The inputs and outputs of both graphs, as the real bundle names them.

    Args:
        height, width: the frames' size.
        channels: the text features' width.
        queries: the number of object queries.
        mask_size: the masks' (height, width); default the frames'.
    """
    mask_h, mask_w = mask_size or (height, width)
    text_inputs = [
        TensorSpec("input_ids", "int64", ("E", "L")),
        TensorSpec("attention_mask", "int64", ("E", "L")),
    ]
    text_outputs = [TensorSpec("text_features", "float32", ("E", "L", channels))]
    video_inputs = [
        TensorSpec("frames", "uint8", ("T", height, width, 3)),
        TensorSpec("text_features", "float32", ("E", "L", channels)),
        TensorSpec("attention_mask", "int64", ("E", "L")),
    ]
    video_outputs = [
        TensorSpec("pred_logits", "float32", ("E", "T", queries)),
        TensorSpec("pred_boxes", "float32", ("E", "T", queries, 4)),
        TensorSpec("pred_masks", "float32", ("E", "T", queries, mask_h, mask_w)),
    ]
    return {"text_encoder": (text_inputs, text_outputs), "video": (video_inputs, video_outputs)}


def value_info(spec: TensorSpec) -> onnx.ValueInfoProto:
    """An ONNX graph input or output with the spec's name, dtype and (named) dims."""
    return helper.make_tensor_value_info(spec.name, ONNX_TYPES[spec.dtype], list(spec.shape))


def make_model(
    nodes: list, name: str, specs: Specs, initializers: list, opset: int
) -> onnx.ModelProto:
    """A checked ONNX model (IR version 8) of ``nodes`` with the graph's inputs and outputs."""
    inputs, outputs = specs
    graph = helper.make_graph(
        nodes,
        name,
        [value_info(s) for s in inputs],
        [value_info(s) for s in outputs],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def write_bundle(
    root: Path,
    specs: dict[str, Specs],
    build: Callable[[str, str], onnx.ModelProto],
    profiles: dict[str, dict[str, int]],
    opset: int,
    precisions: Iterable[str] = ("fp32",),
    preprocessing: dict | None = None,
) -> Manifest:
    """Write a bundle directory: each graph's variants and the manifest, loaded back (verified).

    Args:
        root: the bundle directory (created).
        specs: graph -> (inputs, outputs), see :func:`graph_specs`.
        build: ``build(graph, precision)`` -> the variant's ONNX model.
        profiles: the profile ranges of the named axes.
        opset: the opset the manifest records.
        precisions: which variants of every graph.
        preprocessing: the manifest's preprocessing entry.
    """
    root.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.new(
        root,
        model={"name": "toy", "config": {}},
        preprocessing=preprocessing or {},
        profiles=profiles,
        opset=opset,
        versions={"onnx": onnx.__version__},
    )
    for graph, (inputs, outputs) in specs.items():
        manifest.set_graph(graph, inputs, outputs)
        for precision in precisions:
            relative = VARIANT_FILES[precision].format(graph)
            onnx.save(build(graph, precision), str(root / relative))
            manifest.add_file(relative, "onnx graph")
            manifest.add_variant(graph, precision, {"file": relative, "external_data": []})
    manifest.save()
    return Manifest.load(root)
