"""CUDA memory, streams and graphs for the TensorRT backend (cuda-python or pycuda), and the
GPU probes (:func:`gpu_status`, :func:`gpu_info`) that the backends and export/engine.py use.

- cuda-python: ``cuda.bindings.runtime`` since 12.6 (the only path in 13.x); ``cuda.cudart``
  before that. Every call returns a tuple whose first item is a ``cudaError_t``; the rest are
  the outputs. ``cudaGraphInstantiate(graph, flags)`` has the CUDA 12+ signature.
- pycuda is accepted where cuda-python is absent; it has no CUDA-graph path here.

Nothing here imports torch; cuda-python and pycuda are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.base import AVAILABLE, BackendUnavailable, CudaError


def import_cudart() -> Any:
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (>= 12.6), else ``cuda.cudart``."""
    try:
        return importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        return importlib.import_module("cuda.cudart")  # cuda-python < 12.6 (gone in 13)


class CudaPython:
    """Device memory, streams and CUDA graphs through cuda-python's runtime API."""

    library = "cuda-python"
    supports_graphs = True

    def __init__(self, cudart: Any) -> None:
        self._rt = cudart

    def _call(self, what: str, result: tuple) -> Any:
        error = result[0]
        if error != self._rt.cudaError_t.cudaSuccess:
            _, name = self._rt.cudaGetErrorName(error)
            _, text = self._rt.cudaGetErrorString(error)
            raise CudaError(f"{what} failed: {_text(name)} ({_text(text)})")
        values = result[1:]
        return values[0] if len(values) == 1 else (values or None)

    def device_count(self) -> int:
        return int(self._call("cudaGetDeviceCount", self._rt.cudaGetDeviceCount()))

    def set_device(self, device: int) -> None:
        self._call("cudaSetDevice", self._rt.cudaSetDevice(device))

    @contextlib.contextmanager
    def activate(self, device: int) -> Iterator[None]:
        """Make ``device`` current on this thread (the runtime API's current device is
        per-thread, and a new thread starts on device 0)."""
        self.set_device(device)
        yield

    def device_info(self, device: int) -> tuple[str, tuple[int, int]]:
        prop = self._call("cudaGetDeviceProperties", self._rt.cudaGetDeviceProperties(device))
        return _text(prop.name), (int(prop.major), int(prop.minor))

    def malloc(self, nbytes: int) -> int:
        return int(self._call(f"cudaMalloc({nbytes})", self._rt.cudaMalloc(nbytes)))

    def free(self, pointer: int) -> None:
        self._call("cudaFree", self._rt.cudaFree(pointer))

    def stream_create(self) -> Any:
        return self._call("cudaStreamCreate", self._rt.cudaStreamCreate())

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def stream_destroy(self, stream: Any) -> None:
        self._call("cudaStreamDestroy", self._rt.cudaStreamDestroy(stream))

    def synchronize(self, stream: Any) -> None:
        self._call("cudaStreamSynchronize", self._rt.cudaStreamSynchronize(stream))

    def memcpy_htod_async(self, pointer: int, array: np.ndarray, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(
            "cudaMemcpyAsync(host to device)",
            self._rt.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, kind, stream),
        )

    def memcpy_dtoh_async(self, array: np.ndarray, pointer: int, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(
            "cudaMemcpyAsync(device to host)",
            self._rt.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes, kind, stream),
        )

    def begin_capture(self, stream: Any) -> None:
        # Thread-local mode: only this thread's unsafe calls (cudaMalloc, syncs) break capture.
        mode = self._rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._call("cudaStreamBeginCapture", self._rt.cudaStreamBeginCapture(stream, mode))

    def end_capture(self, stream: Any) -> Any:
        return self._call("cudaStreamEndCapture", self._rt.cudaStreamEndCapture(stream))

    def graph_instantiate(self, graph: Any) -> Any:
        return self._call("cudaGraphInstantiate", self._rt.cudaGraphInstantiate(graph, 0))

    def graph_launch(self, graph_exec: Any, stream: Any) -> None:
        self._call("cudaGraphLaunch", self._rt.cudaGraphLaunch(graph_exec, stream))

    def graph_destroy(self, graph: Any, graph_exec: Any) -> None:
        if graph_exec is not None:
            self._call("cudaGraphExecDestroy", self._rt.cudaGraphExecDestroy(graph_exec))
        if graph is not None:
            self._call("cudaGraphDestroy", self._rt.cudaGraphDestroy(graph))

    def release(self) -> None:
        """Nothing to undo: the runtime API's primary context outlives this object."""


class PyCuda:
    """The same operations through pycuda (no CUDA graphs; synchronous host copies)."""

    library = "pycuda"
    supports_graphs = False

    def __init__(self, driver: Any, device: int) -> None:
        self._drv = driver
        self._drv.init()
        self._device = self._drv.Device(device)
        # The primary context is the CUDA runtime's, which TensorRT uses. It is pushed for each
        # piece of work (activate), not once: a context pushed at construction is current only
        # on the constructing thread, so a backend used from another thread (a server's worker)
        # ran without one.
        self._context = self._device.retain_primary_context()
        self._allocations: dict[int, Any] = {}

    def device_count(self) -> int:
        return int(self._drv.Device.count())

    @contextlib.contextmanager
    def activate(self, device: int) -> Iterator[None]:
        """Push the device's primary context on this thread for the block, then pop it."""
        self._context.push()
        try:
            yield
        finally:
            self._drv.Context.pop()

    def device_info(self, device: int) -> tuple[str, tuple[int, int]]:
        major, minor = self._device.compute_capability()
        return str(self._device.name()), (int(major), int(minor))

    def malloc(self, nbytes: int) -> int:
        allocation = self._drv.mem_alloc(nbytes)
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, pointer: int) -> None:
        self._allocations.pop(pointer).free()

    def stream_create(self) -> Any:
        return self._drv.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def stream_destroy(self, stream: Any) -> None:
        """pycuda destroys the stream with its Python object."""

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def memcpy_htod_async(self, pointer: int, array: np.ndarray, stream: Any) -> None:
        # pycuda's *_async copies need page-locked host memory; the blocking copy on the
        # legacy stream is ordered before the work later queued on our (blocking) stream.
        self._drv.memcpy_htod(self._allocations[pointer], array)

    def memcpy_dtoh_async(self, array: np.ndarray, pointer: int, stream: Any) -> None:
        stream.synchronize()
        self._drv.memcpy_dtoh(array, self._allocations[pointer])

    def release(self) -> None:
        """Free what is left (call with the context active)."""
        for allocation in self._allocations.values():
            allocation.free()
        self._allocations.clear()


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.split(b"\x00", 1)[0].decode("utf-8", errors="replace").strip()
    return str(value).strip()


def load_cuda_api(device: int) -> CudaPython | PyCuda:
    """cuda-python if installed, else pycuda; raises BackendUnavailable naming both."""
    try:
        cudart = import_cudart()
    except ImportError as cuda_python_error:
        try:
            driver = importlib.import_module("pycuda.driver")
        except ImportError:
            raise BackendUnavailable(
                f"neither cuda-python ({cuda_python_error}) nor pycuda is installed; "
                "pip install cuda-python"
            ) from None
        return PyCuda(driver, device)
    api = CudaPython(cudart)
    api.set_device(device)
    return api


def gpu_status() -> str:
    """Return "available" when a CUDA GPU is visible, else the reason (no torch involved)."""
    try:
        cudart = import_cudart()
    except ImportError:
        pass
    else:
        try:
            count = CudaPython(cudart).device_count()
        except CudaError as error:
            return f"no usable CUDA GPU ({error})"
        return AVAILABLE if count > 0 else "no CUDA GPU (cudaGetDeviceCount returned 0)"
    try:
        driver = importlib.import_module("pycuda.driver")
        driver.init()
        count = driver.Device.count()
    except ImportError:
        gpus = Path("/proc/driver/nvidia/gpus")
        if gpus.is_dir() and any(gpus.iterdir()):
            return AVAILABLE
        return "no NVIDIA GPU driver found (/proc/driver/nvidia/gpus is missing or empty)"
    except Exception as error:  # noqa: BLE001 - pycuda raises its own types without a driver
        return f"no usable CUDA GPU ({error})"
    return AVAILABLE if count > 0 else "no CUDA GPU (pycuda found 0 devices)"


def gpu_info(device: int = 0) -> dict[str, str]:
    """Name and compute capability ("8.6") of a CUDA GPU, through cuda-python's runtime API.

    Raises:
        BackendUnavailable: without cuda-python, without a usable CUDA GPU, or when
            ``device`` does not exist.
    """
    try:
        api = CudaPython(import_cudart())
    except ImportError:
        raise BackendUnavailable("cuda-python is not installed (pip install cuda-python)") from None
    try:
        count = api.device_count()
    except CudaError as error:
        raise BackendUnavailable(f"no CUDA GPU is usable here ({error})") from None
    if not count:
        raise BackendUnavailable("no CUDA GPU is usable here (0 devices)")
    if not 0 <= device < count:
        raise BackendUnavailable(f"CUDA device {device} does not exist ({count} devices)")
    try:
        name, (major, minor) = api.device_info(device)
    except CudaError as error:
        raise BackendUnavailable(f"cannot query CUDA device {device}: {error}") from None
    return {"name": name, "compute_capability": f"{major}.{minor}"}
