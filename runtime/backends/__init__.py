"""Inference backends for the bundle's graphs: onnxruntime (CPU, CUDA, TensorRT EP), TensorRT and
OpenVINO (CPU).

A backend is anything with ``name``, ``input_names``, ``output_names`` and
``infer(feeds) -> outputs``, both dicts of numpy arrays keyed by the tensor names the manifest
records; the three here derive from :class:`BaseBackend`, which checks every call's feeds
against the manifest (:func:`check_feeds`) before inference.

- ``base``: the errors, :func:`check_feeds` and :class:`BaseBackend`.
- ``ort``: :class:`OnnxRuntimeBackend` and the TensorRT EP's options.
- ``openvino``: :class:`OpenVINOBackend` (fp32, int8-cpu, and bf16 on CPUs with AVX512-BF16
  or AMX).
- ``trt``: :class:`TensorRTBackend`, the ``tensorrt`` import and the shared TensorRT logger.
- ``gpu``: CUDA memory, streams and graphs (cuda-python or pycuda) and the GPU probes.
- ``registry``: :func:`available_backends` and :func:`load_backend` (by name or ``"auto"``).

Nothing here imports torch: the heavy optional packages (onnxruntime, openvino, tensorrt,
cuda-python, pycuda) are imported inside the functions that need them.
"""

from runtime.backends.base import (
    AVAILABLE,
    BUILD_ENGINE,
    PRECISIONS,
    Backend,
    BackendUnavailable,
    BaseBackend,
    CudaError,
    EngineMismatchError,
    InputError,
    check_feeds,
)
from runtime.backends.gpu import gpu_info, gpu_status
from runtime.backends.openvino import (
    OPENVINO_PRECISIONS,
    OpenVINOBackend,
    check_capabilities,
    openvino_status,
)
from runtime.backends.ort import PROVIDER_ALIASES, OnnxRuntimeBackend, tensorrt_ep_options
from runtime.backends.registry import available_backends, load_backend
from runtime.backends.trt import (
    TensorRTBackend,
    check_engine_entry,
    compute_capability,
    import_tensorrt,
    tensorrt_logger,
)
from runtime.profiles import describe_shape

__all__ = [
    "AVAILABLE",
    "BUILD_ENGINE",
    "OPENVINO_PRECISIONS",
    "PRECISIONS",
    "PROVIDER_ALIASES",
    "Backend",
    "BackendUnavailable",
    "BaseBackend",
    "CudaError",
    "EngineMismatchError",
    "InputError",
    "OnnxRuntimeBackend",
    "OpenVINOBackend",
    "TensorRTBackend",
    "available_backends",
    "check_capabilities",
    "check_engine_entry",
    "check_feeds",
    "compute_capability",
    "describe_shape",
    "gpu_info",
    "gpu_status",
    "import_tensorrt",
    "load_backend",
    "openvino_status",
    "tensorrt_ep_options",
    "tensorrt_logger",
]
