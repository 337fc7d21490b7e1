"""OpenVINO backend: a graph of the bundle compiled for the CPU by OpenVINO (``pip install
openvino``), at FP32, in BF16 on a CPU with AVX512-BF16 or AMX, or from the int8-cpu graph.

Precisions (``OPENVINO_PRECISIONS``). The agreements below are against onnxruntime FP32 on 32
held-out clips (64 expression tracks) of the synthetic set with the tiny demo bundle (128x224,
12 frames), OpenVINO 2026.4 on a Xeon with AMX; "IoU" is the stride-4 mask IoU of each
graph's chosen query, "same query" the share of tracks that chose the same query:

- ``fp32``: the fp32 graph with ``INFERENCE_PRECISION_HINT`` f32. Set explicitly: on a CPU with
  BF16 OpenVINO otherwise runs FP32 graphs in BF16 by default. Within 1e-4 of PyTorch on every
  output; J&F equal to onnxruntime FP32's.
- ``bf16``: the fp32 graph with ``INFERENCE_PRECISION_HINT`` bf16, a runtime precision
  (``runtime.precisions.BF16``), not a bundle variant. Refused, naming the CPU's
  ``OPTIMIZATION_CAPABILITIES``, where "BF16" is not among them. IoU 0.997, same query 63 of
  64 (the other's two best scores were closer than BF16's error); largest error relative to
  each output's range 2.4 % (logits), 1.4 % (masks); J&F -0.01 points.
- ``int8-cpu``: the calibrated Q/DQ graph with uint8 activations, its float parts in f32.
  IoU 0.957, same query 0.92 (onnxruntime's INT8 of the same graph: 0.964, 0.94); J&F -0.80
  points (onnxruntime's: -0.16).
- ``int8-tensorrt`` is refused: OpenVINO runs the symmetric (int8-activation) Q/DQ graph
  wrongly, IoU 0.55 and same query 0.19 against FP32. The first wrong tensor is the Transpose
  after the int8 attention MatMul of the first CMIE layer: its values are the integer product
  without its dequantization scales (about 4e-5 where they should be about 1); the MatMul's own
  output is right, and with OpenVINO's low-precision transformations off the graph is right.
- ``fp16`` is refused: OpenVINO on a CPU would compute the FP16-rounded weights in f32 or bf16,
  never faster than ``bf16`` on the fp32 graph and less accurate.

Compiled models are cached (``CACHE_DIR``) in a user cache directory by default, never inside
the bundle unless asked, so a second start skips compilation. Two measured flaws of OpenVINO's
own cache key (2026.4) are worked around: it keys a model compiled from a path on the path
alone (a changed file at the same path reused the stale blob), so the model is compiled from
the graph read into memory, which it keys on the content; and that key leaves out the inference
precision (a bf16 compile loaded the f32 blob and returned NaN), so each compile configuration
has its own sub-folder (:func:`cache_key`).

Shapes. By default (``static_shapes=True``) the graph is compiled for the exact input shapes
of each call, and compiled again when they change (the first call of each new shape pays the
compile; the compiled-model cache makes a repeat cheap). Compiled for the bundle's bounded
dynamic axes instead, OpenVINO 2026.4 ran paper-swin-t at 360x640 and 19 frames at a 14.2 GB
peak and 18-19 s a call; compiled for that one shape, at 4.7 GB and 17 s (FP32, 2 cores).
``static_shapes=False`` keeps one compile for every shape.

``openvino`` is imported when a backend is created, not with this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.base import (
    AVAILABLE,
    BackendUnavailable,
    BaseBackend,
    import_package,
    user_cache_dir,
)
from runtime.manifest import BundleError, Manifest
from runtime.precisions import (
    BF16,
    FP16,
    FP32,
    INT8_CPU,
    INT8_TENSORRT,
    PRECISIONS,
    RUNTIME_PRECISIONS,
    RUNTIME_VARIANT,
)

logger = logging.getLogger(__name__)

OPENVINO_PRECISIONS = (FP32, BF16, INT8_CPU)
# Variants OpenVINO loads but whose results were not verified (see the module docstring).
UNVERIFIED_PRECISIONS = {
    FP16: "OpenVINO would compute the fp16 graph's FP16-rounded weights in f32 or bf16 on a "
    "CPU; use precision='bf16' (the fp32 graph in BF16) or 'fp32'",
    INT8_TENSORRT: "OpenVINO runs this symmetric Q/DQ graph wrongly (stride-4 mask IoU 0.55 "
    "against FP32 on the tiny demo bundle, onnxruntime 0.93): use precision='int8-cpu' or "
    "backend='onnxruntime'",
}
# What OPTIMIZATION_CAPABILITIES must list for a precision to run at that arithmetic.
REQUIRED_CAPABILITY = {BF16: "BF16", INT8_CPU: "INT8"}
# What gives a CPU each capability, for the message.
_CAPABILITY_HARDWARE = {"BF16": "AVX512-BF16 or AMX", "INT8": "AVX2, AVX512, VNNI or AMX"}
# INT8: the float parts of the Q/DQ graph in f32, as they were calibrated.
_INFERENCE_PRECISION = {FP32: "f32", BF16: "bf16", INT8_CPU: "f32"}
_USE_DEFAULT = "default"
# OpenVINO's layer types that do the GEMM work (``OpenVINOBackend.gemm_precisions``).
_GEMM_LAYERS = ("Convolution", "FullyConnected", "MatMul")


def import_openvino() -> Any:
    """``import openvino``, or BackendUnavailable saying which package to install."""
    return import_package("openvino", "pip install openvino")


@lru_cache(maxsize=1)
def shared_core():
    """The process's one ``openvino.Core``, kept until exit.

    OpenVINO recommends one Core per application, and more than that is unsafe here: each Core
    loads its own CPU plugin, which installs an alternate signal stack for the thread that
    creates it and, when destroyed, puts back the one it found. Two Cores destroyed in the order
    they were made leave the thread pointing at a freed stack, and the next signal that Python
    handles (Ctrl-C, a scheduler's SIGTERM to a training run) kills the process with SIGSEGV.
    ``tests/test_openvino.py`` reproduces it in a subprocess.
    """
    return import_openvino().Core()


def openvino_status() -> str:
    """AVAILABLE ("available") when openvino imports and sees a CPU device, else the reason."""
    try:
        ov = import_openvino()
    except BackendUnavailable as error:
        return str(error)
    devices = shared_core().available_devices
    if "CPU" not in devices:
        return f"openvino {ov.__version__} sees no CPU device (devices: {devices})"
    return AVAILABLE


def default_cache_dir() -> Path:
    """``$PROXYFORMER_CACHE/openvino``, else ``$XDG_CACHE_HOME/proxyformer/openvino``, else
    ``~/.cache/proxyformer/openvino``: the same root as the TensorRT EP's caches."""
    return user_cache_dir("openvino")


def cpu_capabilities(core: Any) -> list[str]:
    """The CPU device's ``OPTIMIZATION_CAPABILITIES`` (e.g. "FP32", "BF16", "INT8")."""
    return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def check_capabilities(precision: str, capabilities: Sequence[str], cpu: str = "this CPU") -> None:
    """Raise BackendUnavailable when ``capabilities`` (OpenVINO's ``OPTIMIZATION_CAPABILITIES``
    of the CPU) lack what ``precision`` needs, naming what was found and what runs instead."""
    required = REQUIRED_CAPABILITY.get(precision)
    if required is not None and required not in capabilities:
        raise BackendUnavailable(
            f"precision {precision!r} needs {required} in OpenVINO's CPU capabilities; "
            f"{cpu} has {', '.join(capabilities) or 'none'} ({required} needs "
            f"{_CAPABILITY_HARDWARE[required]}): use precision='fp32'"
        )


def cache_key(version: str, config: dict[str, Any]) -> str:
    """The cache sub-folder of a compile configuration: its inference precision, then a hash of
    the OpenVINO version and every option, e.g. "bf16-3f2a9c01d4e5"."""
    text = json.dumps({"openvino": version, **{k: str(v) for k, v in config.items()}},
                      sort_keys=True)  # fmt: skip
    return f"{config['INFERENCE_PRECISION_HINT']}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def openvino_precision(precision: str) -> str:
    """``precision`` checked against what this backend runs; ValueError naming the others."""
    if precision in OPENVINO_PRECISIONS:
        return precision
    if precision in UNVERIFIED_PRECISIONS:
        raise ValueError(
            f"the OpenVINO backend runs {list(OPENVINO_PRECISIONS)}, not {precision!r}: "
            f"{UNVERIFIED_PRECISIONS[precision]}"
        )
    raise ValueError(
        f"precision must be one of {list(OPENVINO_PRECISIONS)} for the OpenVINO backend "
        f"(bundle variants {list(PRECISIONS)}), got {precision!r}"
    )


class OpenVINOBackend(BaseBackend):
    """A graph of the bundle compiled by OpenVINO for the CPU.

    Args:
        manifest: the bundle's manifest (or the bundle directory).
        graph: "text_encoder" or "video".
        precision: "fp32" or "bf16" (the fp32 graph executed in BF16).
        threads: ``INFERENCE_NUM_THREADS`` (default: OpenVINO's choice, all cores).
        cache_dir: where OpenVINO caches compiled models (default :func:`default_cache_dir`);
            None or "" turns the cache off.
        performance_hint: ``PERFORMANCE_HINT``: "LATENCY" (one request at a time, as the
            predictor calls) or "THROUGHPUT".
        static_shapes: compile for each call's exact input shapes (recompiling when they
            change) rather than once for the bounded dynamic axes: a third of the memory at the
            paper size (see the module docstring).
        profile: time every node of each call (OpenVINO's ``PERF_COUNT``); read them with
            :meth:`profiling_info`.

    Raises:
        BackendUnavailable: openvino is missing, or the CPU cannot run ``precision`` (names
            the CPU's capabilities).
        ValueError: a precision this backend does not run (says why, and what does).
        BundleError: the bundle lacks the variant (the manifest's error), or OpenVINO cannot
            read it, or its inputs and outputs differ from the manifest's.
    """

    runtime = "openvino"  # the key of its measured memory (runtime.budget.memory_key)

    def __init__(
        self,
        manifest: Manifest | str | Path,
        graph: str,
        precision: str = "fp32",
        threads: int | None = None,
        cache_dir: str | Path | None = _USE_DEFAULT,
        performance_hint: str = "LATENCY",
        static_shapes: bool = True,
        profile: bool = False,
    ) -> None:
        ov = import_openvino()
        precision = openvino_precision(precision)
        if threads is not None and (isinstance(threads, bool) or int(threads) < 1):
            raise ValueError(f"threads must be a whole number >= 1, got {threads!r}")
        variant = RUNTIME_VARIANT.get(precision, precision)
        super().__init__(manifest, graph, variant)
        self.precision = precision
        path = self.manifest.variant_path(graph, variant)  # the manifest's error when absent

        core = shared_core()
        capabilities = cpu_capabilities(core)
        check_capabilities(precision, capabilities, core.get_property("CPU", "FULL_DEVICE_NAME"))

        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": _INFERENCE_PRECISION[precision],
            "PERFORMANCE_HINT": performance_hint,
        }
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if profile:  # per-node timings of each call (profiling_info)
            config["PERF_COUNT"] = True
        cache = default_cache_dir() if cache_dir == _USE_DEFAULT else cache_dir
        # One folder per compile configuration: OpenVINO's key for a model leaves out the
        # inference precision (a bf16 compile loaded the f32 blob and returned NaN).
        self.cache_dir = Path(cache) / cache_key(ov.__version__, config) if cache else None
        if self.cache_dir is not None:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise OSError(
                    f"OpenVINO cache directory {self.cache_dir} cannot be created ({error}); "
                    "pass cache_dir=None to run without a cache, or another directory"
                ) from error
            config["CACHE_DIR"] = str(self.cache_dir)

        started = time.perf_counter()
        self._path, self._config = path, config
        try:
            self._compile(lambda model: self._bound_dynamic_axes(ov, model))
        except RuntimeError as error:  # OpenVINO's errors derive from RuntimeError
            reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise BundleError(
                f"openvino {ov.__version__} could not compile {path} ({graph} {precision}): "
                f"{reason}; re-export the bundle"
            ) from error
        self.compile_seconds = time.perf_counter() - started
        self.loaded_from_cache = bool(self._compiled.get_property("LOADED_FROM_CACHE"))
        self.static_shapes = bool(static_shapes)
        self._shapes: dict[str, tuple[int, ...]] | None = None  # of the static compile
        self.capabilities = tuple(capabilities)
        self.name = f"openvino-cpu {precision}"
        logger.info(
            "%s: compiled %s in %.2f s (%s; threads %s; inference precision %s)",
            self.name,
            path.name,
            self.compile_seconds,
            f"from the cache in {self.cache_dir}"
            if self.loaded_from_cache
            else f"cache {self.cache_dir or 'off'}",
            threads or "default",
            _INFERENCE_PRECISION[precision],
        )

    def _bound_dynamic_axes(self, ov: Any, model: Any) -> None:
        """Give each named axis of the inputs its profile's [min, max] (check_feeds enforces
        the same range), so OpenVINO sees bounded rather than unknown dimensions."""
        profiles = self.manifest.profiles
        shapes = {}
        for spec in self._input_specs:
            if not any(isinstance(d, str) and d in profiles for d in spec.shape):
                continue
            shapes[spec.name] = ov.PartialShape(
                [
                    ov.Dimension(profiles[d]["min"], profiles[d]["max"])
                    if isinstance(d, str) and d in profiles
                    else ov.Dimension(d)
                    if isinstance(d, int)
                    else ov.Dimension()
                    for d in spec.shape
                ]
            )
        if shapes:
            model.reshape(shapes)

    def _output_ports(self, path: Path) -> dict[str, Any]:
        have_in = [sorted(port.get_names()) for port in self._compiled.inputs]
        have_out = [sorted(port.get_names()) for port in self._compiled.outputs]
        in_names = {name for names in have_in for name in names}
        out_names = {name for names in have_out for name in names}
        if set(self.input_names) - in_names or set(self.output_names) - out_names:
            raise BundleError(
                f"{path} has inputs {have_in} and outputs {have_out} in OpenVINO; the manifest "
                f"records inputs {list(self.input_names)} and outputs {list(self.output_names)}:"
                " re-export the bundle"
            )
        return {name: self._compiled.output(name) for name in self.output_names}

    def gemm_precisions(self) -> dict[str, int]:
        """How many GEMM nodes (convolutions, fully connected layers, MatMuls) of the compiled
        graph run at each precision ("f32", "bf16", "u8", "i8"), from OpenVINO's runtime
        model: the arithmetic the CPU really executes, whatever was asked for."""
        counts: dict[str, int] = {}
        for node in self._compiled.get_runtime_model().get_ordered_ops():
            info = node.get_rt_info()
            if info["layerType"].astype(str) in _GEMM_LAYERS:
                precision = info["runtimePrecision"].astype(str)
                counts[precision] = counts.get(precision, 0) + 1
        return counts

    def profiling_info(self) -> list[dict[str, Any]]:
        """Per-node times of the last call (``profile=True``): node name, OpenVINO's layer type,
        the kernel that ran it (its ISA and precision, e.g. ``brgemm_avx512_amx_bf16``) and
        milliseconds; nodes fused into another or not executed are left out."""
        if "PERF_COUNT" not in self._config:
            raise RuntimeError(f"{self.name} was created without profile=True")
        ov = import_openvino()
        return [
            {"node": info.node_name, "layer_type": info.node_type, "exec_type": info.exec_type,
             "ms": info.real_time.total_seconds() * 1e3}
            for info in self._request.profiling_info
            if info.status == ov.ProfilingInfo.Status.EXECUTED
        ]  # fmt: skip

    def _compile(self, shape: Any) -> None:
        """Read the graph, give it its input shapes (``shape(model)``), compile it, and set the
        output ports and the infer request. From the model, not the path: the cache is then
        keyed on the graph's content."""
        core = shared_core()
        model = core.read_model(str(self._path))
        shape(model)
        self._compiled = core.compile_model(model, "CPU", self._config)
        self._outputs = self._output_ports(self._path)
        self._request = self._compiled.create_infer_request()

    def _compile_for(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Compile the graph for exactly these input shapes, replacing the current compile."""
        started = time.perf_counter()
        # The old compile's memory goes first. Its output ports hold the compiled model too,
        # and with it every buffer of its last call: kept, they put two compiles' memory at
        # the peak (the paper-size INT8 graph: 8.26 GiB against 6.97 for one).
        self._request = self._compiled = self._outputs = None
        self._compile(lambda model: model.reshape({n: list(v) for n, v in shapes.items()}))
        self._shapes = shapes
        seconds = time.perf_counter() - started
        self.shape_compile_seconds += seconds
        logger.info("%s: compiled %s for %s in %.2f s", self.name, self._path.name,
                    shapes, seconds)  # fmt: skip

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.static_shapes:
            shapes = {name: tuple(feeds[name].shape) for name in self.input_names}
            if shapes != self._shapes:
                self._compile_for(shapes)
        # share_outputs=False (the default): the arrays returned are copies, not views of
        # the request's buffers, which the next call overwrites.
        results = self._request.infer({name: feeds[name] for name in self.input_names})
        return {name: results[port] for name, port in self._outputs.items()}

    def _release(self) -> None:
        """Drop the request, the compiled model and its output ports (OpenVINO frees them with
        the last reference; a port is one)."""
        self._request = self._compiled = self._outputs = None


__all__ = [
    "OPENVINO_PRECISIONS",
    "RUNTIME_PRECISIONS",
    "OpenVINOBackend",
    "check_capabilities",
    "cpu_capabilities",
    "default_cache_dir",
    "import_openvino",
    "openvino_precision",
    "openvino_status",
]
