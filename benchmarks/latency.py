"""Latency of one video call per backend: PyTorch eager vs ONNX Runtime vs TensorRT, per precision.

    python benchmarks/latency.py --bundle bundles/paper-swin-t --frames 19 \\
        --backends torch,ort,ort-fp16,ort-int8,trt-fp16,trt-int8
    python benchmarks/latency.py --bundle bundles/tiny --runs 20 --profile

One "call" is what serving one video costs: the text encoder on E expressions, then the video
graph on T frames, from uint8 frames ``[T, H, W, 3]`` and token ids to the graphs' raw outputs
(no post-processing). Text and video times are also reported apart.

The bundle fixes the preset and the frame size; its profiles bound T, E and L. The PyTorch
baseline is rebuilt from the manifest (the checkpoint, or the config with the recorded seed:
speed does not depend on the weights) and runs the same ``TextGraph`` + ``VideoGraph`` that were
exported, eager, under ``torch.inference_mode()``.

Backends (each timed in the same process, one after another, so ratios compare like with like):

    torch         PyTorch eager FP32 (CUDA when available, else CPU; --torch-device)
    ort           onnxruntime CPU, fp32 graphs
    ort-fp16      onnxruntime CPU, fp16 graphs
    ort-int8      onnxruntime CPU, the int8-cpu Q/DQ video graph (text encoder fp32)
    ort-int8-trt  onnxruntime CPU, the int8-tensorrt Q/DQ video graph (added after ort-int8
                  when the bundle has it)
    trt-fp32, trt-fp16, trt-int8   the native TensorRT engines (runtime.backends)

A backend that cannot run here, or whose precision variant or engine is missing from the
bundle, is listed as skipped with the reason.

Reported: warm-up, then ``--runs`` timed calls; mean, p50/p90/p99, min, max, std and spread
(p90 - p50) / p50; GFLOPs of one call (torch's FlopCounterMode on the eager graphs, 2 FLOPs per
multiply-accumulate) and the achieved GFLOP/s at p50; the fraction of this machine's measured
GEMM peak for the backend's arithmetic (FP32, BF16 for FP16 graphs on a CPU, FP16 on a GPU,
INT8); the speed-up over PyTorch eager; the time for E = 1, 2, 4 expressions on one video; the
issue's targets with pass/fail and the paper's 109 ms (NVIDIA A40, a GPU) beside the device
measured here. ``--profile`` runs onnxruntime's profiler once per ORT backend and tabulates the
node time by operator type.

Everything goes to ``benchmarks/results/<machine>/latency-<tag>.{json,md,png}``; the markdown is
printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from export.graphs import TextGraph, VideoGraph
from export.onnx_export import bundle_model
from proxyformer.config import ProxyFormerConfig
from proxyformer.model import ProxyFormer, build_proxyformer
from proxyformer.summary import parse_size
from runtime.backends import (
    AVAILABLE,
    BackendUnavailable,
    available_backends,
    engine_precision,
    load_backend,
)
from runtime.manifest import BundleError, Manifest, installed_versions

log = logging.getLogger("benchmarks.latency")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_BACKENDS = ("torch", "ort", "ort-fp16", "ort-int8", "trt-fp16", "trt-int8")
PAPER = {
    "latency_ms": 109.0,
    "device": "NVIDIA A40",
    "kind": "GPU",
    "setting": "paper-swin-t, 19 frames at 360x640, one expression",
}
PAPER_SETTING = {"preset": "paper-swin-t", "frames": 19, "size": (360, 640)}
# The targets, on a CPU at the paper setting.
TARGET_ORT_VS_TORCH = 1.5  # ORT FP32 at least this many times faster than PyTorch eager
TARGET_INT8_VS_ORT = 2.0  # the best INT8 at least this many times faster than ORT FP32
TARGET_E4_VS_E1 = 1.6  # E = 4 costs at most this many times E = 1
BUSY_LOAD = 0.5  # 1-minute load average above which the report warns of other work
CPU_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8",
)  # fmt: skip
EXPRESSIONS = (
    "the small red circle moving left past the big blue square in the top corner",
    "the green triangle that stays still below the yellow diamond on the right side",
    "the large purple square sliding down behind the small orange circle",
    "the blue diamond moving right above the red triangle near the bottom edge",
)


@dataclass(frozen=True)
class BackendSpec:
    """A benchmark row: which runtime, which graph variant, which arithmetic it mostly does."""

    runtime: str  # "torch", "onnxruntime" or "tensorrt"
    precision: str  # the video graph's variant (runtime.backends.PRECISIONS)
    arithmetic: str  # "fp32", "fp16" or "int8": the GEMM peak it is held against


BACKENDS = {
    "torch": BackendSpec("torch", "fp32", "fp32"),
    "ort": BackendSpec("onnxruntime", "fp32", "fp32"),
    "ort-fp16": BackendSpec("onnxruntime", "fp16", "fp16"),
    "ort-int8": BackendSpec("onnxruntime", "int8-cpu", "int8"),
    "ort-int8-trt": BackendSpec("onnxruntime", "int8-tensorrt", "int8"),
    "trt-fp32": BackendSpec("tensorrt", "fp32", "fp32"),
    "trt-fp16": BackendSpec("tensorrt", "fp16", "fp16"),
    "trt-int8": BackendSpec("tensorrt", "int8-tensorrt", "int8"),
}


class SkipBackend(Exception):
    """A backend that cannot be timed here; the message is the reason shown in the report."""


# -- the machine ---------------------------------------------------------------------------


def cpu_count() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if ":" in line:
            key, value = (part.strip() for part in line.split(":", 1))
            info.setdefault(key, value)
    return info


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "cpu"


def cpu_flags() -> dict[str, bool]:
    """Which of the SIMD/matrix extensions that matter for GEMM peaks this CPU reports.

    The same flags ``lscpu`` prints (it reads ``/proc/cpuinfo``): AVX-512 VNNI or AMX-INT8 for
    INT8 dot products, AVX512-BF16 or AMX-BF16 for BF16.
    """
    flags = set(_cpuinfo().get("flags", "").split())
    return {flag: flag in flags for flag in CPU_FLAGS}


def _slug(text: str) -> str:
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9.]+", "-", text.lower())).strip("-")


def machine_slug(cpu: str, cores: int, gpu: str | None = None) -> str:
    """A directory name for this machine: ``cpu-xeon-2.50ghz-2c`` or ``gpu-h100-80gb-hbm3``.

    Args:
        cpu: the CPU model name.
        cores: CPU cores available.
        gpu: the GPU name when the benchmark ran on CUDA.
    """
    if gpu:
        words = [w for w in _slug(gpu).split("-") if w not in ("nvidia", "geforce")]
        return "gpu-" + "-".join(words)
    text = re.sub(r"\((r|tm)\)", " ", cpu.lower())
    text = re.sub(r"\b\d+-core\b", " ", text)
    drop = {"intel", "amd", "processor", "cpu", "@", "with"}
    words = [w for w in _slug(text).split("-") if w and w not in drop]
    return "-".join(["cpu", *words, f"{cores}c"])


def machine_info(torch_device: str) -> dict:
    """CPU model, cores, relevant CPU flags and, on CUDA, the GPU; plus the directory slug."""
    cores = cpu_count()
    gpu = None
    if torch.device(torch_device).type == "cuda":
        gpu = torch.cuda.get_device_name(torch.device(torch_device))
    info = {
        "cpu": cpu_model(),
        "cores": cores,
        "cpu_flags": cpu_flags(),
        "gpu": gpu,
        "torch_device": str(torch_device),
        "platform": platform.platform(),
    }
    info["slug"] = machine_slug(info["cpu"], cores, gpu)
    info["load_average_start"] = load_average()
    return info


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none): other work skews timings."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages that decide the timings."""
    return installed_versions(
        (
            "proxyformer",
            "torch",
            "onnxruntime",
            "onnxruntime-gpu",
            "onnx",
            "numpy",
            "tokenizers",
            "tensorrt",
            "cuda-python",
            "matplotlib",
        )
    )


# -- GEMM peaks ----------------------------------------------------------------------------


def _best_rate(
    make_call: Callable[[int], Callable[[], Any]],
    size: int,
    budget_s: float,
    repeats: int,
    max_call_s: float = 1.5,
    sync: Callable[[], None] = lambda: None,
) -> dict:
    """Best-of-N operations per second of an ``n x n x n`` GEMM.

    A call at 512 first estimates the rate; when a call at ``size`` would take longer than
    ``max_call_s`` (slow arithmetic, e.g. FP16 emulated on a CPU), a smaller multiple of 256
    is used instead, so the whole measurement stays within budget.
    """
    probe = min(512, size)
    call = make_call(probe)
    call()
    sync()
    start = time.perf_counter()
    call()
    sync()
    rate = 2 * probe**3 / max(time.perf_counter() - start, 1e-9)
    n = size
    if 2 * size**3 / rate > max_call_s:
        n = max(probe, int((max_call_s * rate / 2) ** (1 / 3)) // 256 * 256)
    call = make_call(n) if n != probe else call
    call()  # warm-up at this size
    sync()
    best = math.inf
    started = time.perf_counter()
    for index in range(repeats):
        start = time.perf_counter()
        call()
        sync()
        best = min(best, time.perf_counter() - start)
        if index >= 1 and time.perf_counter() - started > budget_s:
            break
    ops = 2 * n**3
    return {"gflops": ops / best / 1e9, "size": n, "best_ms": best * 1e3, "runs": index + 1}


def _torch_gemm(dtype: torch.dtype, device: str) -> Callable[[int], Callable[[], Any]]:
    def make(n: int) -> Callable[[], Any]:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
        return lambda: torch.matmul(a, b)

    return make


def _numpy_gemm(n: int) -> Callable[[], Any]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    return lambda: a @ b


def _ort_int8_gemm(threads: int) -> Callable[[int], Callable[[], Any]]:
    """``MatMulInteger`` (uint8 A x int8 B -> int32) in onnxruntime CPU: the u8s8 kernels that
    the int8-cpu Q/DQ graphs run (VNNI / AMX where the CPU has them). B is a constant, like
    weights, so onnxruntime may pre-pack it."""

    def make(n: int) -> Callable[[], Any]:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(0)
        weight = rng.integers(-128, 128, (n, n), dtype=np.int8)
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])],
            "int8_gemm",
            [helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n])],
            [helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])],
            [numpy_helper.from_array(weight, "B")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8  # readable by every onnxruntime the project supports
        onnx.checker.check_model(model)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        feeds = {"A": rng.integers(0, 256, (n, n), dtype=np.uint8)}
        return lambda: session.run(None, feeds)

    return make


def gemm_peaks(
    threads: int | None = None,
    size: int = 2048,
    repeats: int = 5,
    budget_s: float = 2.5,
    cuda: bool = False,
) -> dict:
    """This machine's measured GEMM peaks: the ceiling the benchmark's GFLOP/s are held against.

    CPU: FP32 ``torch.matmul`` (and numpy as a cross-check), BF16 ``torch.matmul`` and INT8
    ``MatMulInteger`` in onnxruntime, each ``size``^3 (smaller where a call would be slow),
    best of ``repeats``. With ``cuda``: FP32 (TF32 off), FP16, BF16 and INT8 (``torch._int_mm``)
    on the GPU at 4 x ``size``. Rates are GFLOP/s (GOP/s for INT8, 2 ops per multiply-add).

    Args:
        threads: torch and onnxruntime threads (numpy keeps its BLAS's own setting).
        size: the GEMM's n on the CPU.
        repeats: timed calls per measurement (after a warm-up).
        budget_s: stop repeating a measurement after this long.
        cuda: measure the GPU too.

    Returns:
        ``{"cpu": {"fp32", "fp32_numpy", "bf16", "int8"}, "cuda": {...}, "cpu_flags", ...}``,
        each measurement ``{"gflops", "size", "best_ms", "runs", "method"}``.
    """
    threads = threads or cpu_count()
    torch.set_num_threads(threads)
    started = time.perf_counter()
    cpu: dict[str, dict] = {}
    measurements = {
        "fp32": (_torch_gemm(torch.float32, "cpu"), f"torch.matmul float32, {threads} threads"),
        "fp32_numpy": (_numpy_gemm, "numpy float32 (its BLAS's own threads), cross-check"),
        "bf16": (_torch_gemm(torch.bfloat16, "cpu"), f"torch.matmul bfloat16, {threads} threads"),
        "int8": (
            _ort_int8_gemm(threads),
            f"onnxruntime MatMulInteger uint8 x int8 -> int32, {threads} threads",
        ),
    }
    for key, (make, method) in measurements.items():
        try:
            cpu[key] = {**_best_rate(make, size, budget_s, repeats), "method": method}
        except Exception as error:  # noqa: BLE001 - a missing kernel must not sink the run
            log.warning("GEMM peak %s failed: %s", key, error)
            cpu[key] = {"gflops": None, "method": method, "error": str(error)}
        log.info("GEMM peak cpu %s: %s GFLOP/s", key, _fmt(cpu[key].get("gflops"), 1))
    peaks: dict[str, Any] = {"cpu": cpu, "cpu_flags": cpu_flags(), "threads": threads}
    if cuda and torch.cuda.is_available():
        peaks["cuda"] = _cuda_peaks(4 * size, repeats * 2, budget_s)
    peaks["seconds"] = time.perf_counter() - started
    return peaks


def _cuda_peaks(size: int, repeats: int, budget_s: float) -> dict:
    sync = torch.cuda.synchronize
    results: dict[str, dict] = {}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the FP32 peak, not TF32
    try:
        for key, dtype in (("fp32", torch.float32), ("fp16", torch.float16),
                           ("bf16", torch.bfloat16)):  # fmt: skip
            make = _torch_gemm(dtype, "cuda")
            results[key] = {
                **_best_rate(make, size, budget_s, repeats, max_call_s=0.2, sync=sync),
                "method": f"torch.matmul {dtype} on cuda",
            }
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    if hasattr(torch, "_int_mm"):

        def make_int8(n: int) -> Callable[[], Any]:
            a = torch.randint(-128, 128, (n, n), dtype=torch.int8, device="cuda")
            b = torch.randint(-128, 128, (n, n), dtype=torch.int8, device="cuda")
            return lambda: torch._int_mm(a, b)

        try:
            results["int8"] = {
                **_best_rate(make_int8, size, budget_s, repeats, max_call_s=0.2, sync=sync),
                "method": "torch._int_mm int8 x int8 -> int32 on cuda",
            }
        except RuntimeError as error:
            results["int8"] = {"gflops": None, "error": str(error)}
    return results


def peak_for(peaks: dict, device: str, arithmetic: str) -> tuple[float | None, str]:
    """The measured peak a backend is held against, and which one it is.

    FP16 graphs on a CPU are held against the BF16 GEMM peak: CPUs without AVX512-FP16/AMX-FP16
    have no FP16 GEMM, so BF16 is the fastest 16-bit arithmetic there.
    """
    if device == "cuda":
        entry = peaks.get("cuda", {}).get(arithmetic, {})
        return entry.get("gflops"), f"cuda {arithmetic}"
    key = {"fp32": "fp32", "fp16": "bf16", "int8": "int8"}[arithmetic]
    return peaks.get("cpu", {}).get(key, {}).get("gflops"), f"cpu {key}"


# -- inputs, model, FLOPs ------------------------------------------------------------------


def resolve_axis(manifest: Manifest, axis: str, value: int | None, what: str) -> int:
    """``value`` (default: the profile's opt) checked against the bundle's profile for ``axis``."""
    bounds = manifest.profiles[axis]
    if value is None:
        return int(bounds["opt"])
    if not bounds["min"] <= value <= bounds["max"]:
        raise ValueError(
            f"{what}={value} is outside the bundle's {axis} profile "
            f"{bounds['min']}..{bounds['max']} ({manifest.root}); export a bundle that covers it"
        )
    return int(value)


def make_feeds(
    manifest: Manifest, frames: int, expressions: int, text_length: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """The inputs of one call: random frames in the bundle's frame format and E tokenized
    expressions cut to ``text_length`` tokens (all real tokens, no padding).

    Returns:
        ``{"frames", "input_ids", "attention_mask"}`` as numpy arrays.
    """
    from tokenizers import Tokenizer

    pre = manifest.preprocessing
    height, width = pre["size"]
    rng = np.random.default_rng(seed)
    if pre["frame_format"] == "uint8-nhwc":
        video = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    else:
        video = rng.standard_normal((frames, 3, height, width)).astype(np.float32)
    tokenizer = Tokenizer.from_file(str(manifest.root / pre["tokenizer"]))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    pad = int(pre.get("pad_token_id", 1))
    ids = np.full((expressions, text_length), pad, dtype=np.int64)
    mask = np.zeros((expressions, text_length), dtype=np.int64)
    for row in range(expressions):
        # Rotate the texts so rows differ; repeat them so every row fills text_length tokens.
        texts = EXPRESSIONS[row % len(EXPRESSIONS) :] + EXPRESSIONS[: row % len(EXPRESSIONS)]
        tokens = tokenizer.encode(" and ".join(texts * (1 + text_length // 40))).ids[:text_length]
        ids[row, : len(tokens)], mask[row, : len(tokens)] = tokens, 1
    return {"frames": video, "input_ids": ids, "attention_mask": mask}


def load_baseline_model(manifest: Manifest, device: str | torch.device = "cpu") -> ProxyFormer:
    """The PyTorch model of the bundle, in eval mode on ``device``.

    The checkpoint the manifest names when it exists (tried as given, then relative to the
    bundle); otherwise the manifest's config with random weights from its recorded seed —
    latency does not depend on the weights.
    """
    entry = manifest.data["model"]
    try:
        model = bundle_model(manifest, device)
    except FileNotFoundError as error:
        log.warning(
            "%s; building the manifest's config with random weights instead (latency does not "
            "depend on the weights)",
            error,
        )
        seed = entry.get("random_weights_seed")
        torch.manual_seed(0 if seed is None else int(seed))
        model = build_proxyformer(ProxyFormerConfig.from_dict(entry["config"]))
    expected = entry.get("parameters")
    if expected is not None and model.num_parameters() != expected:
        log.warning(
            "the rebuilt model has %d parameters, the manifest records %d",
            model.num_parameters(),
            expected,
        )
    model.requires_grad_(False)  # FlopCounterMode's module tracker wants no autograd graph
    return model.to(device).eval()


def count_gflops(
    model: ProxyFormer, frame_format: str, feeds: dict[str, np.ndarray], device: str = "cpu"
) -> dict[str, float]:
    """GFLOPs of one call (text encoder + video graph) at the feeds' shapes.

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` on the eager graphs: matrix
    multiplications, convolutions and attention, 2 FLOPs per multiply-accumulate.

    Returns:
        ``{"text": ..., "video": ..., "total": ...}`` in GFLOP.
    """
    from torch.utils.flop_counter import FlopCounterMode

    text_graph, video_graph = TextGraph(model).eval(), VideoGraph(model, frame_format).eval()
    tensors = {k: torch.from_numpy(v).to(device) for k, v in feeds.items()}
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            features = text_graph(tensors["input_ids"], tensors["attention_mask"])
        text = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            video_graph(tensors["frames"], features, tensors["attention_mask"])
        video = counter.get_total_flops()
    return {"text": text / 1e9, "video": video / 1e9, "total": (text + video) / 1e9}


# -- runners -------------------------------------------------------------------------------


class TorchRunner:
    """PyTorch eager: ``TextGraph`` then ``VideoGraph``, under ``torch.inference_mode()``.

    On CUDA the host-to-device copies of the inputs and the copies of the outputs back to the
    host are inside the timed call (as in the TensorRT backend), and the device is synchronised
    before each clock reading.
    """

    def __init__(self, model: ProxyFormer, frame_format: str, device: str) -> None:
        self.device = torch.device(device)
        self.text_graph = TextGraph(model).eval()
        self.video_graph = VideoGraph(model, frame_format).eval()
        self.name = f"torch eager fp32 ({self.device.type})"

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, feeds: dict[str, np.ndarray]) -> tuple[float, float]:
        """Run one call; return (text seconds, video seconds)."""
        with torch.inference_mode():
            self._sync()
            start = time.perf_counter()
            ids = torch.from_numpy(feeds["input_ids"]).to(self.device)
            mask = torch.from_numpy(feeds["attention_mask"]).to(self.device)
            features = self.text_graph(ids, mask)
            self._sync()
            middle = time.perf_counter()
            frames = torch.from_numpy(feeds["frames"]).to(self.device)
            outputs = self.video_graph(frames, features, mask)
            if self.device.type == "cuda":
                outputs = [output.cpu() for output in outputs]
            self._sync()
            end = time.perf_counter()
        return middle - start, end - middle

    def close(self) -> None:
        """Nothing to release (the model is shared)."""


class BundleRunner:
    """The bundle's two graphs on ``runtime`` backends: text encoder, then video graph."""

    def __init__(self, text_backend: Any, video_backend: Any) -> None:
        self.text_backend = text_backend
        self.video_backend = video_backend
        self.name = video_backend.name

    def __call__(self, feeds: dict[str, np.ndarray]) -> tuple[float, float]:
        """Run one call; return (text seconds, video seconds). The backends return host
        arrays after synchronising, so no extra synchronisation is needed."""
        mask = feeds["attention_mask"]
        start = time.perf_counter()
        text = self.text_backend.infer({"input_ids": feeds["input_ids"], "attention_mask": mask})
        middle = time.perf_counter()
        video_feeds = {"frames": feeds["frames"], "text_features": text["text_features"]}
        self.video_backend.infer(video_feeds | {"attention_mask": mask})
        end = time.perf_counter()
        return middle - start, end - middle

    def close(self) -> None:
        """Release both backends."""
        for backend in (self.text_backend, self.video_backend):
            backend.close()


def text_precision_for(manifest: Manifest, spec: BackendSpec) -> str:
    """The text encoder's variant for a row: the video's precision where the text graph has it
    (INT8 variants exist for the video graph only), else fp32. TensorRT's INT8 set of engines
    includes a text encoder engine (built from its float graph), so it keeps the precision."""
    if spec.runtime == "tensorrt" or spec.precision in manifest.precisions("text_encoder"):
        return spec.precision
    return "fp32"


def open_runner(
    name: str,
    manifest: Manifest,
    model: ProxyFormer,
    torch_device: str,
    threads: int,
    status: dict[str, str] | None = None,
    profile_dir: str | Path | None = None,
) -> tuple[Any, dict]:
    """Load a backend row as a runner, or raise ``SkipBackend`` with the reason.

    Args:
        name: a key of ``BACKENDS``.
        manifest: the bundle's manifest.
        model: the PyTorch baseline (for "torch").
        torch_device: where "torch" runs.
        threads: onnxruntime ``intra_op_num_threads`` (torch's are set globally).
        status: ``available_backends()`` (computed when not given).
        profile_dir: enable onnxruntime's profiler, writing there (ORT rows only).

    Returns:
        (runner, description: device, arithmetic, text and video precision, files' sha256).
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    spec = BACKENDS[name]
    if spec.runtime == "torch":
        device = torch.device(torch_device).type
        return TorchRunner(model, manifest.preprocessing["frame_format"], torch_device), {
            "runtime": "torch", "device": device, "arithmetic": "fp32",
            "text_precision": "fp32", "video_precision": "fp32 (eager)",
        }  # fmt: skip
    status = status if status is not None else available_backends()
    key = "onnxruntime-cpu" if spec.runtime == "onnxruntime" else "tensorrt"
    if status.get(key) != AVAILABLE:
        raise SkipBackend(f"{key} is not available here: {status.get(key)}")
    text_precision = text_precision_for(manifest, spec)
    graphs = (("text_encoder", text_precision), ("video", spec.precision))
    try:
        # The files timed: ONNX variants for onnxruntime, engines for TensorRT (the INT8 set's
        # text encoder engine is built from a float graph, so it has no INT8 ONNX variant).
        entries = {
            graph: manifest.engine(engine_precision(precision), graph)
            if spec.runtime == "tensorrt"
            else manifest.variant(graph, precision)
            for graph, precision in graphs
        }
    except BundleError as error:
        raise SkipBackend(str(error)) from None
    if spec.runtime == "onnxruntime":
        options: dict[str, Any] = {"threads": threads}
        if profile_dir is not None:
            options |= {"profile": True, "profile_dir": str(profile_dir)}
        device = "cpu"
    else:
        options = {}
        device = "cuda"
    try:
        text = load_backend(manifest, "text_encoder", spec.runtime, text_precision, **options)
        video = load_backend(manifest, "video", spec.runtime, spec.precision, **options)
    except (BackendUnavailable, BundleError) as error:
        raise SkipBackend(str(error)) from None
    files = manifest.data["files"]
    sha = {graph: files.get(entry["file"], {}).get("sha256") for graph, entry in entries.items()}
    return BundleRunner(text, video), {
        "runtime": spec.runtime, "device": device, "arithmetic": spec.arithmetic,
        "text_precision": text_precision, "video_precision": spec.precision, "sha256": sha,
    }  # fmt: skip


# -- timing --------------------------------------------------------------------------------


def summarize_times(seconds: Sequence[float]) -> dict[str, float]:
    """mean, p50, p90, p99, min, max, std (ms) and spread = (p90 - p50) / p50 of timings."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    return {
        "mean": float(ms.mean()),
        "p50": p50,
        "p90": p90,
        "p99": p99,
        "min": float(ms.min()),
        "max": float(ms.max()),
        "std": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
        "spread": (p90 - p50) / p50 if p50 > 0 else float("nan"),
        "runs": len(ms),
    }


def time_runner(
    runner: Callable[[dict[str, np.ndarray]], tuple[float, float]],
    feeds: dict[str, np.ndarray],
    warmup: int,
    runs: int,
    desc: str = "",
) -> dict:
    """Warm up, then time ``runs`` calls.

    Returns:
        ``{"total", "text", "video"}`` statistics (``summarize_times``) and ``"times_ms"``, the
        raw per-call totals.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    for _ in range(warmup):
        runner(feeds)
    text, video = [], []
    for _ in tqdm(range(runs), desc=desc, leave=False, disable=None):
        text_s, video_s = runner(feeds)
        text.append(text_s)
        video.append(video_s)
    total = [t + v for t, v in zip(text, video)]
    return {
        "total": summarize_times(total),
        "text": summarize_times(text),
        "video": summarize_times(video),
        "times_ms": [round(t * 1e3, 4) for t in total],
    }


# -- onnxruntime profiling -----------------------------------------------------------------


def op_time_table(profile_files: dict[str, str | Path], top: int = 15) -> dict:
    """Node time by operator type from onnxruntime profile JSONs, for the last run in each.

    Args:
        profile_files: graph name -> the JSON trace ``end_profiling()`` wrote.
        top: how many operator types (and single nodes) to keep.

    Returns:
        ``{"op_types": [{"op_type", "calls", "ms", "percent"}], "top_nodes": [...],
        "graph_ms": {graph: node ms}, "total_ms"}``, sorted by time.
    """
    by_type: dict[str, list[float]] = {}
    nodes: list[dict] = []
    graph_ms: dict[str, float] = {}
    for graph, path in profile_files.items():
        events = json.loads(Path(path).read_text())
        runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
        if not runs:
            continue
        last = runs[-1]
        begin, end = last["ts"], last["ts"] + last["dur"]
        graph_ms[graph] = 0.0
        for event in events:
            if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
                continue
            if not begin <= event["ts"] <= end:
                continue
            op_type = event.get("args", {}).get("op_name", "?")
            ms = event["dur"] / 1e3
            entry = by_type.setdefault(op_type, [0, 0.0])
            entry[0] += 1
            entry[1] += ms
            graph_ms[graph] += ms
            node = event["name"].removesuffix("_kernel_time")
            nodes.append({"graph": graph, "node": node, "op_type": op_type, "ms": ms})
    total = sum(ms for _, ms in by_type.values())
    rows = [
        {"op_type": op, "calls": calls, "ms": ms, "percent": 100 * ms / total if total else 0.0}
        for op, (calls, ms) in sorted(by_type.items(), key=lambda item: -item[1][1])
    ]
    nodes.sort(key=lambda node: -node["ms"])
    return {"op_types": rows[:top], "top_nodes": nodes[:top], "graph_ms": graph_ms,
            "total_ms": total}  # fmt: skip


def profile_ort(
    name: str,
    manifest: Manifest,
    feeds: dict[str, np.ndarray],
    threads: int,
    out_dir: Path,
    tag: str,
    top: int = 15,
) -> dict:
    """One profiled call (after one warm-up) of an ORT row; per-op-type table of its nodes.

    The raw traces are kept in ``out_dir/profiles/``.
    """
    with tempfile.TemporaryDirectory(prefix="ort-profile-") as work:
        runner, _ = open_runner(name, manifest, None, "cpu", threads, profile_dir=work)
        try:
            runner(feeds)
            runner(feeds)
            traces = {
                "text_encoder": runner.text_backend.end_profiling(),
                "video": runner.video_backend.end_profiling(),
            }
        finally:
            runner.close()
        table = op_time_table(traces, top)
        keep = out_dir / "profiles"
        keep.mkdir(parents=True, exist_ok=True)
        table["files"] = {}
        for graph, trace in traces.items():
            target = keep / f"latency-{tag}-{name}-{graph}.json"
            shutil.move(trace, target)
            table["files"][graph] = str(target)
    return table


# -- targets -------------------------------------------------------------------------------


def _p50(row: dict | None) -> float | None:
    if row is None or row.get("status") != "timed":
        return None
    return row["latency"]["total"]["p50"]


def evaluate_targets(rows: list[dict], sweep: dict[str, list[dict]], setting: dict) -> dict:
    """The issue's three targets (CPU, paper setting) with pass/fail, or why not evaluated."""
    by_name = {row["backend"]: row for row in rows}
    at_paper = (
        setting["preset"] == PAPER_SETTING["preset"]
        and setting["frames"] == PAPER_SETTING["frames"]
        and tuple(setting["size"]) == PAPER_SETTING["size"]
    )
    targets = []

    torch_row, ort_row = by_name.get("torch"), by_name.get("ort")
    target = {
        "name": "ort_fp32_vs_torch",
        "description": "ORT FP32 speed-up over PyTorch eager (CPU)",
        "threshold": TARGET_ORT_VS_TORCH,
        "comparison": ">=",
    }
    if _p50(torch_row) is None or _p50(ort_row) is None:
        target["reason"] = "needs timed torch and ort rows"
    elif torch_row["device"] != "cpu":
        target["reason"] = f"torch ran on {torch_row['device']}; the target is CPU vs CPU"
    else:
        target["value"] = _p50(torch_row) / _p50(ort_row)
    targets.append(target)

    int8_rows = [
        by_name[n] for n in ("ort-int8", "ort-int8-trt") if _p50(by_name.get(n)) is not None
    ]
    target = {
        "name": "int8_vs_ort_fp32",
        "description": "best INT8 (ORT CPU) speed-up over ORT FP32",
        "threshold": TARGET_INT8_VS_ORT,
        "comparison": ">=",
    }
    if _p50(ort_row) is None or not int8_rows:
        target["reason"] = "needs timed ort and ort-int8 (or ort-int8-trt) rows"
    else:
        best = min(int8_rows, key=_p50)
        target["value"] = _p50(ort_row) / _p50(best)
        target["backend"] = best["backend"]
    targets.append(target)

    target = {
        "name": "e4_vs_e1",
        "description": "time of E=4 expressions / E=1 on one video",
        "threshold": TARGET_E4_VS_E1,
        "comparison": "<=",
    }
    ratios = {}
    for backend, entries in sweep.items():
        es = {entry["expressions"]: entry for entry in entries}
        if 1 in es and 4 in es:
            ratios[backend] = es[4]["p50"] / es[1]["p50"]
    if ratios:
        cpu_rows = [n for n in ratios if by_name[n]["device"] == "cpu"]
        headline = "ort" if "ort" in ratios else (cpu_rows or list(ratios))[0]
        target |= {"value": ratios[headline], "backend": headline, "per_backend": ratios}
        target["per_backend_passed"] = {n: r <= TARGET_E4_VS_E1 for n, r in ratios.items()}
    else:
        target["reason"] = "needs an E sweep with E=1 and E=4 (the bundle's E profile must reach 4)"
    targets.append(target)

    for target in targets:
        value = target.get("value")
        if value is None:
            target["passed"] = None
        elif target["comparison"] == ">=":
            target["passed"] = bool(value >= target["threshold"])
        else:
            target["passed"] = bool(value <= target["threshold"])
    note = None
    if not at_paper:
        note = (
            f"the targets are defined at {PAPER_SETTING['preset']}, {PAPER_SETTING['frames']} "
            f"frames at {PAPER_SETTING['size'][0]}x{PAPER_SETTING['size'][1]}; this run is "
            f"{setting['preset']}, {setting['frames']} frames at "
            f"{setting['size'][0]}x{setting['size'][1]}: indicative only"
        )
    return {"at_paper_setting": at_paper, "note": note, "targets": targets}


# -- the benchmark -------------------------------------------------------------------------


def _expand_backends(names: Sequence[str], manifest: Manifest) -> list[str]:
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


def default_tag(setting: dict) -> str:
    """``<preset>-<H>x<W>-t<T>-e<E>``."""
    height, width = setting["size"]
    return f"{setting['preset']}-{height}x{width}-t{setting['frames']}-e{setting['expressions']}"


def run_benchmark(
    bundle: str | Path,
    backends: Sequence[str] = DEFAULT_BACKENDS,
    *,
    frames: int | None = None,
    expressions: int = 1,
    e_sweep: Sequence[int] = (1, 2, 4),
    text_length: int = 20,
    warmup: int = 3,
    runs: int = 10,
    threads: int | None = None,
    torch_device: str = "auto",
    profile: bool = False,
    gemm_size: int = 2048,
    out_dir: str | Path | None = None,
    tag: str | None = None,
    write: bool = True,
    command: str | None = None,
) -> dict:
    """Time every backend on one bundle; write JSON, markdown and a plot.

    Args:
        bundle: the bundle directory.
        backends: rows, keys of ``BACKENDS`` ("ort-int8" adds "ort-int8-trt" when present).
        frames: T (default: the bundle's profile opt; must be inside the profile).
        expressions: E of the main table.
        e_sweep: the E values timed for the sweep (clipped to the bundle's E profile).
        text_length: L, clipped to the bundle's L profile.
        warmup, runs: untimed and timed calls per backend and shape.
        threads: torch and onnxruntime intra-op threads (default: all cores); sets
            ``torch.set_num_threads`` for the process.
        torch_device: "auto", "cpu" or "cuda[:i]" for the PyTorch row.
        profile: profile the ORT rows once with onnxruntime's profiler.
        gemm_size: n of the CPU GEMM peak measurements.
        out_dir: where the files go (default ``benchmarks/results/<machine>``).
        tag: file name tag (default ``<preset>-<H>x<W>-t<T>-e<E>``).
        write: write the files (the results are returned either way).
        command: the command line to record (default: ``sys.argv``).

    Returns:
        The results dict that is written as JSON.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    started = time.perf_counter()
    manifest = Manifest.load(bundle)
    threads = int(threads or cpu_count())
    torch.set_num_threads(threads)
    torch_device = resolve_torch_device(torch_device)
    frames = resolve_axis(manifest, "T", frames, "frames")
    expressions = resolve_axis(manifest, "E", expressions, "expressions")
    bounds = manifest.profiles["L"]
    length = min(max(int(text_length), bounds["min"]), bounds["max"])
    if length != text_length:
        log.warning("text length %d clipped to the bundle's L profile: %d", text_length, length)
    e_bounds = manifest.profiles["E"]
    sweep = sorted({e for e in e_sweep if e_bounds["min"] <= e <= e_bounds["max"]})
    dropped = sorted(set(e_sweep) - set(sweep))
    if dropped:
        log.warning("E sweep %s outside the bundle's E profile %d..%d: dropped",
                    dropped, e_bounds["min"], e_bounds["max"])  # fmt: skip
    names = _expand_backends(backends, manifest)
    machine = machine_info(torch_device)
    setting = {
        "preset": manifest.data["model"].get("name") or manifest.config.get("name"),
        "size": list(manifest.preprocessing["size"]),
        "frame_format": manifest.preprocessing["frame_format"],
        "frames": frames,
        "expressions": expressions,
        "text_length": length,
        "e_sweep": sweep,
        "warmup": warmup,
        "runs": runs,
        "threads": threads,
    }
    tag = tag or default_tag(setting)
    out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR / machine["slug"]
    log.info("benchmark %s on %s (%s), %d threads", tag, machine["cpu"],
             machine["gpu"] or "no GPU", threads)  # fmt: skip
    if (machine["load_average_start"] or 0) >= BUSY_LOAD:
        log.warning(
            "load average %.2f before the benchmark: other processes are running, and with "
            "%d threads on %d cores their contention can inflate timings many times over",
            machine["load_average_start"], threads, machine["cores"],
        )  # fmt: skip

    peaks = gemm_peaks(threads, gemm_size, cuda=torch.device(torch_device).type == "cuda")
    model = load_baseline_model(manifest, torch_device)
    frame_format = manifest.preprocessing["frame_format"]
    shapes = sorted({expressions, *sweep})
    feeds = {e: make_feeds(manifest, frames, e, length) for e in shapes}
    gflops = {e: count_gflops(model, frame_format, feeds[e], torch_device) for e in shapes}
    log.info("GFLOPs per call: %s", {e: round(g["total"], 2) for e, g in gflops.items()})

    status = available_backends()
    rows: list[dict] = []
    sweep_results: dict[str, list[dict]] = {}
    for name in names:
        row: dict[str, Any] = {"backend": name}
        try:
            runner, description = open_runner(name, manifest, model, torch_device, threads, status)
        except SkipBackend as error:
            log.info("%s skipped: %s", name, error)
            rows.append(row | {"status": "skipped", "reason": str(error)})
            continue
        row |= description | {"name": runner.name}
        measured: dict[int, dict] = {}
        try:
            for e in shapes:
                measured[e] = time_runner(runner, feeds[e], warmup, runs, f"{name} E={e}")
        except Exception as error:  # one failure must not lose the other rows
            log.exception("%s failed", name)
            rows.append(row | {"status": "failed", "reason": f"{type(error).__name__}: {error}"})
            continue
        finally:
            runner.close()
        main = measured[expressions]
        p50_s = main["total"]["p50"] / 1e3
        peak, peak_name = peak_for(peaks, description["device"], description["arithmetic"])
        achieved = gflops[expressions]["total"] / p50_s
        row |= {
            "status": "timed",
            "latency": {k: main[k] for k in ("total", "text", "video")},
            "times_ms": main["times_ms"],
            "gflops": gflops[expressions]["total"],
            "gflops_per_s": achieved,
            "peak": peak_name,
            "peak_gflops_per_s": peak,
            "fraction_of_peak": achieved / peak if peak else None,
        }
        rows.append(row)
        if sweep:
            base = measured[sweep[0]]["total"]["p50"]
            sweep_results[name] = [
                {
                    "expressions": e,
                    "p50": measured[e]["total"]["p50"],
                    "p90": measured[e]["total"]["p90"],
                    "spread": measured[e]["total"]["spread"],
                    "text_p50": measured[e]["text"]["p50"],
                    "video_p50": measured[e]["video"]["p50"],
                    "ratio_to_first": measured[e]["total"]["p50"] / base,
                    "gflops": gflops[e]["total"],
                }
                for e in sweep
            ]
        log.info("%s: p50 %.2f ms", name, main["total"]["p50"])

    torch_p50 = _p50(next((r for r in rows if r["backend"] == "torch"), None))
    for row in rows:
        if row["status"] == "timed":
            p50 = row["latency"]["total"]["p50"]
            row["speedup_vs_torch"] = torch_p50 / p50 if torch_p50 else None
            row["time_ratio_vs_torch"] = p50 / torch_p50 if torch_p50 else None

    targets = evaluate_targets(rows, sweep_results, setting)
    profiles = {}
    if profile:
        for row in rows:
            if row["status"] == "timed" and row["runtime"] == "onnxruntime":
                log.info("profiling %s", row["backend"])
                profiles[row["backend"]] = profile_ort(
                    row["backend"], manifest, feeds[expressions], threads, out_dir, tag
                )
    timed = [r for r in rows if r["status"] == "timed"]
    fastest = min(timed, key=_p50) if timed else None
    files = manifest.data["files"]
    results = {
        "command": command if command is not None else shlex.join([sys.executable, *sys.argv]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "versions": package_versions(),
        "bundle": {
            "path": str(manifest.root),
            "preset": setting["preset"],
            "checkpoint": manifest.data["model"].get("checkpoint"),
            "random_weights_seed": manifest.data["model"].get("random_weights_seed"),
            "profiles": manifest.profiles,
            "precisions": {g: manifest.precisions(g) for g in ("text_encoder", "video")},
            "video_onnx_sha256": files.get("video.onnx", {}).get("sha256"),
            "text_encoder_onnx_sha256": files.get("text_encoder.onnx", {}).get("sha256"),
        },
        "setting": setting,
        "gflops": {str(e): g for e, g in gflops.items()},
        "peaks": peaks,
        "backends": rows,
        "e_sweep": sweep_results,
        "targets": targets,
        "paper": PAPER
        | {
            "measured_device": _device_label(fastest, machine) if fastest else None,
            "measured_best_p50_ms": _p50(fastest),
            "measured_best_backend": fastest["backend"] if fastest else None,
        },
        "profiles": profiles,
        "notes": [
            "backends are timed one after another in this process (not interleaved)",
            "ORT rows run onnxruntime's CPU execution provider; trt rows run on the GPU",
            "FP16 graphs on a CPU are held against the BF16 GEMM peak (no FP16 GEMM on CPU)",
            (
                "INT8 graphs keep float ops (softmax, layer norm, ...); % of the INT8 peak is "
                "a lower bound on the quantized GEMMs' efficiency"
            ),
        ],
        "seconds": time.perf_counter() - started,
    }
    machine["load_average_end"] = load_average()
    if write:
        write_outputs(results, out_dir, tag)
    return results


# -- reports -------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}{suffix}"


def _device_label(row: dict, machine: dict) -> str:
    if row.get("device") == "cuda":
        return f"GPU {machine.get('gpu') or 'cuda'}"
    return f"CPU {machine['cpu']} ({machine['cores']} cores)"


def format_markdown(results: dict) -> str:
    """The report: latency table, E sweep, targets (with the paper's figure), profiles."""
    setting, machine, peaks = results["setting"], results["machine"], results["peaks"]
    height, width = setting["size"]
    lines = [
        (
            f"# Latency — {setting['preset']}, {setting['frames']} frames at {height}x{width}, "
            f"E={setting['expressions']}, L={setting['text_length']}"
        ),
        "",
        f"Device: CPU {machine['cpu']} ({machine['cores']} cores, {setting['threads']} thread(s))"
        + (f"; GPU {machine['gpu']}" if machine.get("gpu") else "; no GPU")
        + f". {setting['warmup']} warm-up + {setting['runs']} timed calls per backend; one call "
        "= text encoder + video graph, uint8 frames and token ids in, raw outputs out.",
        "",
    ]
    loads = [machine.get("load_average_start"), machine.get("load_average_end")]
    if any(load is not None and load >= BUSY_LOAD for load in loads):
        warning = (
            f"**Warning**: load average {_fmt(loads[0])} at the start, {_fmt(loads[1])} at the "
            "end: other processes shared the CPU, so these timings (torch's OpenMP threads "
            "above all) may be inflated; rerun on an idle machine."
        )
        lines += [warning, ""]
    g = results["gflops"][str(setting["expressions"])]
    lines.append(
        f"GFLOPs per call: {g['total']:.4g} (text {g['text']:.4g} + video {g['video']:.4g}; "
        "FlopCounterMode, 2 per MAC)."
    )
    cpu = peaks["cpu"]
    flags = [f for f, on in peaks.get("cpu_flags", {}).items() if on and ("vnni" in f or "amx" in f
             or "bf16" in f)]  # fmt: skip
    peak_text = (
        f"Measured GEMM peaks (CPU): FP32 {_fmt(cpu['fp32'].get('gflops'), 1)} GFLOP/s "
        f"(numpy {_fmt(cpu['fp32_numpy'].get('gflops'), 1)}), BF16 "
        f"{_fmt(cpu['bf16'].get('gflops'), 1)} GFLOP/s, INT8 {_fmt(cpu['int8'].get('gflops'), 1)} "
        f"GOP/s (CPU flags: {', '.join(flags) or 'no VNNI/AMX/BF16'})"
    )
    if "cuda" in peaks:
        cuda = peaks["cuda"]
        peak_text += "; GPU: " + ", ".join(
            f"{k.upper()} {_fmt(v.get('gflops'), 0)}" for k, v in cuda.items()
        )
    lines += [peak_text + ".", ""]

    lines += [
        (
            "| backend | device | precision (text/video) | p50 ms | p90 | p99 | spread | "
            "text ms | video ms | GFLOP/s | % of peak | × vs torch |"
        ),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    skipped = []
    for row in results["backends"]:
        if row["status"] != "timed":
            skipped.append(row)
            continue
        total = row["latency"]["total"]
        fraction = row.get("fraction_of_peak")
        lines.append(
            f"| {row['backend']} | {row['device']} | {row['text_precision']}/"
            f"{row['video_precision']} | {total['p50']:.2f} | {total['p90']:.2f} | "
            f"{total['p99']:.2f} | {100 * total['spread']:.1f}% | "
            f"{row['latency']['text']['p50']:.2f} | {row['latency']['video']['p50']:.2f} | "
            f"{row['gflops_per_s']:.1f} | "
            f"{_fmt(None if fraction is None else 100 * fraction, 1, '%')} ({row['peak']}) | "
            f"{_fmt(row.get('speedup_vs_torch'), 2, '×')} |"
        )
    if skipped:
        lines += ["", "Not timed:"]
        lines += [f"- {row['backend']} ({row['status']}): {row['reason']}" for row in skipped]

    sweep = results["e_sweep"]
    if sweep:
        names = list(sweep)
        lines += [
            "",
            f"## Expressions per video (E sweep; p50 ms and × the E={setting['e_sweep'][0]} time)",
            "",
            "| E | GFLOPs | " + " | ".join(names) + " |",
            "|---:|---:|" + "---:|" * len(names),
        ]
        for index, e in enumerate(setting["e_sweep"]):
            cells = [
                f"{sweep[n][index]['p50']:.2f} ({sweep[n][index]['ratio_to_first']:.2f}×)"
                for n in names
            ]
            lines.append(f"| {e} | {results['gflops'][str(e)]['total']:.4g} | "
                         + " | ".join(cells) + " |")  # fmt: skip

    targets = results["targets"]
    lines += ["", "## Targets (CPU, at the paper setting)", ""]
    if targets["note"]:
        lines += [f"Note: {targets['note']}.", ""]
    lines += ["| target | measured | required | result |", "|---|---:|---:|---|"]
    missed = False
    for target in targets["targets"]:
        what = target["description"] + (f" [{target['backend']}]" if target.get("backend") else "")
        if target["passed"] is None:
            result, value = f"not evaluated: {target['reason']}", "–"
        else:
            result = "pass" if target["passed"] else "**MISSED**"
            missed |= not target["passed"]
            value = f"{target['value']:.2f}×"
        lines.append(f"| {what} | {value} | {target['comparison']} {target['threshold']}× | "
                     f"{result} |")  # fmt: skip
    per_backend = next(
        (t.get("per_backend") for t in targets["targets"] if t["name"] == "e4_vs_e1"), None
    )
    if per_backend:
        lines += ["", "E=4 / E=1 per backend: " + ", ".join(
            f"{n} {r:.2f}×" for n, r in per_backend.items()
        )]  # fmt: skip
    if missed and not results["profiles"]:
        lines += ["", "A target is missed: rerun with --profile for onnxruntime's per-op times."]
    paper = results["paper"]
    lines += [
        "",
        f"Paper: {paper['latency_ms']:.0f} ms per video on an {paper['device']} ({paper['kind']}),"
        f" {paper['setting']}. Measured here: "
        + (
            f"best p50 {paper['measured_best_p50_ms']:.2f} ms ({paper['measured_best_backend']}) "
            f"on {paper['measured_device']}, {setting['preset']} {setting['frames']} frames at "
            f"{height}x{width} — a different device"
            + ("" if targets["at_paper_setting"] else " and setting")
            + ", not a like-for-like comparison."
            if paper["measured_best_p50_ms"] is not None
            else "nothing timed."
        ),
    ]

    for name, table in results["profiles"].items():
        graphs = ", ".join(f"{g} {ms:.2f} ms" for g, ms in table["graph_ms"].items())
        lines += [
            "",
            f"## onnxruntime profile: {name} (node time {table['total_ms']:.2f} ms: {graphs})",
            "",
            "| op type | calls | ms | % |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {r['op_type']} | {r['calls']} | {r['ms']:.2f} | {r['percent']:.1f} |"
            for r in table["op_types"]
        ]
    lines += ["", f"Command: `{results['command']}`", ""]
    return "\n".join(lines)


def write_plot(results: dict, path: str | Path) -> Path | None:
    """A bar chart of p50 per backend (text + video, p90 whiskers) and the E sweep.

    Returns the PNG's path, or None (with a warning) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'proxyformer[bench]'): no plot")
        return None
    timed = [r for r in results["backends"] if r["status"] == "timed"]
    sweep = results["e_sweep"]
    figure, axes = plt.subplots(1, 2 if sweep else 1, figsize=(12 if sweep else 7, 4.5))
    axes = np.atleast_1d(axes)
    names = [r["backend"] for r in timed]
    text = [r["latency"]["text"]["p50"] for r in timed]
    video = [r["latency"]["video"]["p50"] for r in timed]
    total = [r["latency"]["total"]["p50"] for r in timed]
    p90 = [r["latency"]["total"]["p90"] for r in timed]
    x = np.arange(len(timed))
    axes[0].bar(x, text, label="text encoder", color="#8fb3d9")
    axes[0].bar(x, video, bottom=text, label="video graph", color="#2f6ea8")
    axes[0].errorbar(x, total, yerr=[np.zeros(len(x)), np.subtract(p90, total)], fmt="none",
                     ecolor="black", capsize=4, label="p50 → p90")  # fmt: skip
    for xi, row in zip(x, timed):
        speedup = row.get("speedup_vs_torch")
        if speedup:
            axes[0].annotate(f"{speedup:.2f}×", (xi, row["latency"]["total"]["p90"]),
                             ha="center", va="bottom", fontsize=8)  # fmt: skip
    paper = results["paper"]
    axes[0].axhline(
        paper["latency_ms"],
        color="#c0392b",
        linestyle="--",
        linewidth=1,
        label=f"paper {paper['latency_ms']:.0f} ms ({paper['device']}, GPU)",
    )
    axes[0].set_xticks(x, names, rotation=20)
    axes[0].set_ylabel("ms per call (p50)")
    setting = results["setting"]
    axes[0].set_title(
        f"{setting['preset']} T={setting['frames']} {setting['size'][0]}x{setting['size'][1]} "
        f"E={setting['expressions']}", fontsize=10,
    )  # fmt: skip
    axes[0].set_ylim(0, 1.3 * max([*p90, paper["latency_ms"]]))
    axes[0].legend(fontsize=8, ncol=2, loc="upper left")
    if sweep:
        for name, entries in sweep.items():
            axes[1].plot([e["expressions"] for e in entries], [e["p50"] for e in entries],
                         marker="o", label=name)  # fmt: skip
        axes[1].set_xlabel("expressions E on one video")
        axes[1].set_ylabel("ms per call (p50)")
        axes[1].set_xticks(setting["e_sweep"])
        axes[1].set_title("E sweep", fontsize=10)
        axes[1].legend(fontsize=8)
    machine = results["machine"]
    figure.suptitle(
        f"{machine['cpu']} ({machine['cores']} cores)"
        + (f" + {machine['gpu']}" if machine.get("gpu") else ""), fontsize=10,
    )  # fmt: skip
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_outputs(results: dict, out_dir: str | Path, tag: str) -> dict[str, Path]:
    """Write ``latency-<tag>.json``, ``.md`` and ``.png`` into ``out_dir``; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / f"latency-{tag}.json",
        "markdown": out_dir / f"latency-{tag}.md",
    }
    results["files"] = {k: str(v) for k, v in paths.items()}
    plot = write_plot(results, out_dir / f"latency-{tag}.png")
    if plot is not None:
        paths["png"] = plot
        results["files"]["png"] = str(plot)
    paths["json"].write_text(json.dumps(results, indent=2, default=str) + "\n")
    paths["markdown"].write_text(format_markdown(results))
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths


# -- command line --------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,2,4, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True, help="an exported bundle (manifest.json)")
    parser.add_argument(
        "--backends",
        default=",".join(DEFAULT_BACKENDS),
        help=f"comma-separated rows from {', '.join(BACKENDS)}",
    )
    parser.add_argument(
        "--frames", type=int, default=None, help="T (default: the bundle's profile opt)"
    )
    parser.add_argument("--expressions", type=int, default=1, help="E of the main table")
    parser.add_argument(
        "--e-sweep",
        type=_int_list,
        default=[1, 2, 4],
        help="E values for the sweep (clipped to the bundle's profile)",
    )
    parser.add_argument("--text-length", type=int, default=20, help="L tokens per expression")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch and onnxruntime intra-op threads (default: all cores)",
    )
    parser.add_argument("--torch-device", default="auto", help="auto, cpu or cuda[:i]")
    parser.add_argument("--gemm-size", type=int, default=2048, help="n of the CPU GEMM peaks")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the ORT rows once; per-op-type node time tables",
    )
    parser.add_argument("--out", default=None, help="default: benchmarks/results/<machine>")
    parser.add_argument("--tag", default=None, help="file name tag (default from the setting)")
    parser.add_argument(
        "--preset", default=None, help="check that the bundle is this preset (the bundle decides)"
    )
    parser.add_argument(
        "--size",
        type=parse_size,
        default=None,
        help="check that the bundle's frame size is HxW (the bundle decides)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark from the command line; print the markdown report."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    manifest = Manifest.load(args.bundle)
    preset = manifest.data["model"].get("name")
    if args.preset is not None and args.preset != preset:
        raise SystemExit(f"--preset {args.preset}: the bundle {args.bundle} is preset {preset}")
    if args.size is not None and list(args.size) != list(manifest.preprocessing["size"]):
        raise SystemExit(
            f"--size {args.size[0]}x{args.size[1]}: the bundle {args.bundle} is "
            f"{'x'.join(str(s) for s in manifest.preprocessing['size'])} (export another bundle)"
        )
    try:
        results = run_benchmark(
            args.bundle,
            args.backends.split(","),
            frames=args.frames,
            expressions=args.expressions,
            e_sweep=args.e_sweep,
            text_length=args.text_length,
            warmup=args.warmup,
            runs=args.runs,
            threads=args.threads,
            torch_device=args.torch_device,
            profile=args.profile,
            gemm_size=args.gemm_size,
            out_dir=args.out,
            tag=args.tag,
            command=shlex.join(["python", "benchmarks/latency.py", *(argv or sys.argv[1:])]),
        )
    except (ValueError, BundleError) as error:
        raise SystemExit(f"error: {error}") from None
    print(format_markdown(results))
    print(f"written: {', '.join(results['files'].values())}")
    return results


if __name__ == "__main__":
    main()
