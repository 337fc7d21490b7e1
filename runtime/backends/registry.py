"""Choosing a backend: what this machine can run (:func:`available_backends`) and
:func:`load_backend`, by name or ``"auto"`` by what is installed and present (never by a file
suffix), logging the choice and why the others were passed over.

``"auto"`` prefers, in order: native TensorRT (with a matching engine), onnxruntime CUDA,
OpenVINO on the CPU (for the precisions it runs), onnxruntime on the CPU. OpenVINO comes before
onnxruntime on a CPU because it was 1.7x (FP32) to 4.2x (BF16 on AMX) faster on the paper
model's video graph (issue 21).
"""

from __future__ import annotations

import importlib
import inspect
import logging
from pathlib import Path
from typing import Any

from runtime.backends.base import (
    AVAILABLE,
    Backend,
    BackendUnavailable,
    CudaError,
    EngineMismatchError,
    as_manifest,
)
from runtime.backends.gpu import gpu_status, import_cudart
from runtime.backends.openvino import OPENVINO_PRECISIONS, OpenVINOBackend, openvino_status
from runtime.backends.ort import OnnxRuntimeBackend, import_onnxruntime, tensorrt_ep_status
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
    if provider == "TensorrtExecutionProvider":
        problem = tensorrt_ep_status(ort)
        if problem is not None:
            return problem
    # onnxruntime-gpu lists its providers whether or not a GPU is present.
    return gpu_status()


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


# The same option under each backend's name: TensorRTBackend takes ``device``, onnxruntime
# ``device_id`` (its provider option's name). Without this, "auto" dropped the GPU choice of
# whichever backend it chose, and GPU 1 silently ran on GPU 0.
OPTION_ALIASES = {"device": "device_id", "device_id": "device"}


def backend_options(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with each aliased option under the name ``cls`` takes (``device`` <->
    ``device_id``); ValueError when both names are given with different values."""
    parameters = inspect.signature(cls.__init__).parameters
    renamed = dict(options)
    for name, alias in OPTION_ALIASES.items():
        if name in renamed and name not in parameters and alias in parameters:
            value = renamed.pop(name)
            if alias in renamed and renamed[alias] != value:
                raise ValueError(
                    f"options {name}={value!r} and {alias}={renamed[alias]!r} name the same "
                    "thing (the CUDA device) with different values"
                )
            renamed[alias] = value
    return renamed


def _accepted(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    parameters = inspect.signature(cls.__init__).parameters
    options = backend_options(cls, options)
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
    named = {"onnxruntime": OnnxRuntimeBackend, "ort": OnnxRuntimeBackend,
             "tensorrt": TensorRTBackend, "openvino": OpenVINOBackend, "ov": OpenVINOBackend}
    if choice in named:
        cls = named[choice]
        logger.info("%s %s: %s (asked for by name)", graph, precision, cls.__name__)
        return cls(manifest, graph, precision, **backend_options(cls, options))
    if choice != "auto":
        raise ValueError(
            f"backend {backend!r} is not one of 'auto', 'onnxruntime', 'ort', 'tensorrt', "
            "'openvino', 'ov'"
        )
    if precision in RUNTIME_PRECISIONS:
        return _auto_runtime_precision(manifest, graph, precision, options)

    reasons: list[str] = []
    chosen = _auto_tensorrt(manifest, graph, precision, options, reasons)
    if chosen is not None:
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


# What makes "auto" pass over native TensorRT to the next backend, with the reason logged: the
# bundle's side (no engine, its plan file missing, an engine for another TensorRT or GPU, a
# plan that does not deserialize, engine I/O that differs from the manifest: BundleError and
# its EngineMismatchError), the machine's (no execution context, a missing library:
# BackendUnavailable) and CUDA's (cudaSetDevice or cudaMalloc failing: CudaError).
TENSORRT_FALLBACK_ERRORS = (BundleError, BackendUnavailable, CudaError)


def _auto_tensorrt(
    manifest: Manifest, graph: str, precision: str, options: dict[str, Any], reasons: list[str]
) -> Backend | None:
    """Native TensorRT for "auto", or None with the reason appended to ``reasons``."""
    if not _has_engine(manifest, precision, graph):
        reasons.append(f"TensorRT: the bundle has no {precision} engine for {graph}")
        return None
    # No separate probe first: the constructor checks the plan file, then imports tensorrt,
    # then CUDA, and each failure is a reason to fall back (TENSORRT_FALLBACK_ERRORS).
    try:
        chosen = TensorRTBackend(manifest, graph, precision, **_accepted(TensorRTBackend, options))
    except TENSORRT_FALLBACK_ERRORS as error:
        logger.warning("auto: not using the TensorRT %s engine for %s: %s", precision, graph, error)
        kind = "engine mismatch" if isinstance(error, EngineMismatchError) else type(error).__name__
        reasons.append(f"TensorRT ({kind}): {error}")
        return None
    logger.info(
        "%s %s: auto chose TensorRT (tensorrt, a CUDA GPU and a matching engine)", graph, precision
    )
    return chosen


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
