"""onnxruntime backend: a graph of the bundle in an ``InferenceSession`` on the CPU, CUDA or
TensorRT execution provider, and the TensorRT EP's options from the manifest's profiles.

``onnxruntime`` is imported when a backend is created, not with this module (named ``ort``
so that it does not shadow the ``onnxruntime`` package).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import mmap
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.base import (
    BackendUnavailable,
    BaseBackend,
    import_package,
    user_cache_dir,
)
from runtime.manifest import BundleError, Manifest
from runtime.manifest_schema import SPLIT_GRAPHS
from runtime.profiles import PROFILE_POINTS, profile_shapes, shape_list

logger = logging.getLogger(__name__)

# The graph a memory budget runs once per expression group (with cpu_arena off, the one that
# keeps an arena within each run: OnnxRuntimeBackend's docstring).
PER_EXPRESSION_GRAPH = SPLIT_GRAPHS[1]

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


# The command line's names for ``OnnxRuntimeBackend(cpu_arena=...)`` (benchmarks/memory.py's
# --ort-arena, the setting a bundle's memory models record).
ARENA_SETTINGS = {"on": True, "off": False, "shared": "shared"}
# The shared arena grows by what is asked (onnxruntime's kSameAsRequested), where its default
# doubles: a power-of-two arena held 11.65 GiB for paper-swin-t's INT8 video graph at T 19,
# E 4, against 5.29 GiB without an arena (docs/benchmarks.md, "Memory budget").
SHARED_ARENA_CONFIG = {"arena_extend_strategy": 1}


def check_arena(setting: bool | str) -> bool | str:
    """``setting`` as ``OnnxRuntimeBackend`` takes it (True, False or "shared"), from either
    form of ``ARENA_SETTINGS``; ValueError naming both forms otherwise."""
    if isinstance(setting, bool):
        return setting
    if isinstance(setting, str) and setting in ARENA_SETTINGS:
        return ARENA_SETTINGS[setting]
    raise ValueError(
        f"cpu_arena {setting!r} is not one of True, False, 'shared' (or "
        f"{', '.join(repr(k) for k in ARENA_SETTINGS)})"
    )


@functools.cache
def shared_arena(ort: Any) -> Any:
    """Register the process's shared CPU arena with onnxruntime's environment, once (the
    cache): sessions created with ``session.use_env_allocators`` take their CPU tensors from
    it. Returns its config, which the cache keeps alive."""
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                             ort.OrtMemType.DEFAULT)  # fmt: skip
    config = ort.OrtArenaCfg(dict(SHARED_ARENA_CONFIG))
    ort.create_and_register_allocator(info, config)
    return config


def import_onnxruntime() -> Any:
    """``import onnxruntime``, or BackendUnavailable saying which package to install."""
    return import_package(
        "onnxruntime",
        "pip install onnxruntime (or onnxruntime-gpu for the CUDA and TensorRT execution "
        "providers)",
    )


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
    cache = Path(cache_dir) if cache_dir is not None else user_cache_dir("ort-tensorrt")
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
        # onnxruntime's syntax is trtexec's: name:AxB,name2:CxD, every dynamic input listed.
        shapes = profile_shapes(manifest, graph)
        if shapes:
            for which in PROFILE_POINTS:
                options[f"trt_profile_{which}_shapes"] = shape_list(shapes, which)
    else:
        logger.warning(
            "manifest has no profile for axes %s of %s: the TensorRT EP will build engines "
            "per input shape",
            sorted(named_axes - set(manifest.profiles)),
            graph,
        )
    return options


# -- the TensorRT execution provider's TensorRT ------------------------------------------------

# onnxruntime-gpu's TensorRT provider is a separate library that links one libnvinfer major
# (libnvinfer.so.10 for onnxruntime 1.18 and later; the TensorRT EP docs' version table) and
# finds it on the library path when a session is created. Importing ``tensorrt`` proves
# nothing: it may be TensorRT 11, whose libnvinfer.so.11 the provider cannot use.
_TRT_EP_LIBRARIES = ("libonnxruntime_providers_tensorrt.so", "onnxruntime_providers_tensorrt.dll")
_NVINFER_NAME = re.compile(rb"(?:lib)?nvinfer(?:\.so\.|_)(\d+)(?:\.dll)?\x00")
TRT_EP_DEFAULT_MAJOR = 10  # what the provider needs when its library cannot be read


def tensorrt_ep_requirement(ort: Any) -> tuple[Path | None, int]:
    """The TensorRT provider's library in this onnxruntime and the libnvinfer major version it
    links (read from the library's dependency names; 10 when the library is not there)."""
    capi = Path(ort.__file__).parent / "capi"
    for name in _TRT_EP_LIBRARIES:
        path = capi / name
        if path.is_file():
            with (
                path.open("rb") as handle,
                mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data,
            ):
                match = _NVINFER_NAME.search(data)
            return path, int(match.group(1)) if match else TRT_EP_DEFAULT_MAJOR
    return None, TRT_EP_DEFAULT_MAJOR


def tensorrt_version_from_int(value: int) -> tuple[int, int, int]:
    """``getInferLibVersion()`` as (major, minor, patch): major*10000 + minor*100 + patch from
    TensorRT 10 on, major*1000 + minor*100 + patch before."""
    if value >= 10000:
        return value // 10000, (value // 100) % 100, value % 100
    return value // 1000, (value // 100) % 10, value % 100


def nvinfer_library_names(major: int) -> list[str]:
    """Where libnvinfer of a major version is looked for: the library path (as the provider
    looks), then the ``tensorrt_libs`` wheel's folder (pip's tensorrt-cuXX-libs)."""
    names = [f"libnvinfer.so.{major}"]
    spec = importlib.util.find_spec("tensorrt_libs")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            names.append(str(Path(folder) / f"libnvinfer.so.{major}"))
    return names


def load_nvinfer(major: int) -> tuple[int, int, int] | str:
    """Load libnvinfer of ``major`` and return its version, or the reason it did not load.

    Loaded by full path from the tensorrt_libs wheel, the library is then found by its soname
    too, so the provider's own load later in this process succeeds.
    """
    errors = []
    for name in nvinfer_library_names(major):
        try:
            library = ctypes.CDLL(name)
        except OSError as error:
            errors.append(str(error))
            continue
        library.getInferLibVersion.restype = ctypes.c_int32
        return tensorrt_version_from_int(int(library.getInferLibVersion()))
    return "; ".join(errors)


def tensorrt_ep_status(ort: Any) -> str | None:
    """None when the TensorRT provider's TensorRT is loadable and of the major version it
    needs; else the reason, naming the library and the version."""
    path, major = tensorrt_ep_requirement(ort)
    where = path.name if path is not None else "onnxruntime's TensorRT provider"
    version = load_nvinfer(major)
    if isinstance(version, str):
        return (
            f"{where} needs libnvinfer.so.{major} (TensorRT {major}), which could not be "
            f"loaded ({version}); install TensorRT {major}'s libraries, e.g. "
            f'pip install "tensorrt-cu12-libs>={major},<{major + 1}"'
        )
    if version[0] != major:
        found = ".".join(map(str, version))
        return f"{where} needs TensorRT {major}; libnvinfer.so.{major} reports {found}"
    return None


class OnnxRuntimeBackend(BaseBackend):
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
        cpu_arena: onnxruntime's CPU memory arena: True (its default), False or "shared"
            (``ARENA_SETTINGS`` maps the command line's "on", "off" and "shared" to these). An
            arena keeps the peak of the largest run until the session closes: near 21 GB for
            paper-swin-t's video graph at 360x640 and 19 frames. False and "shared" are the
            bounded-memory modes a memory budget runs (docs/deployment.md, "Memory budget"),
            in both of which:

            - tensors are freed as the run goes, and onnxruntime's memory pattern is off: from
              the second run at the same shapes it allocates one block laid out by the first
              run's plan, which held a stage-1 piece of paper-swin-t 1.7 GB above the first
              run's peak (``calibration.ranges``);
            - buffer reuse is off: onnxruntime's planner otherwise keeps a freed buffer for a
              later tensor of the same size, so every stage-1 attention map stayed allocated
              until the next block (paper-swin-t's encoder at T 19: 8.85 GiB peak with reuse,
              4.40 GiB without, the same time);
            - glibc's mmap threshold is fixed for the process
              (``runtime.allocator.release_freed_memory``).

            False: no arena, every tensor is malloc'd, except in the per-expression graph
            (``video_decoder``, run once per expression group), which keeps an arena within
            each run and gives it back at the run's end (arena shrinkage): without one it spent
            about half its time faulting in fresh pages (the split graphs at T 19, E 4: 106.8 s
            without, 60.2 s with, at 7.37 GiB).

            "shared": every such session of the process takes its tensors from one arena
            (``shared_arena``) that grows by what is asked, not to the next power of two, and
            is shrunk at the end of each run, so freed tensors are reused within a run instead
            of mapped afresh. Faster where fresh memory is dear, at a higher peak: paper-swin-t
            INT8 (CPU form) at T 19, E 4, the one graph 29.9 s at 10.01 GiB against 50.7 s at
            5.29 GiB without an arena, the split graphs 31.3 s at 8.47 GiB against 51.5 s at
            9.40 GiB (docs/benchmarks.md, "Memory budget").

    Raises:
        BackendUnavailable: onnxruntime is missing, a requested provider is not available
            (the message lists the available ones), or onnxruntime fell back from it.
        BundleError: the variant is missing, or the ONNX file's inputs and outputs differ
            from the manifest's.
    """

    runtime = "onnxruntime"  # the key of its measured memory (runtime.budget.memory_key)

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
        cpu_arena: bool | str = True,
    ) -> None:
        ort = import_onnxruntime()
        super().__init__(manifest, graph, precision)
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
        # Bounded memory (cpu_arena False or "shared"): no memory pattern, no buffer reuse, and
        # an arena only within each run: the per-expression graph's own (False), or the
        # process's shared one ("shared"; docstring).
        self.cpu_arena = check_arena(cpu_arena)
        bounded = self.cpu_arena is not True
        shared = self.cpu_arena == "shared"
        shrink_each_run = shared or (bounded and graph == PER_EXPRESSION_GRAPH)
        options.enable_cpu_mem_arena = not bounded or shrink_each_run
        options.enable_mem_pattern = not bounded
        options.enable_mem_reuse = not bounded
        if shared:
            shared_arena(ort)
            options.add_session_config_entry("session.use_env_allocators", "1")
        self._run_options = None
        if shrink_each_run:
            self._run_options = ort.RunOptions()
            self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        if bounded:
            from ..allocator import release_freed_memory

            release_freed_memory()  # tensors are malloc'd: give freed ones back (its docstring)
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

        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=provider_list
            )
        except Exception as error:  # onnxruntime's pybind errors share no public base class
            # The file's sha256 matched the manifest, so the bundle itself holds a graph that
            # onnxruntime cannot read (or a manifest rewritten to match a bad file).
            reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise BundleError(
                f"onnxruntime {ort.__version__} could not load {path} ({graph} {precision}): "
                f"{reason}; re-export the bundle"
            ) from error
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

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = {name: np.ascontiguousarray(feeds[name]) for name in self.input_names}
        values = self._session.run(list(self.output_names), arrays, self._run_options)
        return dict(zip(self.output_names, values, strict=True))

    def end_profiling(self) -> str:
        """Stop onnxruntime's profiler and return the path of its JSON trace."""
        if not self._profiling:
            raise RuntimeError(
                f"{self.name}: profiling is off; create the backend with profile=True"
            )
        self._profiling = False
        return self._session.end_profiling()

    def _release(self) -> None:
        """Drop the session (onnxruntime frees it when the last reference goes)."""
        self._session = None


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
