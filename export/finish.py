"""Finishing an exported ONNX graph, and its FP16 copy.

- ``finish_graph``: onnxslim, the bundle's key facts in ``metadata_props``
  (``graph_metadata``), external data for graphs too big for one protobuf, ``onnx.checker``.
- ``convert_fp16``: an FP16 copy with float32 inputs/outputs and ``FP16_KEEP_FP32`` kept in
  FP32, finished like the FP32 graph.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from runtime.manifest import SCHEMA_VERSION

EXTERNAL_DATA_THRESHOLD = 1 << 30  # bytes of weights above which graphs use external data
PROTOBUF_LIMIT = 2 << 30
EXTERNAL_DATA_MODES = ("auto", "always", "never")
# Kept in FP32 in the FP16 graphs: normalisations, softmax, reductions (their sums overflow or
# lose precision in half), and the sine position encodings (large arguments).
FP16_KEEP_FP32 = (
    "LayerNormalization", "InstanceNormalization", "GroupNormalization", "Softmax",
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "Pow", "Sqrt", "Sin", "Cos", "Range",
    "CumSum", "Erf",
)  # fmt: skip


def graph_metadata(graph: str, precision: str, description: dict, preprocessing: dict,
                   profiles: dict, opset: int) -> dict[str, str]:  # fmt: skip
    """The bundle's key facts, stored in every ONNX file's ``metadata_props``."""
    return {
        "proxyformer.schema_version": SCHEMA_VERSION,
        "proxyformer.graph": graph,
        "proxyformer.precision": precision,
        "proxyformer.preset": description["name"],
        "proxyformer.config": json.dumps(description["config"]),
        "proxyformer.preprocessing": json.dumps(preprocessing),
        "proxyformer.profiles": json.dumps(profiles),
        "proxyformer.opset": str(opset),
    }


def finish_graph(
    source: Path,
    target: Path,
    metadata: dict[str, str],
    external_data: str = "auto",
    slim: bool = True,
    shape_inference: bool = True,
) -> dict:
    """Slim ``source``, stamp ``metadata`` into ``metadata_props``, save as ``target`` (with
    ``target.name + '.data'`` when the weights call for it) and run ``onnx.checker``.
    ``shape_inference=False`` skips onnxslim's shape inference (for a graph that was slimmed
    with it before, as the FP16 copies are).

    Returns the manifest's variant entry: file, external data files, node counts, op types and
    weight bytes.
    """
    import onnx

    model = onnx.load(str(source))
    nodes_before = len(model.graph.node)
    if slim:
        import onnxslim

        model = onnxslim.slim(model, no_shape_infer=not shape_inference)
    for key, value in metadata.items():
        entry = next((p for p in model.metadata_props if p.key == key), None)
        if entry is None:
            entry = model.metadata_props.add()
            entry.key = key
        entry.value = value
    weight_bytes = sum(_initializer_bytes(t) for t in model.graph.initializer)
    use_external = external_data == "always" or (
        external_data == "auto" and weight_bytes > EXTERNAL_DATA_THRESHOLD
    )
    if external_data == "never" and weight_bytes > PROTOBUF_LIMIT - (64 << 20):
        raise ValueError(
            f"{target.name} holds {weight_bytes / 2**30:.2f} GiB of weights, too much for one "
            "protobuf (2 GiB): use external data (--external-data auto or always)"
        )
    data_name = target.name + ".data"
    onnx.save_model(
        model,
        str(target),
        save_as_external_data=use_external,
        all_tensors_to_one_file=True,
        location=data_name,
        size_threshold=1024,
    )
    onnx.checker.check_model(str(target), full_check=True)  # by path: external data resolves
    return {
        "file": target.name,
        "external_data": [data_name] if use_external else [],
        "nodes": len(model.graph.node),
        "nodes_before_slim": nodes_before,
        "op_types": sorted({node.op_type for node in model.graph.node}),
        "weight_bytes": weight_bytes,
    }


def _initializer_bytes(tensor) -> int:
    from onnx import helper

    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def convert_fp16(source: Path, target: Path, metadata: dict[str, str], external_data: str) -> dict:
    """FP16 copy of ``source`` with float32 inputs/outputs and ``FP16_KEEP_FP32`` in FP32
    (onnxruntime's float16 converter with a block list), finished by ``finish_graph``."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(source))
    # The converter logs, at INFO, every node whose initializer FP32 and FP16 nodes share, as a
    # whole protobuf: hundreds of lines of an export's log for a note that asks nothing of us
    # (it stores such an initializer in FP16 and the FP32 nodes read it through a Cast; the
    # FP16 parity check measures what that costs).
    converter_log = logging.getLogger("onnxruntime.transformers.float16")
    level = converter_log.level
    converter_log.setLevel(max(level, logging.WARNING))
    try:
        model = convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP16_KEEP_FP32)),
        )
    finally:
        converter_log.setLevel(level)
    staged = target.with_suffix(".tmp.onnx")
    onnx.save_model(model, str(staged), save_as_external_data=True, location=staged.name + ".data")
    try:
        # onnxslim also restores the topological order the converter's Cast insertion breaks.
        # Its shape inference is skipped: the FP32 graph was slimmed with it, and on
        # paper-swin-t it gave the same 4,614 nodes in 30 s instead of 44.
        entry = finish_graph(
            staged, target, metadata | {"proxyformer.precision": "fp16"}, external_data,
            slim=True, shape_inference=False,
        )  # fmt: skip
    finally:
        staged.unlink(missing_ok=True)
        Path(str(staged) + ".data").unlink(missing_ok=True)
    entry["kept_fp32"] = list(FP16_KEEP_FP32)
    return entry
