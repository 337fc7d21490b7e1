"""Inference backends for the bundle's graphs: onnxruntime (CPU, CUDA, TensorRT EP) and TensorRT.

A backend is anything with ``name``, ``input_names``, ``output_names`` and
``infer(feeds) -> outputs``, both dicts of numpy arrays keyed by the tensor names the manifest
records. Every backend checks its feeds against the manifest (:func:`check_feeds`) before
inference, so a wrong dtype, rank or size fails with an error naming the tensor, the expected
shape with its profile ranges and the received one, not deep inside a runtime.

Backends are chosen by name (:func:`load_backend`), or ``"auto"`` by what is installed and
present; never by a file suffix. Nothing here imports torch: the heavy optional packages
(onnxruntime, tensorrt, cuda-python, pycuda) are imported inside the functions that need them.

Version notes for the native TensorRT backend (written against the documented APIs; no GPU in
CI, so the GPU tests skip there):

- TensorRT 10.x and 11.x: name-based I/O only (``num_io_tensors``, ``get_tensor_name``,
  ``get_tensor_mode``, ``get_tensor_dtype``, ``set_input_shape``, ``get_tensor_shape``,
  ``set_tensor_address``, ``execute_async_v3``). The binding-index API was removed in 10.0.
  ``set_input_shape``, ``set_tensor_address`` and ``execute_async_v3`` report failure by
  returning ``False``, not by raising, so every return value is checked.
- cuda-python: ``cuda.bindings.runtime`` since 12.6 (the only path in 13.x); ``cuda.cudart``
  before that. Every call returns a tuple whose first item is a ``cudaError_t``; the rest are
  the outputs. ``cudaGraphInstantiate(graph, flags)`` has the CUDA 12+ signature.
- pycuda is accepted where cuda-python is absent; it has no CUDA-graph path here.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import importlib
import importlib.util
import inspect
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from runtime.manifest import BundleError, Manifest, TensorSpec, profile_shape

logger = logging.getLogger(__name__)

AVAILABLE = "available"
PRECISIONS = ("fp32", "fp16", "int8-tensorrt", "int8-cpu")

# Short names accepted for onnxruntime execution providers.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
_PROVIDER_SHORT = {
    "CPUExecutionProvider": "cpu",
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "tensorrt",
}
_OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "none": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "layout": "ORT_ENABLE_LAYOUT",
    "all": "ORT_ENABLE_ALL",
}
BUILD_ENGINE = "python export/build_engine.py"
# Engines are keyed by export/engine.py's precision names; the INT8 engine is built from the
# "int8-tensorrt" Q/DQ variant and recorded as "int8".
ENGINE_PRECISIONS = {"int8-tensorrt": "int8"}


def engine_precision(precision: str) -> str:
    """The manifest's engine key for a runtime precision ("int8-tensorrt" -> "int8")."""
    return ENGINE_PRECISIONS.get(precision, precision)


class InputError(ValueError):
    """Feeds that do not match a graph's inputs (names, dtype, rank, static dims, profiles)."""


class BackendUnavailable(RuntimeError):
    """A backend or execution provider that this machine cannot run (says what is missing)."""


class EngineMismatchError(BundleError):
    """A TensorRT engine built for another TensorRT version or GPU than this machine's."""


class CudaError(RuntimeError):
    """A failed CUDA runtime call (names the call and the CUDA error)."""


@runtime_checkable
class Backend(Protocol):
    """What the predictor and the benchmarks need from a backend."""

    name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on ``feeds`` (input name -> array); return output name -> array."""
        ...

    def close(self) -> None:
        """Release the backend's resources (sessions, engines, device memory)."""
        ...


# -- input checking ------------------------------------------------------------------------


def describe_shape(spec: TensorSpec, profiles: Mapping[str, Mapping[str, int]]) -> str:
    """``spec``'s shape with the profile range of each named axis: ``[T in 1..36, 360, 640, 3]``."""
    dims = []
    for dim in spec.shape:
        if isinstance(dim, str) and dim in profiles:
            dims.append(f"{dim} in {profiles[dim]['min']}..{profiles[dim]['max']}")
        else:
            dims.append(str(dim))
    return f"[{', '.join(dims)}]"


def _received(array: Any) -> str:
    if isinstance(array, np.ndarray):
        return f"{array.dtype}[{', '.join(str(d) for d in array.shape)}]"
    return f"a {type(array).__name__}, not a numpy array"


def check_feeds(
    graph: str,
    specs: Sequence[TensorSpec],
    profiles: Mapping[str, Mapping[str, int]],
    feeds: Mapping[str, Any],
) -> dict[str, int]:
    """Check ``feeds`` against a graph's input specs and the manifest's profiles.

    Every input must be present and nothing else; each must be a numpy array with the spec's
    dtype and rank, its static dims equal, and each named dim inside its profile's
    [min, max] and the same in every input that has it (one "E" for the whole call).

    Args:
        graph: the graph's name, for the message.
        specs: the graph's inputs (``Manifest.inputs(graph)``).
        profiles: the manifest's profile ranges per named axis.
        feeds: input name -> array.

    Returns:
        The value of each named axis in this call, e.g. ``{"E": 2, "L": 12}``.

    Raises:
        InputError: naming the graph, the tensor, the expected shape with its profile ranges
            and the received dtype and shape.
    """
    expected = {spec.name: spec for spec in specs}
    missing = [name for name in expected if name not in feeds]
    if missing:
        wanted = "; ".join(
            f"'{name}' {expected[name].dtype}{describe_shape(expected[name], profiles)}"
            for name in missing
        )
        raise InputError(f"{graph}: missing input(s) {wanted}; received {sorted(feeds)}")
    extra = [name for name in feeds if name not in expected]
    if extra:
        raise InputError(
            f"{graph}: unexpected input(s) "
            + ", ".join(f"'{name}' {_received(feeds[name])}" for name in extra)
            + "; the graph takes only "
            + ", ".join(f"'{s.name}' {s.dtype}{describe_shape(s, profiles)}" for s in specs)
        )

    axes: dict[str, tuple[int, str]] = {}  # axis -> (value, first tensor that set it)
    for spec in specs:
        array = feeds[spec.name]
        want = f"{spec.dtype}{describe_shape(spec, profiles)}"

        def fail(reason: str, spec: TensorSpec = spec, array: Any = array, want: str = want):
            return InputError(
                f"{graph}: input '{spec.name}' expects {want}, received {_received(array)}: "
                f"{reason}"
            )

        if not isinstance(array, np.ndarray):
            raise fail("pass a numpy array")
        if array.dtype != np.dtype(spec.dtype):
            raise fail(f"dtype {array.dtype} is not {spec.dtype}")
        if array.ndim != len(spec.shape):
            raise fail(f"rank {array.ndim} is not {len(spec.shape)}")
        for index, (dim, size) in enumerate(zip(spec.shape, array.shape, strict=True)):
            if isinstance(dim, int):
                if size != dim:
                    raise fail(f"dim {index} is {size}, must be {dim}")
                continue
            bounds = profiles.get(dim)
            if bounds is not None and not bounds["min"] <= size <= bounds["max"]:
                raise fail(f"{dim}={size} is outside the profile {bounds['min']}..{bounds['max']}")
            if dim in axes and axes[dim][0] != size:
                value, first = axes[dim]
                raise fail(f"{dim}={size} but '{first}' has {dim}={value}")
            axes.setdefault(dim, (size, spec.name))
    return {axis: value for axis, (value, _) in axes.items()}


# -- helpers -------------------------------------------------------------------------------


def _as_manifest(manifest: Manifest | str | Path) -> Manifest:
    return manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)


def _import_onnxruntime() -> Any:
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as error:
        raise BackendUnavailable(
            f"onnxruntime is not installed ({error}); pip install onnxruntime "
            "(or onnxruntime-gpu for the CUDA and TensorRT execution providers)"
        ) from None


def _import_tensorrt() -> Any:
    try:
        return importlib.import_module("tensorrt")
    except ImportError as error:
        raise BackendUnavailable(
            f"tensorrt is not installed or cannot load its libraries ({error}); "
            "pip install tensorrt on a machine with an NVIDIA GPU and driver"
        ) from None


def _graph_names(manifest: Manifest, graph: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    return manifest.inputs(graph), manifest.outputs(graph)


def _default_cache_dir() -> Path:
    root = os.environ.get("PROXYFORMER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "proxyformer"
    )
    return Path(root) / "ort-tensorrt"


def _shape_list(manifest: Manifest, graph: str, which: str) -> str:
    """``name:AxB,name2:CxD`` for every input with a named dim (ORT TensorRT EP syntax)."""
    parts = []
    for spec in manifest.inputs(graph):
        if all(isinstance(d, int) for d in spec.shape):
            continue
        shape = profile_shape(spec, manifest.profiles, which)
        parts.append(f"{spec.name}:{'x'.join(str(d) for d in shape)}")
    return ",".join(parts)


def tensorrt_ep_options(
    manifest: Manifest,
    graph: str,
    precision: str,
    cache_dir: str | Path | None = None,
    device_id: int = 0,
) -> dict[str, str]:
    """onnxruntime TensorRT execution provider options for a graph of the bundle.

    Engine and timing caches in ``cache_dir``; FP16 for the fp16 variant; INT8 for the
    TensorRT Q/DQ variant; explicit optimisation profiles from the manifest's ranges so one
    engine serves every shape in them (onnxruntime requires all dynamic inputs to be listed
    once one is). Booleans are the strings "True"/"False": onnxruntime's Python binding
    rejects "1"/"0" for these keys.

    Args:
        manifest: the bundle's manifest.
        graph: "text_encoder" or "video".
        precision: the variant's precision.
        cache_dir: engine/timing cache directory (default ``~/.cache/proxyformer/ort-tensorrt``).
        device_id: CUDA device.

    Returns:
        The provider options dict.
    """
    cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    options = {
        "device_id": str(device_id),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": "True" if precision == "fp16" else "False",
        # Explicit quantization: the Q/DQ graph carries its scales, no calibration table.
        "trt_int8_enable": "True" if precision == "int8-tensorrt" else "False",
    }
    named_axes = {d for spec in manifest.inputs(graph) for d in spec.shape if isinstance(d, str)}
    if named_axes <= set(manifest.profiles):
        for which in ("min", "opt", "max"):
            shapes = _shape_list(manifest, graph, which)
            if shapes:
                options[f"trt_profile_{which}_shapes"] = shapes
    else:
        logger.warning(
            "manifest has no profile for axes %s of %s: the TensorRT EP will build engines "
            "per input shape",
            sorted(named_axes - set(manifest.profiles)),
            graph,
        )
    return options


# -- onnxruntime ---------------------------------------------------------------------------


class OnnxRuntimeBackend:
    """A graph of the bundle in an onnxruntime session (CPU by default).

    Args:
        manifest: the bundle's manifest (or the bundle directory).
        graph: "text_encoder" or "video".
        precision: which variant to load ("fp32", "fp16", "int8-tensorrt", "int8-cpu").
        providers: execution providers by priority, short ("cpu", "cuda", "tensorrt") or full
            names; default CPU. The CPU provider is always added last as a fallback for
            nodes the others do not take, and CUDA after TensorRT when it is available.
        threads: ``intra_op_num_threads`` (default: onnxruntime's choice).
        graph_optimization_level: "disable", "basic", "extended", "layout" or "all".
        trt_cache_dir: engine and timing cache directory for the TensorRT provider.
        profile: enable onnxruntime's profiler; :meth:`end_profiling` returns its JSON file.
        profile_dir: where the profile JSON goes (default: the working directory).
        device_id: CUDA device for the CUDA and TensorRT providers.
        allow_spinning: let idle intra-op threads spin-wait after a run (onnxruntime's
            default). Off here: the runtime alternates two sessions (text, then video) and
            spinning threads of one slowed the other by up to 2x on a 2-core CPU.

    Raises:
        BackendUnavailable: onnxruntime is missing, a requested provider is not available
            (the message lists the available ones), or onnxruntime fell back from it.
        BundleError: the variant is missing, or the ONNX file's inputs and outputs differ
            from the manifest's.
    """

    def __init__(
        self,
        manifest: Manifest | str | Path,
        graph: str,
        precision: str = "fp32",
        providers: Sequence[str] | str | None = None,
        threads: int | None = None,
        graph_optimization_level: str = "all",
        trt_cache_dir: str | Path | None = None,
        profile: bool = False,
        profile_dir: str | Path | None = None,
        device_id: int = 0,
        allow_spinning: bool = False,
    ) -> None:
        ort = _import_onnxruntime()
        self.manifest = _as_manifest(manifest)
        self.graph = graph
        self.precision = precision
        inputs, outputs = _graph_names(self.manifest, graph)
        self._input_specs = inputs
        self.input_names = tuple(spec.name for spec in inputs)
        self.output_names = tuple(spec.name for spec in outputs)
        path = self.manifest.variant_path(graph, precision)

        requested = _resolve_providers(providers)
        available = ort.get_available_providers()
        missing = [p for p in requested if p not in available]
        if missing:
            raise BackendUnavailable(
                f"onnxruntime execution provider(s) {', '.join(missing)} not available in "
                f"onnxruntime {ort.__version__}; available: {', '.join(available)}. "
                "The CUDA and TensorRT providers need onnxruntime-gpu and an NVIDIA GPU"
            )

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        options.graph_optimization_level = _optimization_level(ort, graph_optimization_level)
        if not allow_spinning:
            # Idle intra-op threads otherwise spin for a while after each run, taking cores
            # from whatever runs next (the other graph, post-processing, another process).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if profile:
            options.enable_profiling = True
            prefix = f"ort_profile_{graph}_{precision}"
            options.profile_file_prefix = (
                str(Path(profile_dir) / prefix) if profile_dir is not None else prefix
            )
        self._profiling = profile

        if (
            "TensorrtExecutionProvider" in requested
            and "CUDAExecutionProvider" not in requested
            and "CUDAExecutionProvider" in available
        ):
            # onnxruntime's advice: CUDA takes the nodes TensorRT does not, not the CPU.
            at = requested.index("TensorrtExecutionProvider") + 1
            requested.insert(at, "CUDAExecutionProvider")
        provider_list: list[str | tuple[str, dict[str, str]]] = []
        for provider in requested:
            if provider == "TensorrtExecutionProvider":
                trt_options = tensorrt_ep_options(
                    self.manifest, graph, precision, trt_cache_dir, device_id
                )
                Path(trt_options["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
                provider_list.append((provider, trt_options))
            elif provider == "CUDAExecutionProvider":
                provider_list.append((provider, {"device_id": str(device_id)}))
            else:
                provider_list.append(provider)
        if "CPUExecutionProvider" not in requested:
            provider_list.append("CPUExecutionProvider")

        self._session = ort.InferenceSession(
            str(path), sess_options=options, providers=provider_list
        )
        active = self._session.get_providers()
        if requested[0] not in active:
            # onnxruntime logs a warning and runs on the next provider when one fails to load
            # (missing CUDA, cuDNN or TensorRT libraries); a benchmark must not time that.
            raise BackendUnavailable(
                f"onnxruntime could not create {requested[0]} for {path.name} and fell back to "
                f"{active}; check the CUDA/cuDNN/TensorRT libraries onnxruntime-gpu needs"
            )
        _check_session_io(self._session, self.input_names, self.output_names, path)

        self.providers = tuple(active)
        self.name = f"onnxruntime-{_PROVIDER_SHORT.get(requested[0], requested[0])} {precision}"
        logger.info(
            "%s: loaded %s (providers %s, threads %s, optimisation %s)",
            self.name,
            path.name,
            ", ".join(active),
            threads or "default",
            graph_optimization_level,
        )

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check ``feeds`` against the manifest and run the session.

        Args:
            feeds: input name -> numpy array, exactly the graph's inputs.

        Returns:
            Output name -> numpy array, in the manifest's output order.
        """
        if self._session is None:
            raise RuntimeError(f"{self.name} is closed")
        check_feeds(self.graph, self._input_specs, self.manifest.profiles, feeds)
        arrays = {name: np.ascontiguousarray(feeds[name]) for name in self.input_names}
        values = self._session.run(list(self.output_names), arrays)
        return dict(zip(self.output_names, values, strict=True))

    def end_profiling(self) -> str:
        """Stop onnxruntime's profiler and return the path of its JSON trace."""
        if not self._profiling:
            raise RuntimeError(
                f"{self.name}: profiling is off; create the backend with profile=True"
            )
        self._profiling = False
        return self._session.end_profiling()

    def close(self) -> None:
        """Drop the session (onnxruntime frees it when the last reference goes)."""
        self._session = None

    def __enter__(self) -> OnnxRuntimeBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<OnnxRuntimeBackend {self.name} {self.graph}>"


def _resolve_providers(providers: Sequence[str] | str | None) -> list[str]:
    if providers is None:
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        providers = [providers]
    resolved = []
    for provider in providers:
        full = PROVIDER_ALIASES.get(provider.lower(), provider)
        if full not in resolved:
            resolved.append(full)
    if not resolved:
        raise ValueError("providers is empty; pass None for CPU")
    return resolved


def _optimization_level(ort: Any, level: str) -> Any:
    key = _OPTIMIZATION_LEVELS.get(level.lower())
    if key is None or not hasattr(ort.GraphOptimizationLevel, key):
        levels = ort.GraphOptimizationLevel
        known = [k for k, v in _OPTIMIZATION_LEVELS.items() if hasattr(levels, v)]
        raise ValueError(f"graph_optimization_level {level!r} is not one of {known}")
    return getattr(ort.GraphOptimizationLevel, key)


def _check_session_io(
    session: Any, input_names: tuple[str, ...], output_names: tuple[str, ...], path: Path
) -> None:
    have_in = [node.name for node in session.get_inputs()]
    have_out = [node.name for node in session.get_outputs()]
    if set(have_in) != set(input_names) or not set(output_names) <= set(have_out):
        raise BundleError(
            f"{path} has inputs {have_in} and outputs {have_out}; the manifest records inputs "
            f"{list(input_names)} and outputs {list(output_names)}: re-export the bundle"
        )


# -- CUDA memory and streams (cuda-python or pycuda) ---------------------------------------


def _import_cudart() -> Any:
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (>= 12.6), else ``cuda.cudart``."""
    try:
        return importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        return importlib.import_module("cuda.cudart")  # cuda-python < 12.6 (gone in 13)


class _CudaPython:
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


class _PyCuda:
    """The same operations through pycuda (no CUDA graphs; synchronous host copies)."""

    library = "pycuda"
    supports_graphs = False

    def __init__(self, driver: Any, device: int) -> None:
        self._drv = driver
        self._drv.init()
        self._device = self._drv.Device(device)
        # The primary context is the CUDA runtime's, which TensorRT uses.
        self._context = self._device.retain_primary_context()
        self._context.push()
        self._allocations: dict[int, Any] = {}

    def device_count(self) -> int:
        return int(self._drv.Device.count())

    def set_device(self, device: int) -> None:
        """The context pushed at construction stays current on this thread."""

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
        for allocation in self._allocations.values():
            allocation.free()
        self._allocations.clear()
        self._context.pop()


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.split(b"\x00", 1)[0].decode("utf-8", errors="replace").strip()
    return str(value).strip()


def _load_cuda_api(device: int) -> _CudaPython | _PyCuda:
    """cuda-python if installed, else pycuda; raises BackendUnavailable naming both."""
    try:
        cudart = _import_cudart()
    except ImportError as cuda_python_error:
        try:
            driver = importlib.import_module("pycuda.driver")
        except ImportError:
            raise BackendUnavailable(
                f"neither cuda-python ({cuda_python_error}) nor pycuda is installed; "
                "pip install cuda-python"
            ) from None
        return _PyCuda(driver, device)
    api = _CudaPython(cudart)
    api.set_device(device)
    return api


def gpu_status() -> str:
    """Return "available" when a CUDA GPU is visible, else the reason (no torch involved)."""
    try:
        cudart = _import_cudart()
    except ImportError:
        pass
    else:
        try:
            count = _CudaPython(cudart).device_count()
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
    except Exception as error:  # pycuda raises its own error types when no driver is present
        return f"no usable CUDA GPU ({error})"
    return AVAILABLE if count > 0 else "no CUDA GPU (pycuda found 0 devices)"


# -- TensorRT ------------------------------------------------------------------------------

_TRT_LOGGER: Any = None


def tensorrt_logger() -> Any:
    """One ``trt.ILogger`` for every Runtime/Builder in the process, forwarding to logging.

    TensorRT keeps a pointer to the logger, so it lives for the process; older TensorRT
    releases also treat the logger as a process-wide singleton.
    """
    global _TRT_LOGGER
    if _TRT_LOGGER is None:
        trt = _import_tensorrt()
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


class TensorRTBackend:
    """A graph's TensorRT engine from the bundle, run through the name-based TensorRT API.

    Device buffers are allocated on first use, reused across calls and grown when a larger
    shape arrives. With ``cuda_graph`` the engine's enqueue is captured into a CUDA graph per
    input shape (host<->device copies stay outside the graph) and replayed while shapes and
    buffers are unchanged; it is re-captured when they change.

    Args:
        manifest: the bundle's manifest (or the bundle directory).
        graph: "text_encoder" or "video".
        precision: which engine: "fp32", "fp16", or "int8-tensorrt"/"int8" (the manifest
            records engines under export/engine.py's names, see :func:`engine_precision`).
        device: CUDA device index.
        cuda_graph: capture and replay CUDA graphs (cuda-python only).
        allow_other_gpu: accept an engine built on another GPU of the same compute capability.

    Raises:
        BackendUnavailable: tensorrt, cuda-python/pycuda or a GPU is missing.
        BundleError: no engine for this precision and graph, or its I/O differs from the
            manifest; EngineMismatchError when it was built for another TensorRT or GPU.
    """

    def __init__(
        self,
        manifest: Manifest | str | Path,
        graph: str,
        precision: str = "fp16",
        device: int = 0,
        cuda_graph: bool = False,
        allow_other_gpu: bool = False,
    ) -> None:
        self._closed = True  # close() is a no-op until everything below exists
        trt = _import_tensorrt()
        self.manifest = _as_manifest(manifest)
        self.graph = graph
        self.precision = precision
        self.device = device
        inputs, outputs = _graph_names(self.manifest, graph)
        self._input_specs = inputs
        self.input_names = tuple(spec.name for spec in inputs)
        self.output_names = tuple(spec.name for spec in outputs)
        entry = self.manifest.engine(engine_precision(precision), graph)
        plan = self.manifest.root / entry["file"]

        self._cuda = _load_cuda_api(device)
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, capacity in bytes)
        self._stream: Any = None
        self._graph: Any = None
        self._graph_exec: Any = None
        self._graph_key: tuple | None = None
        self._address_version = 0
        self._input_shapes: dict[str, tuple[int, ...]] = {}
        self._closed = False
        try:
            gpu_name, capability = self._cuda.device_info(device)
            check_engine_entry(
                entry,
                graph,
                engine_precision(precision),
                self.manifest.root,
                trt.__version__,
                gpu_name,
                capability,
                allow_other_gpu,
            )
            if not plan.is_file():
                raise BundleError(f"engine {plan} listed in the manifest is missing")
            self._logger = tensorrt_logger()
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
            if self._engine is None:
                raise BundleError(
                    f"TensorRT {trt.__version__} could not deserialize {plan} (see the "
                    f"tensorrt log above); rebuild with {BUILD_ENGINE} --bundle "
                    f"{self.manifest.root} --precision {engine_precision(precision)}"
                )
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise RuntimeError(f"TensorRT could not create an execution context for {plan}")
            self._dtypes = self._check_engine_io(trt, plan)
            self._stream = self._cuda.stream_create()
            self._stream_handle = self._cuda.stream_handle(self._stream)
        except BaseException:
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

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check ``feeds``, copy them to the GPU, run the engine and copy the outputs back.

        Args:
            feeds: input name -> numpy array, exactly the graph's inputs.

        Returns:
            Output name -> numpy array (new host arrays), in the manifest's output order.
        """
        if self._closed:
            raise RuntimeError(f"{self.name} is closed")
        check_feeds(self.graph, self._input_specs, self.manifest.profiles, feeds)
        self._cuda.set_device(self.device)
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

    def close(self) -> None:
        """Free the CUDA graph, device buffers and stream, then the context and engine."""
        if self._closed:
            return
        self._closed = True
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

    def __enter__(self) -> TensorRTBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<TensorRTBackend {getattr(self, 'name', 'tensorrt')} {self.graph}>"


# -- choosing a backend --------------------------------------------------------------------


def _tensorrt_status() -> str:
    try:
        trt = _import_tensorrt()
    except BackendUnavailable as error:
        return str(error)
    try:
        _import_cudart()
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
        ort = _import_onnxruntime()
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

    Keys: "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt".
    """
    return {
        "onnxruntime-cpu": _ort_provider_status("CPUExecutionProvider"),
        "onnxruntime-cuda": _ort_provider_status("CUDAExecutionProvider"),
        "onnxruntime-tensorrt": _ort_provider_status("TensorrtExecutionProvider"),
        "tensorrt": _tensorrt_status(),
    }


def _has_engine(manifest: Manifest, precision: str, graph: str) -> bool:
    try:
        manifest.engine(engine_precision(precision), graph)
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
    there; else onnxruntime on CPU. The choice and its reason are logged.

    Args:
        manifest: the bundle's manifest (or the bundle directory).
        graph: "text_encoder" or "video".
        backend: "onnxruntime" (alias "ort"), "tensorrt" or "auto".
        precision: "fp32", "fp16", "int8-tensorrt" or "int8-cpu".
        **options: passed to the backend's constructor (with "auto", options the chosen
            backend does not take are dropped, and logged).

    Returns:
        The backend.
    """
    manifest = _as_manifest(manifest)
    choice = backend.lower()
    if choice in ("onnxruntime", "ort"):
        logger.info("%s %s: onnxruntime (asked for by name)", graph, precision)
        return OnnxRuntimeBackend(manifest, graph, precision, **options)
    if choice == "tensorrt":
        logger.info("%s %s: TensorRT (asked for by name)", graph, precision)
        return TensorRTBackend(manifest, graph, precision, **options)
    if choice != "auto":
        raise ValueError(
            f"backend {backend!r} is not one of 'auto', 'onnxruntime', 'ort', 'tensorrt'"
        )

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
    logger.info("%s %s: auto chose onnxruntime CPU (%s)", graph, precision, "; ".join(reasons))
    return OnnxRuntimeBackend(manifest, graph, precision, **ort_options)
