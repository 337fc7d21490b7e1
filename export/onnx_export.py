"""Checkpoint -> ONNX bundle: ``export_bundle(checkpoint, out_dir, ...)``.

One function per step, called in this order by ``export_bundle``:

1. ``load_model``: the checkpoint (or a preset with random weights) and its tokenizer.
2. ``export_graph``: ``torch.onnx.export`` (the dynamo exporter) of ``TextGraph`` and
   ``VideoGraph`` with named dynamic axes T, E, L bounded by the profile ranges.
3. ``finish_graph``: onnxslim, the bundle's key facts in ``metadata_props``, external data
   for graphs too big for one protobuf, ``onnx.checker``.
4. ``check_parity``: ONNX Runtime (CPU) against PyTorch eager at two (T, E, L) combinations
   the export did not use; above tolerance export fails and no bundle is written.
5. ``convert_fp16`` (``--precision fp16``): an FP16 copy of each graph with LayerNorm, Softmax,
   reductions and position encodings kept in FP32, and its parity against the FP32 graph.
6. The TensorRT compatibility report of every graph (``export.tensorrt_ops``), printed and
   stored as ``tensorrt_report.json``.
7. The manifest (``runtime.manifest``) with the sha256 of every file.

Everything is written into a staging directory that replaces ``out_dir`` at the end, so a
failed export never leaves a half-written bundle behind.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from proxyformer.checkpoint import TOKENIZER_NAME, WEIGHTS_NAME, load_checkpoint, read_config
from proxyformer.config import ProxyFormerConfig, get_preset
from proxyformer.model import ProxyFormer, build_proxyformer
from proxyformer.text import configure_tokenizer, load_tokenizer
from runtime.manifest import SCHEMA_VERSION, Manifest, TensorSpec, installed_versions, sha256_file

from .graphs import FRAME_FORMATS, TextGraph, VideoGraph
from .parity import FP16_TOLERANCE, FP32_TOLERANCE, ParityError, Tolerance, compare, failures

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18  # opset 23's Attention op is avoided: TensorRT 10 parses SDPA as MatMul/Softmax
EXTERNAL_DATA_THRESHOLD = 1 << 30  # bytes of weights above which graphs use external data
PROTOBUF_LIMIT = 2 << 30
# Kept in FP32 in the FP16 graphs: normalisations, softmax, reductions (their sums overflow or
# lose precision in half), and the sine position encodings (large arguments).
FP16_KEEP_FP32 = (
    "LayerNormalization", "InstanceNormalization", "GroupNormalization", "Softmax",
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "Pow", "Sqrt", "Sin", "Cos", "Range",
    "CumSum", "Erf",
)  # fmt: skip
PARITY_TEXTS = (
    "the small red circle moving left",
    "the square above the green triangle",
    "the big blue diamond that stays still",
)


@dataclass(frozen=True)
class Profile:
    """min/opt/max of one dynamic axis."""

    min: int
    opt: int
    max: int

    @classmethod
    def parse(cls, text: str | tuple | Profile, what: str) -> Profile:
        if isinstance(text, Profile):
            return text
        parts = [int(p) for p in text.split(":")] if isinstance(text, str) else list(text)
        if len(parts) == 1:
            parts = parts * 3
        if len(parts) != 3 or not 1 <= parts[0] <= parts[1] <= parts[2]:
            raise ValueError(
                f"{what} must be MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, got {text!r}"
            )
        return cls(*parts)

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


# -- 1. model ------------------------------------------------------------------------------


def load_model(
    checkpoint: str | Path | None, preset: str | None, max_text_len: int, seed: int = 0
) -> tuple[ProxyFormer, object, dict]:
    """The model in eval mode, its tokenizer truncating at ``max_text_len``, and a description."""
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not (checkpoint / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{checkpoint / WEIGHTS_NAME} not found: not a checkpoint")
        config = read_config(checkpoint)
        if preset is not None and preset != config.name:
            raise ValueError(f"checkpoint {checkpoint} is preset {config.name!r}, not {preset!r}")
        model = load_checkpoint(checkpoint)
        tokenizer_file = checkpoint / TOKENIZER_NAME
        tokenizer = load_tokenizer(config, tokenizer_file if tokenizer_file.is_file() else None)
        source = {
            "checkpoint": str(checkpoint),
            "weights_sha256": sha256_file(checkpoint / WEIGHTS_NAME),
        }
    elif preset is not None:
        torch.manual_seed(seed)
        config = get_preset(preset)
        model = build_proxyformer(config).eval()
        tokenizer = load_tokenizer(config)
        source = {"checkpoint": None, "random_weights_seed": seed}
        log.warning("exporting preset %s with random weights (no --checkpoint)", preset)
    else:
        raise ValueError("give a checkpoint directory or a preset name")
    if not 1 <= max_text_len <= model.config.text.max_length:
        raise ValueError(
            f"max text length must be in [1, {model.config.text.max_length}] for preset "
            f"{model.config.name}, got {max_text_len}"
        )
    configure_tokenizer(tokenizer, max_text_len)
    description = {
        "name": model.config.name,
        "config": model.config.to_dict(),
        "parameters": model.num_parameters(),
        "hidden_dim": model.config.hidden_dim,
        "num_queries": model.config.num_queries,
        **source,
    }
    return model.eval(), tokenizer, description


def bundle_model(manifest: Manifest, device: str | torch.device = "cpu") -> ProxyFormer:
    """The PyTorch model a bundle was exported from, in eval mode: its checkpoint (the path
    recorded in the manifest, then relative to the bundle) or, for a random-weight export, the
    recorded config with the recorded seed. A recorded checkpoint that is gone raises."""
    entry = manifest.data["model"]
    checkpoint = entry.get("checkpoint")
    if checkpoint:
        for candidate in (Path(checkpoint), manifest.root / checkpoint):
            if (candidate / WEIGHTS_NAME).is_file():
                return load_checkpoint(candidate, device=device)
        raise FileNotFoundError(
            f"checkpoint {checkpoint} recorded in {manifest.root / 'manifest.json'} not found"
        )
    torch.manual_seed(int(entry.get("random_weights_seed") or 0))
    return build_proxyformer(ProxyFormerConfig.from_dict(entry["config"])).to(device).eval()


# -- 2. torch.onnx.export ------------------------------------------------------------------


def graph_specs(
    model: ProxyFormer, size: tuple[int, int], frame_format: str
) -> dict[str, tuple[list[TensorSpec], list[TensorSpec]]]:
    """Inputs and outputs of both graphs, with the named dynamic axes."""
    height, width = size
    dim, queries = model.config.hidden_dim, model.config.num_queries
    frames = (
        TensorSpec("frames", "uint8", ("T", height, width, 3))
        if frame_format == "uint8-nhwc"
        else TensorSpec("frames", "float32", ("T", 3, height, width))
    )
    mask_h, mask_w = math.ceil(height / 4), math.ceil(width / 4)
    text_features = TensorSpec("text_features", "float32", ("E", "L", dim))
    attention_mask = TensorSpec("attention_mask", "int64", ("E", "L"))
    return {
        "text_encoder": (
            [TensorSpec("input_ids", "int64", ("E", "L")), attention_mask],
            [text_features],
        ),
        "video": (
            [frames, text_features, attention_mask],
            [
                TensorSpec("pred_logits", "float32", ("E", "T", queries)),
                TensorSpec("pred_boxes", "float32", ("E", "T", queries, 4)),
                TensorSpec("pred_masks", "float32", ("E", "T", queries, mask_h, mask_w)),
            ],
        ),
    }


def make_inputs(
    specs: list[TensorSpec],
    sizes: dict[str, int],
    tokenizer,
    model: ProxyFormer,
    seed: int,
) -> dict[str, np.ndarray]:
    """Inputs of one graph at concrete axis sizes: random frames, real tokenized expressions
    padded or cut to L (the first one padded when E > 1, so masking is exercised)."""
    rng = np.random.default_rng(seed)
    expressions, length = sizes["E"], sizes["L"]
    texts = [PARITY_TEXTS[i % len(PARITY_TEXTS)] for i in range(expressions)]
    ids = np.full((expressions, length), 1, dtype=np.int64)  # RoBERTa <pad> = 1
    mask = np.zeros((expressions, length), dtype=np.int64)
    for row, encoding in enumerate(tokenizer.encode_batch(texts)):
        tokens = encoding.ids[:length]
        if row == 0 and expressions > 1 and length > 2:
            tokens = tokens[: max(2, length // 2)]
        ids[row, : len(tokens)], mask[row, : len(tokens)] = tokens, 1
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = tuple(d if isinstance(d, int) else sizes[d] for d in spec.shape)
        if spec.name == "frames":
            if spec.dtype == "uint8":
                feeds[spec.name] = rng.integers(0, 256, shape, dtype=np.uint8)
            else:
                feeds[spec.name] = rng.standard_normal(shape).astype(np.float32)
        elif spec.name == "input_ids":
            feeds[spec.name] = ids
        elif spec.name == "attention_mask":
            feeds[spec.name] = mask
        elif spec.name == "text_features":
            with torch.no_grad():
                feats = model.encode_text(torch.from_numpy(ids), torch.from_numpy(mask))
            feeds[spec.name] = feats.numpy()
        else:
            raise KeyError(f"no dummy input for {spec.name}")
    return feeds


def run_torch(
    module: torch.nn.Module, feeds: dict[str, np.ndarray], names
) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = module(*(torch.from_numpy(feeds[k]) for k in feeds))
    out = out if isinstance(out, tuple) else (out,)
    return {name: tensor.numpy() for name, tensor in zip(names, out)}


def export_graph(
    module: torch.nn.Module,
    feeds: dict[str, np.ndarray],
    specs: tuple[list[TensorSpec], list[TensorSpec]],
    profiles: dict[str, Profile],
    path: Path,
    opset: int,
) -> None:
    """``torch.onnx.export`` with the dynamo exporter and bounded dynamic axes.

    An axis whose profile has MIN = MAX is exported static. Afterwards every input axis that
    should be dynamic is checked in the graph: the exporter can specialise an axis the model
    branches on (Video-Swin adapts its temporal window when T <= the window's T) and that
    would otherwise surface only as a shape error at run time.
    """
    inputs, outputs = specs
    dims = {
        axis: torch.export.Dim(axis, min=profile.min, max=profile.max)
        for axis, profile in profiles.items()
        if profile.min < profile.max
    }
    dynamic_shapes = {
        spec.name: {i: dims[d] for i, d in enumerate(spec.shape) if d in dims} for spec in inputs
    }
    started = time.perf_counter()
    with warnings.catch_warnings():
        # Two inputs sharing an axis (E, L) make the exporter say it reuses the name: benign.
        warnings.filterwarnings("ignore", message=".*will not be used, since it shares")
        _export(module, feeds, inputs, outputs, path, opset, dynamic_shapes)
    log.info("exported %s in %.1f s", path.name, time.perf_counter() - started)
    check_dynamic_axes(path, inputs, dims)


def check_dynamic_axes(path: Path, inputs: list[TensorSpec], dims: dict) -> None:
    """Raise when an input axis meant to be dynamic came out of the exporter as a constant."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    for value in graph.input:
        spec = next((s for s in inputs if s.name == value.name), None)
        if spec is None:
            continue
        for index, (axis, dim) in enumerate(zip(spec.shape, value.type.tensor_type.shape.dim)):
            if axis in dims and not dim.dim_param:
                hint = (
                    " Video-Swin shrinks its temporal window when T <= the window's T (8), so "
                    "its graphs need --frames with MIN >= 9, or a static T (MIN = OPT = MAX)."
                    if axis == "T"
                    else ""
                )
                raise ValueError(
                    f"the exporter fixed axis {axis} of input {value.name!r} (dim {index}) to "
                    f"{dim.dim_value}: the model's code branches on it within the profile "
                    f"{dims[axis].min}..{dims[axis].max}.{hint}"
                )


def _export(module, feeds, inputs, outputs, path, opset, dynamic_shapes) -> None:
    torch.onnx.export(
        module,
        tuple(torch.from_numpy(feeds[spec.name]) for spec in inputs),
        str(path),
        input_names=[spec.name for spec in inputs],
        output_names=[spec.name for spec in outputs],
        opset_version=opset,
        dynamo=True,
        dynamic_shapes=dynamic_shapes,
        external_data=True,  # weights beside the graph; finish_graph decides the final layout
        verbose=False,
    )


# -- 3. slim, metadata, external data, checker ---------------------------------------------


def finish_graph(
    source: Path,
    target: Path,
    metadata: dict[str, str],
    external_data: str = "auto",
    slim: bool = True,
) -> dict:
    """Slim ``source``, stamp ``metadata`` into ``metadata_props``, save as ``target`` (with
    ``target.name + '.data'`` when the weights call for it) and run ``onnx.checker``."""
    import onnx

    model = onnx.load(str(source))
    nodes_before = len(model.graph.node)
    if slim:
        import onnxslim

        model = onnxslim.slim(model)
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


# -- 4. parity ----------------------------------------------------------------------------


def ort_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    # No arena: parity runs large shapes once per session, and an arena keeps its peak
    # (tens of GB for Video-Swin at 360x640 x 20 frames x 3 expressions) until the end.
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_ort_file(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run one ONNX file once and release its session before returning."""
    session = ort_session(path)
    try:
        return run_ort(session, feeds)
    finally:
        del session
        gc.collect()


def run_ort(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def parity_cases(profiles: dict[str, Profile], export_sizes: dict[str, int]) -> list[dict]:
    """Two (T, E, L) combinations inside the profiles, each different from the export's."""
    t, e, length = profiles["T"], profiles["E"], profiles["L"]
    small = {"T": t.min, "E": e.min, "L": max(length.min, min(5, length.max))}
    large = {"T": min(t.max, t.opt + 1), "E": min(e.max, 3), "L": length.max}
    cases = []
    for case in (small, large):
        if case != export_sizes and case not in cases:
            cases.append(case)
    return cases


def check_parity(
    graphs: dict[str, torch.nn.Module],
    files: dict[str, Path],
    specs: dict,
    cases: list[dict],
    tokenizer,
    model: ProxyFormer,
    tolerance: Tolerance,
    reference: str = "pytorch",
    reference_files: dict[str, Path] | None = None,
) -> dict:
    """Run every graph in ONNX Runtime at each case against PyTorch eager (or against other
    ONNX files, for the FP16 graphs); raise ``ParityError`` above tolerance."""
    results = {name: [] for name in files}
    for index, sizes in enumerate(cases):
        for name, path in files.items():
            inputs, outputs = specs[name]
            feeds = make_inputs(inputs, sizes, tokenizer, model, seed=100 + index)
            if reference_files is None:
                ref = run_torch(graphs[name], feeds, [o.name for o in outputs])
            else:
                ref = run_ort_file(reference_files[name], feeds)
            got = run_ort_file(path, feeds)
            report = compare(got, ref, tolerance)
            results[name].append({"sizes": sizes, "outputs": report})
            log.info(
                "parity %s %s vs %s: %s", path.name, sizes, reference,
                ", ".join(f"{k} {v['max_abs_error']:.2e}" for k, v in report.items()),
            )  # fmt: skip
            bad = failures(report)
            if bad:
                stat = f" (its {tolerance.quantile} quantile)" if tolerance.quantile < 1 else ""
                raise ParityError(
                    f"{path.name} disagrees with {reference} at T={sizes['T']}, E={sizes['E']}, "
                    f"L={sizes['L']}: |error|{stat} beyond atol {tolerance.atol} + rtol "
                    f"{tolerance.rtol} x max: " + "; ".join(bad)
                )

    def worst(cases_: list[dict], key: str) -> dict[str, float]:
        return {out: max(c["outputs"][out][key] for c in cases_) for out in cases_[0]["outputs"]}

    summary = {}
    for name, cases_ in results.items():
        summary[name] = {
            "reference": reference, "tolerance": tolerance.to_dict(), "cases": cases_,
            "max_abs_error": worst(cases_, "max_abs_error"),
        }  # fmt: skip
        if tolerance.quantile < 1:
            summary[name]["quantile_abs_error"] = worst(cases_, "quantile_abs_error")
    return summary


# -- 5. FP16 ------------------------------------------------------------------------------


def convert_fp16(source: Path, target: Path, metadata: dict[str, str], external_data: str) -> dict:
    """FP16 copy of ``source`` with float32 inputs/outputs and ``FP16_KEEP_FP32`` in FP32
    (onnxruntime's float16 converter with a block list)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(source))
    model = convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP16_KEEP_FP32)),
    )
    staged = target.with_suffix(".tmp.onnx")
    onnx.save_model(model, str(staged), save_as_external_data=True, location=staged.name + ".data")
    try:
        # onnxslim also restores the topological order the converter's Cast insertion breaks.
        entry = finish_graph(
            staged, target, metadata | {"proxyformer.precision": "fp16"}, external_data, slim=True
        )
    finally:
        staged.unlink(missing_ok=True)
        Path(str(staged) + ".data").unlink(missing_ok=True)
    entry["kept_fp32"] = list(FP16_KEEP_FP32)
    return entry


# -- 6./7. the bundle ----------------------------------------------------------------------


def package_versions() -> dict[str, str]:
    return installed_versions(
        (
            "proxyformer",
            "torch",
            "onnx",
            "onnxruntime",
            "onnxslim",
            "transformers",
            "tokenizers",
            "numpy",
        )
    )


def export_bundle(
    checkpoint: str | Path | None,
    out_dir: str | Path,
    *,
    preset: str | None = None,
    size: tuple[int, int] = (360, 640),
    frames: str | tuple | Profile = "1:8:36",
    expressions: str | tuple | Profile = "1:1:8",
    max_text_len: int = 32,
    opset: int = DEFAULT_OPSET,
    frame_format: str = "uint8-nhwc",
    precisions: tuple[str, ...] = ("fp32",),
    external_data: str = "auto",
    slim: bool = True,
    parity: bool = True,
    fp32_tolerance: Tolerance = FP32_TOLERANCE,
    fp16_tolerance: Tolerance = FP16_TOLERANCE,
    overwrite: bool = False,
    seed: int = 0,
) -> Manifest:
    """Export a checkpoint (or a preset with random weights) to a bundle directory.

    Args:
        checkpoint: a checkpoint directory (model.safetensors + config.json [+ tokenizer.json]).
        out_dir: the bundle directory; it must not exist unless ``overwrite``.
        preset: without a checkpoint, build this preset with random weights (seeded).
        size: (H, W) the frames are resized to; fixed in the graphs.
        frames, expressions: MIN:OPT:MAX of T and E (dynamic axes and engine profiles).
        max_text_len: the tokenizer truncates here; L's profile is 1:min(16, max):max.
        opset: ONNX opset (17 to 22; default 18).
        frame_format: "uint8-nhwc" (decoded RGB frames, normalised in the graph) or
            "float-nchw" (normalised float frames).
        precisions: "fp32" always; add "fp16" for FP16 copies of both graphs.
        external_data: "auto" (weights above 1 GiB go to a .data file), "always", "never".
        slim: simplify with onnxslim.
        parity: compare ONNX Runtime with PyTorch at two unseen (T, E, L); fail above tolerance.
    Returns:
        The bundle's ``Manifest`` (already saved).
    """
    import onnx

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
    if frame_format not in FRAME_FORMATS:
        raise ValueError(f"frame format must be one of {FRAME_FORMATS}, got {frame_format!r}")
    unknown = set(precisions) - {"fp32", "fp16"}
    if unknown:
        raise ValueError(
            f"precisions {sorted(unknown)} are not exported here; fp32 and fp16 are "
            "(INT8 comes from calibration/calibrate.py)"
        )
    if not 17 <= opset <= 22:
        raise ValueError(f"opset must be in [17, 22] (TensorRT 10 parses up to 22), got {opset}")
    height, width = size
    if height < 32 or width < 32:
        raise ValueError(f"size must be at least 32x32, got {height}x{width}")
    profiles = {
        "T": Profile.parse(frames, "frames"),
        "E": Profile.parse(expressions, "expressions"),
    }
    profiles["L"] = Profile(1, min(16, max_text_len), max_text_len)

    model, tokenizer, description = load_model(checkpoint, preset, max_text_len, seed)
    specs = graph_specs(model, size, frame_format)
    modules = {
        "text_encoder": TextGraph(model).eval(),
        "video": VideoGraph(model, frame_format).eval(),
    }

    preprocessing = {
        "size": [height, width],
        "frame_format": frame_format,
        "color": "RGB",
        "resize": "bilinear to exactly (H, W); masks are resized back to the video's size",
        "pixel_mean": list(model.config.pixel_mean),
        "pixel_std": list(model.config.pixel_std),
        "pixel_scale": 255.0,
        "normalised_in_graph": frame_format == "uint8-nhwc",
        "tokenizer": TOKENIZER_NAME,
        "max_text_length": max_text_len,
        "pad_token_id": 1,
        "mask_stride": 4,
        "mask_threshold": 0.5,
        "query_selection": "mean sigmoid(pred_logits) over frames, best query per expression",
    }
    manifest_profiles = {axis: p.to_dict() for axis, p in profiles.items()}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    work = Path(tempfile.mkdtemp(prefix="proxyformer-export-"))
    try:
        manifest = Manifest.new(
            staging, description, preprocessing, manifest_profiles, opset, package_versions()
        )
        tokenizer.save(str(staging / TOKENIZER_NAME))
        manifest.add_file(TOKENIZER_NAME, "tokenizer")

        # Export at sizes that differ per axis (no 0/1 specialisation, no accidental equality).
        export_sizes = _export_sizes(profiles)
        files = {}
        for name, module in modules.items():
            inputs, outputs = specs[name]
            manifest.set_graph(name, inputs, outputs)
            feeds = make_inputs(inputs, export_sizes, tokenizer, model, seed=seed)
            raw = work / f"{name}.onnx"
            export_graph(module, feeds, specs[name], profiles, raw, opset)
            metadata = _metadata(name, "fp32", description, preprocessing, manifest_profiles, opset)
            entry = finish_graph(raw, staging / f"{name}.onnx", metadata, external_data, slim)
            files[name] = staging / entry["file"]
            manifest.add_variant(name, "fp32", entry)
        log.info("exported at T=%(T)d E=%(E)d L=%(L)d", export_sizes)

        cases = parity_cases(profiles, export_sizes)
        if parity:
            results = check_parity(modules, files, specs, cases, tokenizer, model, fp32_tolerance)
            for name, result in results.items():
                manifest.data["graphs"][name]["variants"]["fp32"]["parity"] = result
        if "fp16" in precisions:
            fp16_files = {}
            for name in modules:
                metadata = _metadata(
                    name, "fp16", description, preprocessing, manifest_profiles, opset
                )
                entry = convert_fp16(
                    files[name], staging / f"{name}.fp16.onnx", metadata, external_data
                )
                fp16_files[name] = staging / entry["file"]
                manifest.add_variant(name, "fp16", entry)
            if parity:
                results = check_parity(
                    modules, fp16_files, specs, cases, tokenizer, model, fp16_tolerance,
                    reference="onnxruntime fp32", reference_files=files,
                )  # fmt: skip
                for name, result in results.items():
                    manifest.data["graphs"][name]["variants"]["fp16"]["parity"] = result

        from .tensorrt_ops import format_tensorrt_report, tensorrt_report

        variant_files = {
            f"{name}.{precision}": staging / variant["file"]
            for name, graph in manifest.data["graphs"].items()
            for precision, variant in graph["variants"].items()
        }
        report = tensorrt_report({k: onnx.load(str(v), load_external_data=False)
                                  for k, v in variant_files.items()})  # fmt: skip
        (staging / "tensorrt_report.json").write_text(json.dumps(report, indent=2) + "\n")
        manifest.add_file("tensorrt_report.json", "tensorrt compatibility report")
        manifest.data["tensorrt_compatibility"] = {
            "ok": report["ok"], "problems": report["problems"], "file": "tensorrt_report.json",
        }  # fmt: skip
        log.info("TensorRT compatibility:\n%s", format_tensorrt_report(report))
        if not report["ok"]:
            log.warning("graphs TensorRT cannot parse: %s", "; ".join(report["problems"]))

        for graph in manifest.data["graphs"].values():
            for variant in graph["variants"].values():
                for relative in [variant["file"], *variant["external_data"]]:
                    manifest.add_file(relative, "onnx graph" if relative.endswith(".onnx") else
                                      "onnx external data")  # fmt: skip
        manifest.save()
        _replace_directory(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("bundle written to %s", out_dir)
    return Manifest.load(out_dir)


def _export_sizes(profiles: dict[str, Profile]) -> dict[str, int]:
    """Distinct sizes > 1 inside each profile where the ranges allow it."""
    taken: set[int] = set()
    sizes = {}
    for axis in ("T", "E", "L"):
        profile = profiles[axis]
        preferred = [profile.opt, *range(profile.min, profile.max + 1)]
        candidates = [v for v in preferred if v > 1 and v not in taken] or [profile.opt]
        sizes[axis] = candidates[0]
        taken.add(sizes[axis])
    return sizes


def _metadata(graph: str, precision: str, description: dict, preprocessing: dict,
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


def _replace_directory(staging: Path, target: Path) -> None:
    if target.exists():
        backup = target.with_name(f".{target.name}.old-{time.time_ns()}")
        target.rename(backup)
        staging.rename(target)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        staging.rename(target)
