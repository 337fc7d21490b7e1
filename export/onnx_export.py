"""Checkpoint -> ONNX bundle: ``export_bundle(checkpoint, out_dir, ...)``.

The steps, in the order ``export_bundle`` runs them, and the module doing each:

1. ``source_model.load_model``: the checkpoint (or a preset with random weights) and its
   tokenizer.
2. ``torch_export.export_graph``: ``torch.onnx.export`` (the dynamo exporter) of the
   ``graphs`` wrappers ``TextGraph`` and ``VideoGraph`` with named dynamic axes T, E, L
   bounded by the profile ranges.
3. ``finish.finish_graph``: onnxslim, the bundle's key facts in ``metadata_props``, external
   data for graphs too big for one protobuf, ``onnx.checker``.
4. ``parity.check_parity``: ONNX Runtime (CPU) against PyTorch eager at two (T, E, L)
   combinations the export did not use; above tolerance export fails and no bundle is written.
5. ``finish.convert_fp16`` (``--precision fp16``): an FP16 copy of each graph with
   LayerNorm, Softmax, reductions and position encodings kept in FP32, and its parity against
   the FP32 graph.
6. The TensorRT compatibility report of every graph (``tensorrt_ops``), logged and stored as
   ``tensorrt_report.json``.
7. The manifest (``runtime.manifest``) with the sha256 of every file.

Everything is written into a staging directory that replaces ``out_dir`` at the end
(``runtime.files.replace_directory``), so a failed export never leaves a half-written bundle
behind and an existing bundle survives a failed replacement.

The names other code imports from here (``load_model``, ``bundle_model``, ``Profile``,
``DEFAULT_OPSET``) are re-exported from their modules.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from proxyformer.checkpoint import TOKENIZER_NAME
from proxyformer.config import ProxyFormerConfig
from runtime.files import make_staging_dir, replace_directory
from runtime.manifest import Manifest, installed_versions

from .finish import EXTERNAL_DATA_MODES, convert_fp16, finish_graph, graph_metadata
from .graphs import (
    FRAME_FORMATS,
    TextGraph,
    VideoDecoderGraph,
    VideoEncoderGraph,
    VideoGraph,
    graph_specs,
)
from .parity import FP32_TOLERANCE, Tolerance, check_parity, fp16_tolerance_for, parity_cases
from .source_model import bundle_model, load_model
from .torch_export import (
    DEFAULT_OPSET,
    PAD_TOKEN_ID,
    Profile,
    export_graph,
    export_sizes,
    make_inputs,
)

__all__ = ["DEFAULT_OPSET", "Profile", "bundle_model", "export_bundle", "load_model"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
OPSETS = (17, 22)  # inclusive; TensorRT 10 parses up to 22


def package_versions() -> dict[str, str]:
    """Versions of the packages an export depends on, for the manifest."""
    return installed_versions(
        ("proxyformer", "torch", "onnx", "onnxruntime", "onnxslim", "transformers", "tokenizers",
         "numpy")
    )  # fmt: skip


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
    fp16_tolerance: Tolerance | Callable[[ProxyFormerConfig], Tolerance] = fp16_tolerance_for,
    overwrite: bool = False,
    seed: int = 0,
    split: bool = False,
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
        fp32_tolerance, fp16_tolerance: the parity rules; FP16's may be a function of the model
            config (default ``export.parity.fp16_tolerance_for``: the maximum, or the 0.99
            quantile with masked attention).
        split: also export the video graph in its two parts, ``video_encoder`` (per video)
            and ``video_decoder`` (per expression), which a memory budget runs to split the
            expressions into groups without re-running the backbone (``export.graphs``).
    Returns:
        The bundle's ``Manifest`` (already saved).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
    _check_arguments(frame_format, precisions, opset, size, external_data)
    profiles = {
        "T": Profile.parse(frames, "frames"),
        "E": Profile.parse(expressions, "expressions"),
        "L": Profile(1, min(16, max_text_len), max_text_len),
    }

    seconds: dict[str, float] = {}  # per stage, kept in the manifest's "export_seconds"
    started = time.perf_counter()

    @contextmanager
    def stage(name: str) -> Iterator[None]:
        begun = time.perf_counter()
        yield
        seconds[name] = round(time.perf_counter() - begun, 1)

    with stage("load model"):
        model, tokenizer, description = load_model(checkpoint, preset, max_text_len, seed)
    if callable(fp16_tolerance):
        fp16_tolerance = fp16_tolerance(model.config)
    specs = graph_specs(model, size, frame_format, split)
    modules = {
        "text_encoder": TextGraph(model).eval(),
        "video": VideoGraph(model, frame_format).eval(),
    }
    if split:
        modules["video_encoder"] = VideoEncoderGraph(model, frame_format).eval()
        modules["video_decoder"] = VideoDecoderGraph(model, size).eval()
    preprocessing = _preprocessing(model.config, size, frame_format, max_text_len)
    manifest_profiles = {axis: p.to_dict() for axis, p in profiles.items()}

    def metadata(name: str, precision: str) -> dict[str, str]:
        return graph_metadata(name, precision, description, preprocessing, manifest_profiles,
                              opset)  # fmt: skip

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging_dir(out_dir)
    work = Path(tempfile.mkdtemp(prefix="proxyformer-export-"))
    try:
        manifest = Manifest.new(
            staging, description, preprocessing, manifest_profiles, opset, package_versions()
        )
        tokenizer.save(str(staging / TOKENIZER_NAME))
        manifest.add_file(TOKENIZER_NAME, "tokenizer")

        # Export at sizes that differ per axis (no 0/1 specialisation, no accidental equality).
        sizes = export_sizes(profiles)
        files = {}
        for name, module in modules.items():
            inputs, outputs = specs[name]
            manifest.set_graph(name, inputs, outputs)
            feeds = make_inputs(inputs, sizes, tokenizer, model, seed=seed)
            raw = work / f"{name}.onnx"
            with stage(f"torch.onnx.export {name}"):
                export_graph(module, feeds, specs[name], profiles, raw, opset)
            with stage(f"finish {name} (onnxslim, checker)"):
                entry = finish_graph(
                    raw, staging / f"{name}.onnx", metadata(name, "fp32"), external_data, slim
                )
            files[name] = staging / entry["file"]
            manifest.add_variant(name, "fp32", entry)
        log.info("exported at T=%(T)d E=%(E)d L=%(L)d", sizes)

        cases = parity_cases(profiles, sizes)
        fp32_outputs: dict = {}  # ONNX Runtime FP32 outputs per case: the FP16 check's reference
        if parity:
            with stage("parity fp32"):
                results = check_parity(
                    modules, files, specs, cases, tokenizer, model, fp32_tolerance,
                    record=fp32_outputs,
                )  # fmt: skip
            _record_parity(manifest, "fp32", results)
        if "fp16" in precisions:
            fp16_files = {}
            for name in modules:
                with stage(f"fp16 conversion {name}"):
                    entry = convert_fp16(
                        files[name], staging / f"{name}.fp16.onnx", metadata(name, "fp16"),
                        external_data,
                    )  # fmt: skip
                fp16_files[name] = staging / entry["file"]
                manifest.add_variant(name, "fp16", entry)
            if parity:
                with stage("parity fp16"):
                    results = check_parity(
                        modules, fp16_files, specs, cases, tokenizer, model, fp16_tolerance,
                        reference="onnxruntime fp32", reference_files=files,
                        reference_outputs=fp32_outputs,
                    )  # fmt: skip
                _record_parity(manifest, "fp16", results)

        with stage("tensorrt report"):
            _add_tensorrt_report(manifest)
        _register_graph_files(manifest)
        seconds["total"] = round(time.perf_counter() - started, 1)
        manifest.data["export_seconds"] = seconds
        log.info("export took %.0f s: %s", seconds["total"],
                 ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items() if k != "total"))  # fmt: skip
        manifest.save()
        replace_directory(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("bundle written to %s", out_dir)
    return Manifest.load(out_dir)


def _check_arguments(
    frame_format: str, precisions: tuple[str, ...], opset: int, size: tuple[int, int],
    external_data: str,
) -> None:  # fmt: skip
    """Refuse what cannot be exported before any work is done."""
    if frame_format not in FRAME_FORMATS:
        raise ValueError(f"frame format must be one of {FRAME_FORMATS}, got {frame_format!r}")
    unknown = set(precisions) - set(PRECISIONS)
    if unknown:
        raise ValueError(
            f"precisions {sorted(unknown)} are not exported here; fp32 and fp16 are "
            "(INT8 comes from calibration/calibrate.py)"
        )
    low, high = OPSETS
    if not low <= opset <= high:
        raise ValueError(
            f"opset must be in [{low}, {high}] (TensorRT 10 parses up to {high}), got {opset}"
        )
    height, width = size
    if height < 32 or width < 32:
        raise ValueError(f"size must be at least 32x32, got {height}x{width}")
    if external_data not in EXTERNAL_DATA_MODES:
        raise ValueError(
            f"external data must be one of {EXTERNAL_DATA_MODES}, got {external_data!r}"
        )


def _preprocessing(config, size: tuple[int, int], frame_format: str, max_text_len: int) -> dict:
    """The manifest's ``preprocessing`` entry: what a runtime does before the graphs."""
    height, width = size
    return {
        "size": [height, width],
        "frame_format": frame_format,
        "color": "RGB",
        "resize": "bilinear to exactly (H, W); masks are resized back to the video's size",
        "pixel_mean": list(config.pixel_mean),
        "pixel_std": list(config.pixel_std),
        "pixel_scale": 255.0,
        "normalised_in_graph": frame_format == "uint8-nhwc",
        "tokenizer": TOKENIZER_NAME,
        "max_text_length": max_text_len,
        "pad_token_id": PAD_TOKEN_ID,
        "mask_stride": 4,
        "mask_threshold": 0.5,
        "query_selection": "mean sigmoid(pred_logits) over frames, best query per expression",
    }


def _record_parity(manifest: Manifest, precision: str, results: dict) -> None:
    for name, result in results.items():
        manifest.data["graphs"][name]["variants"][precision]["parity"] = result


def _add_tensorrt_report(manifest: Manifest) -> None:
    """Check every variant against TensorRT's operator table; store and log the report."""
    import onnx

    from .tensorrt_ops import format_tensorrt_report, tensorrt_report

    variant_files = {
        f"{name}.{precision}": manifest.path(variant["file"], listed=False)
        for name, graph in manifest.data["graphs"].items()
        for precision, variant in graph["variants"].items()
    }
    report = tensorrt_report({k: onnx.load(str(v), load_external_data=False)
                              for k, v in variant_files.items()})  # fmt: skip
    (manifest.root / "tensorrt_report.json").write_text(json.dumps(report, indent=2) + "\n")
    manifest.add_file("tensorrt_report.json", "tensorrt compatibility report")
    manifest.data["tensorrt_compatibility"] = {
        "ok": report["ok"], "problems": report["problems"], "file": "tensorrt_report.json",
    }  # fmt: skip
    log.info("TensorRT compatibility:\n%s", format_tensorrt_report(report))
    if not report["ok"]:
        log.warning("graphs TensorRT cannot parse: %s", "; ".join(report["problems"]))


def _register_graph_files(manifest: Manifest) -> None:
    """Hash every variant's graph and external data file into the manifest."""
    for graph in manifest.data["graphs"].values():
        for variant in graph["variants"].values():
            for relative in [variant["file"], *variant["external_data"]]:
                role = "onnx graph" if relative.endswith(".onnx") else "onnx external data"
                manifest.add_file(relative, role)
