"""Choosing a backend: what this machine can run (:func:`available_backends`) and
:func:`load_backend`, by name or ``"auto"`` by what is installed and present (never by a file
suffix), logging the choice and why the others were passed over.

``"auto"`` prefers, in order: native TensorRT (with a matching engine), onnxruntime CUDA,
OpenVINO on the CPU (for the precisions it runs), onnxruntime on the CPU. OpenVINO comes before
onnxruntime on a CPU because it was 1.7x (FP32) to 4.2x (BF16 on AMX) faster on the paper
model's video graph (issue 21).
"""

from __future__ import annotations

import ctypes.util
import importlib
import importlib.util
import inspect
import logging
from pathlib import Path
from typing import Any

from runtime.backends.base import (
    AVAILABLE,
    Backend,
    BackendUnavailable,
    EngineMismatchError,
    as_manifest,
)
from runtime.backends.gpu import gpu_status, import_cudart
from runtime.backends.openvino import OPENVINO_PRECISIONS, OpenVINOBackend, openvino_status
from runtime.backends.ort import OnnxRuntimeBackend, import_onnxruntime
from runtime.backends.trt import TensorRTBackend, import_tensorrt
from runtime.manifest import BundleError, Manifest
from runtime.precisions import PRECISIONS, RUNTIME_PRECISIONS, precision_name

logger = logging.getLogger(__name__)


def _tensorrt_status() -> str:
    try:
        trt = import_tensorrt()
    except BackendUnavailable as error:
        return str(error)
    try:
        import_cudart()
    except ImportError:
        try:
            importlib.import_module("pycuda.driver")
        except ImportError:
            return (
                f"tensorrt {trt.__version__} is installed but neither cuda-python nor pycuda "
                "is (pip install cuda-python)"
            )
    return gpu_status()


def _ort_provider_status(provider: str) -> str:
    try:
        ort = import_onnxruntime()
    except BackendUnavailable as error:
        return str(error)
    available = ort.get_available_providers()
    if provider not in available:
        return (
            f"{provider} is not in this onnxruntime {ort.__version__} (available: "
            f"{', '.join(available)}); install onnxruntime-gpu"
        )
    if provider == "CPUExecutionProvider":
        return AVAILABLE
    if provider == "TensorrtExecutionProvider" and not _tensorrt_libraries_present():
        return (
            "TensorrtExecutionProvider needs the TensorRT libraries (libnvinfer), which were "
            "not found; pip install tensorrt"
        )
    # onnxruntime-gpu lists its providers whether or not a GPU is present.
    return gpu_status()


def _tensorrt_libraries_present() -> bool:
    """Whether libnvinfer, which the TensorRT EP loads, is there (tensorrt wheels or system)."""
    if any(importlib.util.find_spec(name) for name in ("tensorrt_libs", "tensorrt")):
        return True
    return ctypes.util.find_library("nvinfer") is not None


def available_backends() -> dict[str, str]:
    """Each backend -> "available" or the reason it cannot run here.

    Keys: "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt",
    "openvino-cpu".
    """
    return {
        "onnxruntime-cpu": _ort_provider_status("CPUExecutionProvider"),
        "onnxruntime-cuda": _ort_provider_status("CUDAExecutionProvider"),
        "onnxruntime-tensorrt": _ort_provider_status("TensorrtExecutionProvider"),
        "tensorrt": _tensorrt_status(),
        "openvino-cpu": openvino_status(),
    }


def _has_engine(manifest: Manifest, precision: str, graph: str) -> bool:
    try:
        manifest.engine(precision, graph)
    except BundleError:
        return False
    return True


def _accepted(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    parameters = inspect.signature(cls.__init__).parameters
    kept = {k: v for k, v in options.items() if k in parameters}
    dropped = sorted(set(options) - set(kept))
    if dropped:
        logger.info("options %s do not apply to %s and are ignored", dropped, cls.__name__)
    return kept


def load_backend(
    manifest: Manifest | str | Path,
    graph: str,
    backend: str = "auto",
    precision: str = "fp32",
    **options: Any,
) -> Backend:
    """Load one graph of the bundle on the named backend.

    ``backend="auto"`` picks native TensorRT when tensorrt imports, a CUDA GPU is present and
    the manifest has an engine for this precision and graph (and that engine matches this
    machine); else onnxruntime with the CUDA provider when onnxruntime-gpu and a GPU are
    there; else OpenVINO on the CPU when openvino is installed and runs the precision
    ("fp32", "bf16", "int8-cpu"); else onnxruntime on CPU. The choice and its reason are
    logged. "bf16" is OpenVINO's alone: without OpenVINO (or a CPU with BF16) it is an error,
    not a fallback.

    Args:
        manifest: the bundle's manifest (or the bundle directory).
        graph: "text_encoder" or "video".
        backend: "onnxruntime" (alias "ort"), "tensorrt", "openvino" (alias "ov") or "auto".
        precision: "fp32", "fp16", "int8-tensorrt" or "int8-cpu" (bundle variants), or
            "bf16" (the fp32 graph run in BF16, OpenVINO only).
        **options: passed to the backend's constructor (with "auto", options the chosen
            backend does not take are dropped, and logged).

    Returns:
        The backend.
    """
    manifest = as_manifest(manifest)
    precision = precision_name(precision, PRECISIONS + RUNTIME_PRECISIONS)
    choice = backend.lower()
    if choice in ("onnxruntime", "ort"):
        logger.info("%s %s: onnxruntime (asked for by name)", graph, precision)
        return OnnxRuntimeBackend(manifest, graph, precision, **options)
    if choice == "tensorrt":
        logger.info("%s %s: TensorRT (asked for by name)", graph, precision)
        return TensorRTBackend(manifest, graph, precision, **options)
    if choice in ("openvino", "ov"):
        logger.info("%s %s: OpenVINO (asked for by name)", graph, precision)
        return OpenVINOBackend(manifest, graph, precision, **options)
    if choice != "auto":
        raise ValueError(
            f"backend {backend!r} is not one of 'auto', 'onnxruntime', 'ort', 'tensorrt', "
            "'openvino', 'ov'"
        )
    if precision in RUNTIME_PRECISIONS:
        return _auto_runtime_precision(manifest, graph, precision, options)

    reasons = []
    trt_status = _tensorrt_status()
    if trt_status != AVAILABLE:
        reasons.append(f"TensorRT: {trt_status}")
    elif not _has_engine(manifest, precision, graph):
        reasons.append(f"TensorRT: the bundle has no {precision} engine for {graph}")
    else:
        try:
            chosen = TensorRTBackend(
                manifest, graph, precision, **_accepted(TensorRTBackend, options)
            )
        except EngineMismatchError as error:
            logger.warning("auto: not using the TensorRT engine: %s", error)
            reasons.append("TensorRT: the engine was built for another TensorRT or GPU")
        except BackendUnavailable as error:
            reasons.append(f"TensorRT: {error}")
        else:
            logger.info(
                "%s %s: auto chose TensorRT (tensorrt, a CUDA GPU and a matching engine)",
                graph,
                precision,
            )
            return chosen

    ort_options = _accepted(OnnxRuntimeBackend, options)
    if ort_options.get("providers") is not None:
        logger.info(
            "%s %s: auto chose onnxruntime with the given providers %s (%s)",
            graph,
            precision,
            ort_options["providers"],
            "; ".join(reasons),
        )
        return OnnxRuntimeBackend(manifest, graph, precision, **ort_options)
    ort_options.pop("providers", None)
    cuda_status = _ort_provider_status("CUDAExecutionProvider")
    if cuda_status == AVAILABLE:
        logger.info("%s %s: auto chose onnxruntime CUDA (%s)", graph, precision, "; ".join(reasons))
        return OnnxRuntimeBackend(manifest, graph, precision, providers=["cuda"], **ort_options)
    reasons.append(f"onnxruntime CUDA: {cuda_status}")

    chosen = _auto_openvino(manifest, graph, precision, options, reasons)
    if chosen is not None:
        return chosen
    logger.info("%s %s: auto chose onnxruntime CPU (%s)", graph, precision, "; ".join(reasons))
    return OnnxRuntimeBackend(manifest, graph, precision, **ort_options)


def _auto_openvino(
    manifest: Manifest, graph: str, precision: str, options: dict[str, Any], reasons: list[str]
) -> Backend | None:
    """OpenVINO for "auto" on a CPU, or None with the reason appended to ``reasons``."""
    status = openvino_status()
    if status != AVAILABLE:
        reasons.append(f"OpenVINO: {status}")
        return None
    if precision not in OPENVINO_PRECISIONS:
        reasons.append(f"OpenVINO: runs {', '.join(OPENVINO_PRECISIONS)}, not {precision}")
        return None
    try:
        chosen = OpenVINOBackend(manifest, graph, precision, **_accepted(OpenVINOBackend, options))
    except BackendUnavailable as error:
        reasons.append(f"OpenVINO: {error}")
        return None
    logger.info(
        "%s %s: auto chose OpenVINO CPU (installed; faster than onnxruntime on a CPU, "
        "issue 21) (%s)",
        graph,
        precision,
        "; ".join(reasons),
    )
    return chosen


def _auto_runtime_precision(
    manifest: Manifest, graph: str, precision: str, options: dict[str, Any]
) -> Backend:
    """The "auto" choice for a runtime precision (bf16): OpenVINO, which alone runs it."""
    status = openvino_status()
    if status != AVAILABLE:
        raise BackendUnavailable(
            f"precision {precision!r} runs only on the OpenVINO backend, which is not "
            f"available: {status}"
        )
    chosen = OpenVINOBackend(manifest, graph, precision, **_accepted(OpenVINOBackend, options))
    logger.info(
        "%s %s: auto chose OpenVINO CPU (the only backend that runs %s)",
        graph,
        precision,
        precision,
    )
    return chosen
