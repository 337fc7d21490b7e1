"""The rows of the latency table: PyTorch (eager, BF16 autocast, compiled), onnxruntime per precision, OpenVINO and TensorRT,
each as a runner whose call serves one video (text encoder on E expressions, then the video graph)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.rows import BACKENDS, DEFAULT_BACKENDS, BackendSpec  # noqa: F401 - re-exported
from benchmarks.timing import synchronize
from export.graphs import TextGraph, VideoGraph
from proxyformer.model import ProxyFormer
from runtime.backends import (
    AVAILABLE,
    BackendUnavailable,
    available_backends,
    load_backend,
)
from runtime.manifest import BundleError, Manifest
from runtime.precisions import RUNTIME_PRECISIONS, RUNTIME_VARIANT


class SkipBackend(Exception):
    """A backend that cannot be timed here; the message is the reason shown in the report."""


class TorchRunner:
    """PyTorch: the export wrappers ``TextGraph`` then ``VideoGraph`` (the same callables that
    were exported), under ``torch.inference_mode()``; eager or ``torch.compile``d, in FP32 or
    under autocast (``autocast``: BF16 on a CPU, FP16 on CUDA).

    With ``compile``, the first call at each input shape compiles (and runs once) outside the
    timed span: its seconds are kept in ``compile_seconds`` (shape -> s) and reported, not timed.

    On CUDA the host-to-device copies of the inputs and the copies of the outputs back to the
    host are inside the timed call (as in the TensorRT backend), and the device is synchronised
    before each clock reading.
    """

    def __init__(
        self,
        model: ProxyFormer,
        frame_format: str,
        device: str,
        autocast: torch.dtype | None = None,
        compile: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.text_graph: Any = TextGraph(model).eval()
        self.video_graph: Any = VideoGraph(model, frame_format).eval()
        self.autocast = autocast
        self.compile = compile
        self.compile_seconds: dict[str, float] = {}
        if compile:
            self.text_graph = torch.compile(self.text_graph)
            self.video_graph = torch.compile(self.video_graph)
        dtype = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}
        mode = "compiled" if compile else "eager"
        self.name = f"torch {mode} {dtype[autocast]} ({self.device.type}, export wrappers)"

    def _context(self) -> Any:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def outputs(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One call's outputs (logits, boxes, masks) as FP32 host arrays."""
        with torch.inference_mode(), self._context():
            ids = torch.from_numpy(feeds["input_ids"]).to(self.device)
            mask = torch.from_numpy(feeds["attention_mask"]).to(self.device)
            features = self.text_graph(ids, mask)
            frames = torch.from_numpy(feeds["frames"]).to(self.device)
            outputs = self.video_graph(frames, features, mask)
        return [output.float().cpu().numpy() for output in outputs]

    def __call__(self, feeds: dict[str, np.ndarray]) -> tuple[float, float]:
        """Run one call; return (text seconds, video seconds)."""
        if self.compile:
            shape = str({k: tuple(v.shape) for k, v in feeds.items()})
            if shape not in self.compile_seconds:
                start = time.perf_counter()
                self.outputs(feeds)
                self.compile_seconds[shape] = time.perf_counter() - start
        with torch.inference_mode(), self._context():
            synchronize(self.device)
            start = time.perf_counter()
            ids = torch.from_numpy(feeds["input_ids"]).to(self.device)
            mask = torch.from_numpy(feeds["attention_mask"]).to(self.device)
            features = self.text_graph(ids, mask)
            synchronize(self.device)
            middle = time.perf_counter()
            frames = torch.from_numpy(feeds["frames"]).to(self.device)
            outputs = self.video_graph(frames, features, mask)
            if self.device.type == "cuda":
                outputs = [output.cpu() for output in outputs]
            synchronize(self.device)
            end = time.perf_counter()
        return middle - start, end - middle

    def close(self) -> None:
        """Nothing to release (the model is shared)."""


class ModelForwardRunner:
    """PyTorch eager FP32, the model's own forward as trained: ``model(frames, ids, mask)`` with
    one video per expression (B = E; the frames normalised first, as ``VideoGraph`` does), so
    the backbone runs E times and the auxiliary decoder outputs are computed. The forward has no
    text/video split: the whole call is reported as video time (text 0)."""

    def __init__(self, model: ProxyFormer, frame_format: str, device: str) -> None:
        self.model = model.eval()
        self.frame_format = frame_format
        self.device = torch.device(device)
        self.name = f"torch eager fp32 ({self.device.type}, model forward)"

    def __call__(self, feeds: dict[str, np.ndarray]) -> tuple[float, float]:
        """Run one call; return (0, seconds)."""
        with torch.inference_mode():
            synchronize(self.device)
            start = time.perf_counter()
            ids = torch.from_numpy(feeds["input_ids"]).to(self.device)
            mask = torch.from_numpy(feeds["attention_mask"]).to(self.device)
            frames = torch.from_numpy(feeds["frames"]).to(self.device)
            if self.frame_format == "uint8-nhwc":
                frames = self.model.normalize(frames.permute(0, 3, 1, 2))
            frames = frames[None].expand(ids.shape[0], -1, -1, -1, -1)
            out = self.model(frames, ids, mask)
            if self.device.type == "cuda":
                out = [out[key].cpu() for key in ("pred_logits", "pred_boxes", "pred_masks")]
            synchronize(self.device)
            end = time.perf_counter()
        return 0.0, end - start

    def close(self) -> None:
        """Nothing to release (the model is shared)."""


class BundleRunner:
    """The bundle's graphs on ``runtime`` backends: text encoder, then video graph; or, given a
    ``decoder``, the split video graph: ``video_backend`` is then the video encoder, and the
    decoder runs on its levels (the video seconds are both)."""

    def __init__(self, text_backend: Any, video_backend: Any, decoder: Any = None) -> None:
        self.text_backend = text_backend
        self.video_backend = video_backend
        self.decoder = decoder
        self.name = video_backend.name + (" (split)" if decoder is not None else "")

    def __call__(self, feeds: dict[str, np.ndarray]) -> tuple[float, float]:
        """Run one call; return (text seconds, video seconds). The backends return host
        arrays after synchronising, so no extra synchronisation is needed."""
        mask = feeds["attention_mask"]
        start = time.perf_counter()
        text = self.text_backend.infer({"input_ids": feeds["input_ids"], "attention_mask": mask})
        middle = time.perf_counter()
        text_feeds = {"text_features": text["text_features"], "attention_mask": mask}
        if self.decoder is None:
            self.video_backend.infer({"frames": feeds["frames"]} | text_feeds)
        else:
            levels = self.video_backend.infer({"frames": feeds["frames"]})
            self.decoder.infer(levels | text_feeds)
        end = time.perf_counter()
        return middle - start, end - middle

    def close(self) -> None:
        """Release the backends."""
        for backend in (self.text_backend, self.video_backend, self.decoder):
            if backend is not None:
                backend.close()


def text_precision_for(manifest: Manifest, spec: BackendSpec) -> str:
    """The text encoder's variant for a row: the video's precision where the text graph has it
    (INT8 variants exist for the video graph only), else fp32. TensorRT's INT8 set of engines
    includes a text encoder engine (built from its float graph), so it keeps the precision, and
    so does a runtime precision (bf16: the fp32 text graph run in BF16 too)."""
    if (
        spec.runtime == "tensorrt"
        or spec.precision in RUNTIME_PRECISIONS
        or spec.precision in manifest.precisions("text_encoder")
    ):
        return spec.precision
    return "fp32"


def expand_backends(names: Sequence[str], manifest: Manifest) -> list[str]:
    """The requested rows, deduplicated and checked; "ort-int8" brings "ort-int8-trt" along
    when the bundle has the int8-tensorrt video graph."""
    names = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    if (
        "ort-int8" in names
        and "ort-int8-trt" not in names
        and "int8-tensorrt" in manifest.precisions("video")
    ):
        names.insert(names.index("ort-int8") + 1, "ort-int8-trt")
    return names


def resolve_torch_device(choice: str = "auto") -> str:
    """The PyTorch row's device: "auto" is "cuda" when torch sees a GPU, else "cpu"."""
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(choice).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--torch-device {choice}: torch sees no CUDA GPU")
    return choice


def check_torch_compile(device: str) -> None:
    """Raise ``SkipBackend`` when ``torch.compile`` (inductor) cannot compile here, e.g. with
    no C++ compiler for CPU kernels: a one-line function is compiled and run as a probe."""
    try:
        probe = torch.compile(lambda x: torch.relu(x) * 2 + 1)
        probe(torch.ones(8, device=device))
    except Exception as error:  # noqa: BLE001 - any failure is the reason shown
        raise SkipBackend(
            f"torch.compile cannot compile here: {type(error).__name__}: {error}"
        ) from None


def _open_torch(
    manifest: Manifest, model: ProxyFormer, torch_device: str, spec: BackendSpec
) -> tuple[Any, dict]:
    device = torch.device(torch_device).type
    if spec.mode == "model":
        runner = ModelForwardRunner(model, manifest.preprocessing["frame_format"], torch_device)
        return runner, {
            "runtime": "torch", "device": device, "arithmetic": "fp32",
            "text_precision": "fp32", "video_precision": "fp32 (eager, model forward)",
            "callable": "model(frames, ids, mask), one video per expression (text time in video)",
        }  # fmt: skip
    compile = spec.mode == "compile"
    if compile:
        check_torch_compile(torch_device)
    autocast, arithmetic = None, spec.arithmetic
    if spec.precision == "bf16":  # BF16 autocast on a CPU, FP16 on CUDA
        autocast = torch.float16 if device == "cuda" else torch.bfloat16
        arithmetic = "fp16" if device == "cuda" else "bf16"
    runner = TorchRunner(
        model, manifest.preprocessing["frame_format"], torch_device, autocast, compile
    )
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[autocast]
    kind = "compiled" if compile else "eager"
    kind += "" if autocast is None else f", {precision} autocast"
    return runner, {
        "runtime": "torch", "device": device, "arithmetic": arithmetic,
        "text_precision": precision, "video_precision": f"{precision} ({kind})",
        "callable": "export wrappers (TextGraph + VideoGraph)",
    }  # fmt: skip


def _timed_files(manifest: Manifest, spec: BackendSpec, text_precision: str,
                 video_graphs: tuple[str, ...] = ("video",)) -> dict[str, dict]:  # fmt: skip
    """The manifest entries of the files a row times, or ``SkipBackend`` naming what is missing:
    ONNX variants for onnxruntime, engines for TensorRT (the INT8 set's text encoder engine is
    built from a float graph, so it has no INT8 ONNX variant); a runtime precision times the
    variant it runs (bf16: fp32)."""
    video_precision = RUNTIME_VARIANT.get(spec.precision, spec.precision)
    graphs = (
        ("text_encoder", RUNTIME_VARIANT.get(text_precision, text_precision)),
        *((graph, video_precision) for graph in video_graphs),
    )
    try:
        return {
            graph: manifest.engine(precision, graph)
            if spec.runtime == "tensorrt"
            else manifest.variant(graph, precision)
            for graph, precision in graphs
        }
    except BundleError as error:
        raise SkipBackend(str(error)) from None


def _backend_options(
    spec: BackendSpec, threads: int, profile_dir: str | Path | None
) -> tuple[dict[str, Any], str]:
    """``load_backend`` options of a row and the device it runs on."""
    if spec.runtime == "openvino":
        # No compiled-model cache: a row times the backend, and its load must not depend on
        # what an earlier run left in the user's cache.
        return {"threads": threads, "cache_dir": None, "profile": profile_dir is not None}, "cpu"
    if spec.runtime != "onnxruntime":
        return {}, "cuda"
    options: dict[str, Any] = {"threads": threads}
    if profile_dir is not None:
        options |= {"profile": True, "profile_dir": str(profile_dir)}
    return options, "cpu"


def open_runner(
    name: str,
    manifest: Manifest,
    model: ProxyFormer,
    torch_device: str,
    threads: int,
    status: dict[str, str] | None = None,
    profile_dir: str | Path | None = None,
    split: bool = False,
    options: dict[str, Any] | None = None,
) -> tuple[Any, dict]:
    """Load a backend row as a runner, or raise ``SkipBackend`` with the reason.

    Args:
        name: a key of ``BACKENDS``.
        manifest: the bundle's manifest.
        model: the PyTorch baseline (for "torch").
        torch_device: where "torch" runs.
        threads: onnxruntime ``intra_op_num_threads`` and OpenVINO's
            ``INFERENCE_NUM_THREADS`` (torch's are set globally).
        status: ``available_backends()`` (computed when not given).
        profile_dir: enable onnxruntime's profiler, writing there (ORT rows), or OpenVINO's
            per-node counters (OpenVINO rows).
        split: run the split video graph (``video_encoder`` then ``video_decoder``).
        options: more ``load_backend`` options (e.g. ``cpu_arena`` for onnxruntime rows).

    Returns:
        (runner, description: device, arithmetic, text and video precision, files' sha256).
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    spec = BACKENDS[name]
    if spec.runtime == "torch":
        if split:
            raise SkipBackend("the split video graph is an ONNX graph; torch rows run the model")
        return _open_torch(manifest, model, torch_device, spec)
    status = status if status is not None else available_backends()
    key = {"onnxruntime": "onnxruntime-cpu", "openvino": "openvino-cpu"}.get(
        spec.runtime, "tensorrt"
    )
    if status.get(key) != AVAILABLE:
        raise SkipBackend(f"{key} is not available here: {status.get(key)}")
    text_precision = text_precision_for(manifest, spec)
    video_graphs = ("video_encoder", "video_decoder") if split else ("video",)
    entries = _timed_files(manifest, spec, text_precision, video_graphs)
    row_options, device = _backend_options(spec, threads, profile_dir)
    row_options |= options or {}
    try:
        text = load_backend(manifest, "text_encoder", spec.runtime, text_precision, **row_options)
        video = [load_backend(manifest, graph, spec.runtime, spec.precision, **row_options)
                 for graph in video_graphs]  # fmt: skip
    except (BackendUnavailable, BundleError) as error:
        raise SkipBackend(str(error)) from None
    files = manifest.data["files"]
    sha = {graph: files.get(entry["file"], {}).get("sha256") for graph, entry in entries.items()}
    return BundleRunner(text, *video), {
        "runtime": spec.runtime, "device": device, "arithmetic": spec.arithmetic,
        "text_precision": text_precision, "video_precision": spec.precision, "sha256": sha,
    }  # fmt: skip
