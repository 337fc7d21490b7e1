"""Native TensorRT backend: a graph's engine from the bundle, the process's TensorRT logger,
the ``tensorrt`` import (export/engine.py builds engines with the same two) and the check
that an engine was built for this TensorRT and GPU.

Version notes (written against the documented APIs; no GPU in CI, so the GPU tests skip
there): TensorRT 10.x and 11.x have name-based I/O only (``num_io_tensors``,
``get_tensor_name``, ``get_tensor_mode``, ``get_tensor_dtype``, ``set_input_shape``,
``get_tensor_shape``, ``set_tensor_address``, ``execute_async_v3``); the binding-index API
was removed in 10.0. ``set_input_shape``, ``set_tensor_address`` and ``execute_async_v3``
report failure by returning ``False``, not by raising, so every return value is checked.

Named ``trt`` so that it does not shadow the ``tensorrt`` package.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.base import (
    BUILD_ENGINE,
    BackendUnavailable,
    BaseBackend,
    CudaError,
    EngineMismatchError,
    InputError,
)
from runtime.backends.gpu import load_cuda_api
from runtime.manifest import BundleError, Manifest

logger = logging.getLogger(__name__)

MIN_TENSORRT_MAJOR = 10  # name-based I/O (set_input_shape, set_tensor_address, execute_async_v3)
INSTALL_HINT = (
    'pip install tensorrt-cu12 (in this repository: pip install -e ".[tensorrt]", or '
    '".[tensorrt-cu13]" with a CUDA 13 driver)'
)


def major_version(version: str) -> int:
    """The major version of a TensorRT version string ("10.13.0.35" -> 10)."""
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise ValueError(f"cannot read a TensorRT version from {version!r}") from None


def import_tensorrt() -> Any:
    """``import tensorrt``, or BackendUnavailable saying how to install it (needs >= 10)."""
    try:
        trt = importlib.import_module("tensorrt")
    except (ImportError, OSError) as error:  # OSError: the wheel is there, libnvinfer is not
        raise BackendUnavailable(
            f"tensorrt is not installed or cannot load its libraries ({error}); on a machine "
            f"with an NVIDIA GPU and driver run: {INSTALL_HINT}"
        ) from None
    if major_version(trt.__version__) < MIN_TENSORRT_MAJOR:
        raise BackendUnavailable(
            f"TensorRT {trt.__version__} is too old: ProxyFormer engines need TensorRT >= "
            f"{MIN_TENSORRT_MAJOR} (name-based tensor API); upgrade with {INSTALL_HINT}"
        )
    return trt


_TRT_LOGGER: Any = None


def tensorrt_logger(trt: Any = None, verbose: bool | None = None) -> Any:
    """One ``trt.ILogger`` for every Runtime/Builder in the process, forwarding to logging.

    TensorRT keeps a pointer to the logger, so it lives for the process; older TensorRT
    releases also treat the logger as a process-wide singleton, and warn when builders and
    runtimes use different ones. Its messages go to the ``tensorrt`` logger.

    Args:
        trt: the imported ``tensorrt`` module (imported here when None).
        verbose: True: TensorRT's info and verbose messages too; False: warnings and errors
            only; None: leave the ``tensorrt`` logger's level as it is.
    """
    global _TRT_LOGGER
    if verbose is not None:
        logging.getLogger("tensorrt").setLevel(logging.DEBUG if verbose else logging.WARNING)
    if _TRT_LOGGER is None:
        trt = trt if trt is not None else import_tensorrt()
        severity = trt.ILogger.Severity
        levels = {
            severity.INTERNAL_ERROR: logging.CRITICAL,
            severity.ERROR: logging.ERROR,
            severity.WARNING: logging.WARNING,
            severity.INFO: logging.INFO,
            severity.VERBOSE: logging.DEBUG,
        }
        trt_log = logging.getLogger("tensorrt")

        class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)  # required by the pybind11 trampoline

            def log(self, level: Any, msg: str) -> None:
                trt_log.log(levels.get(level, logging.INFO), "%s", msg)

        _TRT_LOGGER = _Logger()
        # The plugins shipped in libnvinfer_plugin (the ONNX parser maps some operators to
        # them, and an engine that uses one cannot be deserialized without them) register only
        # when asked, once per process, before the parser or deserialize_cuda_engine runs.
        # Builder and runtime both get their logger here, so both are covered.
        if not trt.init_libnvinfer_plugins(_TRT_LOGGER, ""):
            logger.warning("TensorRT's init_libnvinfer_plugins failed: engines that use "
                           "TensorRT's own plugins will not build or load")
    return _TRT_LOGGER


def _numpy_dtype(trt: Any, trt_dtype: Any) -> np.dtype:
    """numpy dtype of a TensorRT DataType (``trt.nptype`` lacks int64 in early 10.x)."""
    table = {
        "FLOAT": np.float32,
        "HALF": np.float16,
        "INT8": np.int8,
        "INT32": np.int32,
        "INT64": np.int64,
        "BOOL": np.bool_,
        "UINT8": np.uint8,
    }
    for member, numpy_type in table.items():
        if hasattr(trt.DataType, member) and trt_dtype == getattr(trt.DataType, member):
            return np.dtype(numpy_type)
    raise BundleError(f"TensorRT I/O dtype {trt_dtype} has no numpy equivalent")


def compute_capability(value: Any) -> tuple[int, int] | None:
    """Normalise "8.9", "89", "sm_89", 8.9, [8, 9] or (8, 9) to (8, 9); None if absent."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    text = str(value).lower().removeprefix("sm_").removeprefix("sm").strip()
    if "." in text:
        major, minor = text.split(".", 1)
        return int(major), int(minor)
    if text.isdigit() and len(text) >= 2:
        return int(text[:-1]), int(text[-1])
    raise BundleError(f"cannot read compute capability {value!r} in the engine entry")


def _same_version(built: str, installed: str) -> bool:
    """Equal on every component the manifest records ("10.9" matches "10.9.0.34")."""
    wanted = str(built).split(".")
    return installed.split(".")[: len(wanted)] == wanted


def check_engine_entry(
    entry: Mapping[str, Any],
    graph: str,
    precision: str,
    bundle: Path,
    tensorrt_version: str,
    gpu_name: str,
    gpu_capability: tuple[int, int],
    allow_other_gpu: bool = False,
) -> None:
    """Raise EngineMismatchError unless the engine was built for this TensorRT and GPU.

    TensorRT plans are tied to the exact TensorRT version and, unless built hardware
    compatible, to the GPU model they were built on.

    Args:
        entry: the manifest's engine entry ("file", "tensorrt", "gpu", "compute_capability").
        graph, precision, bundle: for the message and the rebuild command.
        tensorrt_version: ``trt.__version__`` here.
        gpu_name, gpu_capability: this machine's GPU.
        allow_other_gpu: only warn when the GPU name differs but the compute capability
            matches (same architecture, another SKU).
    """
    built_trt = entry.get("tensorrt")
    built_gpu = entry.get("gpu")
    built_cc = compute_capability(entry.get("compute_capability"))
    problems = []
    if built_trt is not None and not _same_version(str(built_trt), tensorrt_version):
        problems.append("TensorRT version")
    if built_cc is not None and built_cc != gpu_capability:
        problems.append("compute capability")
    name_differs = built_gpu is not None and str(built_gpu).strip() != gpu_name
    if name_differs and not allow_other_gpu:
        problems.append("GPU")
    built_sm = f"sm_{built_cc[0]}{built_cc[1]}" if built_cc else "sm_?"
    here_sm = f"sm_{gpu_capability[0]}{gpu_capability[1]}"
    if problems:
        raise EngineMismatchError(
            f"{graph} {precision} engine {entry.get('file')} was built with TensorRT "
            f"{built_trt} for {built_sm} on GPU {built_gpu}; this machine has TensorRT "
            f"{tensorrt_version} and {gpu_name} ({here_sm}) — {', '.join(problems)} differ. "
            f"Rebuild with {BUILD_ENGINE} --bundle {bundle} --precision {precision} "
            "on this machine"
        )
    if name_differs:
        logger.warning(
            "%s %s engine was built on %s, running on %s (same %s): allowed, but TensorRT "
            "does not promise the same tactics or speed",
            graph,
            precision,
            built_gpu,
            gpu_name,
            here_sm,
        )


class TensorRTBackend(BaseBackend):
    """A graph's TensorRT engine from the bundle, run through the name-based TensorRT API.

    Device buffers are allocated on first use, reused across calls and grown when a larger
    shape arrives. With ``cuda_graph`` the engine's enqueue is captured into a CUDA graph per
    input shape (host<->device copies stay outside the graph) and replayed while shapes and
    buffers are unchanged; it is re-captured when they change.

    Args:
        manifest: the bundle's manifest (or the bundle directory).
        graph: "text_encoder" or "video".
        precision: which engine: "fp32", "fp16" or "int8-tensorrt" (an engine carries the name
            of the variant it is built from, ``runtime.precisions``).
        device: CUDA device index.
        cuda_graph: capture and replay CUDA graphs (cuda-python only).
        allow_other_gpu: accept an engine built on another GPU of the same compute capability.

    Raises:
        BackendUnavailable: tensorrt, cuda-python/pycuda or a GPU is missing, or TensorRT
            cannot create an execution context (GPU memory).
        BundleError: no engine for this precision and graph, its plan file missing or not
            deserializable, or its I/O differs from the manifest; EngineMismatchError when it
            was built for another TensorRT or GPU. All checked before TensorRT is imported
            where they can be (the entry, the file).
        CudaError: a CUDA runtime call failed (cudaSetDevice, cudaMalloc, ...).
    """

    runtime = "tensorrt"  # the key of its measured memory (runtime.budget.memory_key)

    def __init__(
        self,
        manifest: Manifest | str | Path,
        graph: str,
        precision: str = "fp16",
        device: int = 0,
        cuda_graph: bool = False,
        allow_other_gpu: bool = False,
    ) -> None:
        self._allow_other_gpu = allow_other_gpu
        self._closed = True  # close() is a no-op until everything below exists
        # The bundle first (cheap, and what "auto" falls back on): the engine entry and its
        # file, before TensorRT, CUDA or the GPU are touched.
        super().__init__(manifest, graph, precision)
        self.device = device
        entry = self.manifest.engine(self.precision, graph)
        plan = self.manifest.path(entry["file"])  # inside the bundle, listed, hash-checked
        if not plan.is_file():
            raise BundleError(
                f"engine {plan} ({graph} {self.precision}) is listed in the manifest but "
                f"missing; rebuild it with {BUILD_ENGINE} --bundle {self.manifest.root} "
                f"--precision {self.precision}"
            )
        trt = import_tensorrt()

        self._cuda = load_cuda_api(device)
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, capacity in bytes)
        self._stream: Any = None
        self._graph: Any = None
        self._graph_exec: Any = None
        self._graph_key: tuple | None = None
        self._address_version = 0
        self._input_shapes: dict[str, tuple[int, ...]] = {}
        self._closed = False
        try:
            with self._cuda.activate(device):
                gpu_name, capability = self._load(trt, entry, plan)
        except BaseException:
            # The cause (a CUDA error in cudaSetDevice, say) is what the caller must see, not
            # a second error from releasing on the same device.
            with contextlib.suppress(Exception):
                self.close()
            raise

        self.cuda_graph = bool(cuda_graph)
        if self.cuda_graph and not self._cuda.supports_graphs:
            logger.warning("CUDA graphs need cuda-python; %s runs without them", self._cuda.library)
            self.cuda_graph = False
        self.name = f"tensorrt {precision}"
        logger.info(
            "%s: loaded %s (TensorRT %s, %s sm_%d%d, %s%s)",
            self.name,
            plan.name,
            trt.__version__,
            gpu_name,
            capability[0],
            capability[1],
            self._cuda.library,
            ", CUDA graphs" if self.cuda_graph else "",
        )

    def _load(self, trt: Any, entry: Mapping[str, Any], plan: Path) -> tuple[str, tuple[int, int]]:
        """Check the engine entry against this GPU, deserialize the plan, create the execution
        context and the stream (on ``self.device``, made current by the caller)."""
        gpu_name, capability = self._cuda.device_info(self.device)
        check_engine_entry(
            entry,
            self.graph,
            self.precision,
            self.manifest.root,
            trt.__version__,
            gpu_name,
            capability,
            self._allow_other_gpu,
        )
        serialized = self.manifest.read_verified(entry["file"])  # the bytes deserialized
        self._logger = tensorrt_logger()  # also registers TensorRT's plugins, before deserializing
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(serialized)
        if self._engine is None:
            raise BundleError(
                f"TensorRT {trt.__version__} could not deserialize {plan} (see the "
                f"tensorrt log above); rebuild with {BUILD_ENGINE} --bundle "
                f"{self.manifest.root} --precision {self.precision}"
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            # TensorRT returns None (and logs why) when it cannot allocate the context's
            # activation memory: a machine condition, not a bundle fault.
            raise BackendUnavailable(
                f"TensorRT could not create an execution context for {plan} on CUDA device "
                f"{self.device} (out of GPU memory? see the tensorrt log above)"
            )
        self._dtypes = self._check_engine_io(trt, plan)
        self._stream = self._cuda.stream_create()
        self._stream_handle = self._cuda.stream_handle(self._stream)
        return gpu_name, capability

    def _check_engine_io(self, trt: Any, plan: Path) -> dict[str, np.dtype]:
        engine = self._engine
        modes: dict[str, bool] = {}
        dtypes: dict[str, np.dtype] = {}
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            modes[name] = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dtypes[name] = _numpy_dtype(trt, engine.get_tensor_dtype(name))
        engine_inputs = {name for name, is_input in modes.items() if is_input}
        engine_outputs = {name for name, is_input in modes.items() if not is_input}
        if engine_inputs != set(self.input_names) or engine_outputs != set(self.output_names):
            raise BundleError(
                f"engine {plan} has inputs {sorted(engine_inputs)} and outputs "
                f"{sorted(engine_outputs)}; the manifest records {list(self.input_names)} and "
                f"{list(self.output_names)}: rebuild it from this bundle's ONNX"
            )
        specs = [*self._input_specs, *self.manifest.outputs(self.graph)]
        for spec in specs:
            if dtypes[spec.name] != np.dtype(spec.dtype):
                raise BundleError(
                    f"engine {plan} tensor '{spec.name}' is {dtypes[spec.name]}, the manifest "
                    f"records {spec.dtype}: rebuild the engine from this bundle's ONNX"
                )
        return dtypes

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy the (checked) feeds to the GPU, run the engine and copy the outputs back into
        new host arrays."""
        # The device (cuda-python) or context (pycuda) is made current on the calling thread
        # for each call: a predictor may be created on one thread and run on another.
        with self._cuda.activate(self.device):
            return self._run(feeds)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        context = self._context

        host_inputs: dict[str, np.ndarray] = {}
        for name in self.input_names:
            array = np.ascontiguousarray(feeds[name])
            if self._input_shapes.get(name) != array.shape:
                if not context.set_input_shape(name, array.shape):
                    raise InputError(
                        f"{self.graph}: TensorRT rejected input '{name}' shape {array.shape} "
                        "(outside the engine's optimisation profile?)"
                    )
                self._input_shapes[name] = array.shape
            self._ensure_buffer(name, array.nbytes)
            host_inputs[name] = array

        # Output shapes are known once every input shape is set.
        host_outputs: dict[str, np.ndarray] = {}
        for name in self.output_names:
            shape = tuple(int(d) for d in context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(
                    f"{self.name}: output '{name}' has unresolved shape {shape} after setting "
                    "the inputs (data-dependent shapes are not supported)"
                )
            host_outputs[name] = np.empty(shape, dtype=self._dtypes[name])
            self._ensure_buffer(name, host_outputs[name].nbytes)

        stream = self._stream
        for name, array in host_inputs.items():
            self._cuda.memcpy_htod_async(self._buffers[name][0], array, stream)
        self._execute()
        for name, array in host_outputs.items():
            self._cuda.memcpy_dtoh_async(array, self._buffers[name][0], stream)
        self._cuda.synchronize(stream)
        return host_outputs

    def _ensure_buffer(self, name: str, nbytes: int) -> None:
        pointer, capacity = self._buffers.get(name, (0, 0))
        if nbytes <= capacity:
            return
        # Every infer() ends with a stream sync, so the old buffer is idle and can go now.
        if pointer:
            self._cuda.free(pointer)
            del self._buffers[name]
        capacity = max(256, -(-nbytes // 256) * 256)
        pointer = self._cuda.malloc(capacity)
        self._buffers[name] = (pointer, capacity)
        if not self._context.set_tensor_address(name, pointer):
            raise RuntimeError(f"{self.name}: set_tensor_address failed for '{name}'")
        self._address_version += 1  # a captured CUDA graph holds the old addresses

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._stream_handle):
            raise RuntimeError(f"{self.name}: execute_async_v3 failed (see the tensorrt log)")

    def _execute(self) -> None:
        if not self.cuda_graph:
            self._enqueue()
            return
        key = (tuple(self._input_shapes[n] for n in self.input_names), self._address_version)
        if self._graph_exec is not None and key == self._graph_key:
            self._cuda.graph_launch(self._graph_exec, self._stream)
            return
        self._destroy_graph()
        # A plain enqueue first: it computes this call's outputs and lets TensorRT finish the
        # shape-dependent setup it defers to the first enqueue after set_input_shape, which
        # must not happen inside a capture.
        self._enqueue()
        self._cuda.synchronize(self._stream)
        try:
            self._capture(key)
        except (CudaError, RuntimeError) as error:
            logger.warning("%s: CUDA graph capture failed, running without: %s", self.name, error)
            self._destroy_graph()
            self.cuda_graph = False

    def _capture(self, key: tuple) -> None:
        self._cuda.begin_capture(self._stream)
        try:
            captured = self._context.execute_async_v3(self._stream_handle)
        finally:
            graph = self._cuda.end_capture(self._stream)  # always leave capture mode
        self._graph = graph
        if not captured:
            raise RuntimeError("execute_async_v3 failed while capturing")
        self._graph_exec = self._cuda.graph_instantiate(graph)
        self._graph_key = key
        logger.debug("%s: captured a CUDA graph for input shapes %s", self.name, key[0])

    def _destroy_graph(self) -> None:
        graph, graph_exec = self._graph, self._graph_exec
        self._graph = self._graph_exec = self._graph_key = None
        if graph is not None or graph_exec is not None:
            self._cuda.graph_destroy(graph, graph_exec)

    def _release(self) -> None:
        """Free the CUDA graph, device buffers and stream, then the context and engine, with
        the backend's device current on this thread."""
        with self._cuda.activate(self.device):
            try:
                if self._stream is not None:
                    self._cuda.synchronize(self._stream)
                self._destroy_graph()
                for pointer, _ in self._buffers.values():
                    self._cuda.free(pointer)
                self._buffers.clear()
                if self._stream is not None:
                    self._cuda.stream_destroy(self._stream)
                    self._stream = None
            finally:
                # The context before the engine, the engine before the runtime.
                for attribute in ("_context", "_engine", "_runtime"):
                    if hasattr(self, attribute):
                        setattr(self, attribute, None)
                self._cuda.release()

    def __del__(self) -> None:
        # At interpreter shutdown CUDA may already be torn down.
        with contextlib.suppress(Exception):
            self.close()
