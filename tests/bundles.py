"""Toy bundles for the backend, engine and manifest tests: tiny ONNX graphs with the real
graphs' input and output names, dtypes and named axes (T, E, L), a real ``tokenizers`` file and
a manifest written through ``runtime.manifest`` (so it passes the same checks as an exported
one). ``write_bundle`` takes the graphs (what they compute) and sizes; the "numpy toy" below
(``write_numpy_toy``) is one such bundle whose outputs numpy repeats, for checking backends'
results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.manifest import Manifest, TensorSpec

ONNX_TYPES = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64, "uint8": TensorProto.UINT8}
# Where each precision variant of a graph goes in the bundle ("{}" is the graph's name).
VARIANT_FILES = {
    "fp32": "{}.onnx",
    "fp16": "{}.fp16.onnx",
    "int8-tensorrt": "{}.int8-tensorrt.onnx",
}
Specs = tuple[list[TensorSpec], list[TensorSpec]]
TOKENIZER = "tokenizer.json"
# The toy tokenizer's words: ids 0..15, below the numpy toy's embedding rows (VOCAB).
WORDS = ("<pad>", "<unk>", "the", "a", "red", "blue", "green", "small", "big", "circle",
         "square", "triangle", "moving", "left", "right", "above")  # fmt: skip


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


def write_tokenizer(path: Path, max_length: int) -> None:
    """A real Hugging Face ``tokenizers`` file: whitespace words over ``WORDS``, truncated at
    ``max_length`` and padded to the longest expression, as an exported tokenizer is."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=0, pad_token="<pad>")
    tokenizer.save(str(path))


def toy_preprocessing(specs: dict[str, Specs], profiles: dict[str, dict[str, int]]) -> dict:
    """The manifest's preprocessing for a toy bundle: size from the video graph's frames."""
    frames = next(spec for spec in specs["video"][0] if spec.name == "frames")
    return {
        "size": [frames.shape[1], frames.shape[2]],
        "frame_format": "uint8-nhwc",
        "pixel_mean": [0.485, 0.456, 0.406],
        "pixel_std": [0.229, 0.224, 0.225],
        "pixel_scale": 255.0,
        "tokenizer": TOKENIZER,
        "max_text_length": profiles["L"]["max"],
        "pad_token_id": 0,
        "mask_stride": 4,
        "mask_threshold": 0.5,
    }


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
        preprocessing: entries that replace those of :func:`toy_preprocessing`.
    """
    root.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.new(
        root,
        model={"name": "toy", "config": {}},
        preprocessing=toy_preprocessing(specs, profiles) | (preprocessing or {}),
        profiles=profiles,
        opset=opset,
        versions={"onnx": onnx.__version__},
    )
    write_tokenizer(root / TOKENIZER, profiles["L"]["max"])
    manifest.add_file(TOKENIZER, "tokenizer")
    for graph, (inputs, outputs) in specs.items():
        manifest.set_graph(graph, inputs, outputs)
        for precision in precisions:
            relative = VARIANT_FILES[precision].format(graph)
            onnx.save(build(graph, precision), str(root / relative))
            manifest.add_file(relative, "onnx graph")
            manifest.add_variant(graph, precision, {"file": relative, "external_data": []})
    manifest.save()
    return Manifest.load(root)


# -- the numpy toy -------------------------------------------------------------------------

VOCAB, CHANNELS, QUERIES, HEIGHT, WIDTH = 16, 4, 3, 8, 12
PROFILES = {
    "T": {"min": 1, "opt": 2, "max": 4},
    "E": {"min": 1, "opt": 2, "max": 3},
    "L": {"min": 1, "opt": 4, "max": 6},
}
RNG = np.random.default_rng(0)
EMBEDDING = RNG.standard_normal((VOCAB, CHANNELS)).astype(np.float32)
QUERY_WEIGHT = np.array([0.5, -1.0, 2.0], dtype=np.float32)
BOX_WEIGHT = np.array([1.0, -0.5, 0.25, 2.0], dtype=np.float32)

SPECS = graph_specs(HEIGHT, WIDTH, CHANNELS, QUERIES)


def _const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def text_encoder_model():
    """text_features = embedding[input_ids] * attention_mask[..., None]."""
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["embedded"]),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "axis_2"], ["mask3"]),
        helper.make_node("Mul", ["embedded", "mask3"], ["text_features"]),
    ]
    inits = [_const("embedding", EMBEDDING), _const("axis_2", np.array([2], np.int64))]
    return make_model(nodes, "text_encoder", SPECS["text_encoder"], inits, opset=17)


def video_model():
    """Logits from the masked text mean and each frame's brightness; boxes and masks from them."""
    nodes = [
        helper.make_node("Cast", ["frames"], ["frames_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["frames_f", "inv255"], ["pixels"]),
        helper.make_node("ReduceMean", ["pixels"], ["frame_mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("ReduceMean", ["pixels"], ["gray"], axes=[3], keepdims=0),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "axis_2"], ["mask3"]),
        helper.make_node("Mul", ["text_features", "mask3"], ["masked_text"]),
        helper.make_node("ReduceMean", ["masked_text"], ["text_mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Unsqueeze", ["text_mean", "axes_1_2"], ["text_e11"]),
        helper.make_node("Unsqueeze", ["frame_mean", "axes_0_2"], ["frame_1t1"]),
        helper.make_node("Mul", ["frame_1t1", "query_weight"], ["frame_query"]),
        helper.make_node("Add", ["text_e11", "frame_query"], ["pred_logits"]),
        helper.make_node("Unsqueeze", ["pred_logits", "axis_3"], ["logits4"]),
        helper.make_node("Mul", ["logits4", "box_weight"], ["box_raw"]),
        helper.make_node("Sigmoid", ["box_raw"], ["pred_boxes"]),
        helper.make_node("Unsqueeze", ["pred_logits", "axes_3_4"], ["logits5"]),
        helper.make_node("Unsqueeze", ["gray", "axes_0_2"], ["gray5"]),
        helper.make_node("Mul", ["logits5", "gray5"], ["pred_masks"]),
    ]
    inits = [
        _const("inv255", np.array(1 / 255, np.float32)),
        _const("axis_2", np.array([2], np.int64)),
        _const("axis_3", np.array([3], np.int64)),
        _const("axes_1_2", np.array([1, 2], np.int64)),
        _const("axes_0_2", np.array([0, 2], np.int64)),
        _const("axes_3_4", np.array([3, 4], np.int64)),
        _const("query_weight", QUERY_WEIGHT.reshape(1, 1, QUERIES)),
        _const("box_weight", BOX_WEIGHT),
    ]
    return make_model(nodes, "video", SPECS["video"], inits, opset=17)


def text_reference(input_ids, attention_mask):
    return EMBEDDING[input_ids] * attention_mask[..., None].astype(np.float32)


def video_reference(frames, text_features, attention_mask):
    pixels = frames.astype(np.float32) * np.float32(1 / 255)
    frame_mean = pixels.mean(axis=(1, 2, 3))  # (T,)
    gray = pixels.mean(axis=3)  # (T, H, W)
    text_mean = (text_features * attention_mask[..., None]).mean(axis=(1, 2))  # (E,)
    logits = text_mean[:, None, None] + frame_mean[None, :, None] * QUERY_WEIGHT  # (E, T, N)
    boxes = 1 / (1 + np.exp(-(logits[..., None] * BOX_WEIGHT)))
    masks = logits[..., None, None] * gray[None, :, None]
    return {"pred_logits": logits, "pred_boxes": boxes, "pred_masks": masks}


MODELS = {"text_encoder": text_encoder_model, "video": video_model}


def write_numpy_toy(root: Path) -> Manifest:
    """The numpy toy bundle in ``root``: fp32 graphs that :func:`text_reference` and
    :func:`video_reference` repeat."""
    return write_bundle(root, SPECS, lambda graph, _: MODELS[graph](), PROFILES, opset=17)


def text_feeds(expressions=2, tokens=5, seed=1):
    rng = np.random.default_rng(seed)
    mask = np.ones((expressions, tokens), np.int64)
    mask[0, tokens - 2 :] = 0
    return {
        "input_ids": rng.integers(0, VOCAB, (expressions, tokens), dtype=np.int64),
        "attention_mask": mask,
    }


def video_feeds(frames=3, expressions=2, tokens=5, seed=2):
    rng = np.random.default_rng(seed)
    text = text_feeds(expressions, tokens, seed)
    return {
        "frames": rng.integers(0, 256, (frames, HEIGHT, WIDTH, 3), dtype=np.uint8),
        "text_features": rng.standard_normal((expressions, tokens, CHANNELS)).astype(np.float32),
        "attention_mask": text["attention_mask"],
    }
