"""Bundle -> TensorRT engines: ``build_engines(bundle, precision, ...)``; the equivalent
``trtexec`` commands for production builds are in ``export.trtexec``.

Precision lives in the ONNX graph (docs/design.md, "Precision on TensorRT 10 and 11"):

- fp32: the "fp32" graph, built as a strongly typed network.
- fp16: the "fp16" graph (FP16 with normalisations, softmax and reductions kept in FP32),
  strongly typed. A bundle without it can still get an FP16 engine on TensorRT 10 only: the
  fp32 graph as a weakly typed network with ``BuilderFlag.FP16``. TensorRT 11 removed that
  flag (and trtexec's ``--fp16``), so there the bundle must be exported with
  ``--precision fp16``.
- int8-tensorrt: the "int8-tensorrt" graph (explicit Q/DQ quantization from calibration), strongly
  typed; TensorRT 11 has no other INT8 path (no ``IInt8Calibrator``, no ``--int8``).

Every engine has one optimisation profile spanning the manifest's T/E/L ranges, is written to
``engines/{graph}.{precision}.plan`` atomically and gets a manifest entry (TensorRT version,
GPU, compute capability, source graph, profile). An engine runs only on the GPU model and the
TensorRT version it was built with.

TensorRT API (checked against NVIDIA's Python API reference for 10.x and the 10.x -> 11.x
migration guide): ``trt.Builder``, ``Builder.create_network`` with
``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (deprecated and ignored in 11, where every
network is strongly typed), ``trt.OnnxParser.parse_from_file`` (resolves external data next
to the file), ``ParserError.desc/node/node_name/node_operator``,
``Builder.create_optimization_profile``, ``IOptimizationProfile.set_shape``,
``IBuilderConfig.add_optimization_profile/set_memory_pool_limit/create_timing_cache/
set_timing_cache/get_timing_cache``, ``ITimingCache.serialize``,
``Builder.build_serialized_network`` (``None`` on failure), ``BuilderFlag.FP16`` (10.x only),
an ``ILogger`` subclass that forwards TensorRT's messages to ``logging``.

This module imports ``tensorrt`` only inside ``build_engines``, through the runtime's
``import_tensorrt``; the TensorRT logger and the GPU probe are the runtime's too
(``runtime.backends``), so builder and runtime share them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from runtime.backends.base import BackendUnavailable, CudaError, as_manifest
from runtime.backends.gpu import gpu_info as probe_gpu
from runtime.backends.gpu import load_cuda_api
from runtime.backends.trt import import_tensorrt as load_tensorrt
from runtime.backends.trt import major_version, tensorrt_logger
from runtime.manifest import GRAPHS, SPLIT_GRAPHS, BundleError, Manifest, atomic_write_bytes
from runtime.precisions import ENGINE_PRECISIONS, INT8_TENSORRT, precision_name
from runtime.profiles import PROFILE_POINTS, profile_shape

log = logging.getLogger(__name__)

# An engine carries the name of the bundle variant it is built from (runtime.precisions).
PRECISIONS = ENGINE_PRECISIONS
ENGINE_DIR = "engines"
INSTALL_HINT = 'pip install -e ".[tensorrt]"'


class EngineBuildError(RuntimeError):
    """An engine cannot be built here; the message says what to do about it."""


@dataclass(frozen=True)
class BuildPlan:
    """How one engine is built: from which ONNX file, strongly typed or with the FP16 flag."""

    graph: str
    precision: str  # "fp32" | "fp16" | "int8-tensorrt"
    variant: str  # the bundle's ONNX variant: "fp32", "fp16", "int8-tensorrt"
    onnx_file: str  # relative to the bundle
    strongly_typed: bool  # False: weakly typed network + BuilderFlag.FP16 (TensorRT 10 only)
    note: str | None = None  # a fallback the user should know about

    @property
    def engine_file(self) -> str:
        return engine_file(self.graph, self.precision)


def engine_file(graph: str, precision: str) -> str:
    """The engine's path relative to the bundle: ``engines/{graph}.{precision}.plan``."""
    return f"{ENGINE_DIR}/{graph}.{precision}.plan"


def plan_build(manifest: Manifest, graph: str, precision: str, tensorrt_major: int) -> BuildPlan:
    """Choose the ONNX variant and network typing of one engine.

    Raises ``BundleError`` (from ``Manifest.variant``, naming the variant and how to make it)
    when the bundle lacks the graph the precision needs, and ``EngineBuildError`` for an FP16
    engine without an FP16 graph on TensorRT >= 11.
    """
    precision = precision_name(precision, PRECISIONS, "engine precision")
    if precision == "fp16" and "fp16" not in manifest.precisions(graph):
        if tensorrt_major >= 11:
            # TensorRT 11 removed BuilderFlag.FP16 and trtexec --fp16 (10.x -> 11.x migration
            # guide, "Removed Python APIs"; "Migrating trtexec Usage").
            raise EngineBuildError(
                f"bundle {manifest.root} has no fp16 variant of {graph}.onnx and TensorRT "
                f"{tensorrt_major} builds only strongly typed networks (the FP16 builder flag "
                "is gone): re-export the bundle with python export/to_onnx.py ... --precision "
                "fp32 fp16"
            )
        variant = manifest.variant(graph, "fp32")
        return BuildPlan(
            graph, precision, "fp32", variant["file"], strongly_typed=False,
            note=(
                f"{graph}: the bundle has no fp16 graph; building the fp32 graph as a weakly "
                "typed network with the FP16 builder flag, which only TensorRT 10 has (export "
                "with --precision fp16 for an FP16 graph that TensorRT 11 can build)"
            ),
        )  # fmt: skip
    variant = precision
    if (
        precision == INT8_TENSORRT
        and graph in SPLIT_GRAPHS
        and precision not in manifest.precisions(graph)
    ):
        raise BundleError(
            f"{graph} has no INT8 variant: calibrate the bundle (calibration/calibrate.py "
            "--target int8-tensorrt), which quantizes both parts of the split video graph, or "
            "build its engines at fp16 or fp32"
        )
    if (
        precision == INT8_TENSORRT
        and variant not in manifest.precisions(graph)
        and graph != "video"
    ):
        # Calibration quantizes the video graph only; the text encoder (run once per
        # expression, not per frame) goes into the INT8 set of engines at its best float graph.
        fallback = "fp16" if "fp16" in manifest.precisions(graph) else "fp32"
        return BuildPlan(
            graph, precision, fallback, manifest.variant(graph, fallback)["file"], True,
            note=f"{graph}: no INT8 graph (calibration quantizes the video graph); "
            f"built from its {fallback} graph",
        )  # fmt: skip
    return BuildPlan(graph, precision, variant, manifest.variant(graph, variant)["file"], True)


def engine_graphs(manifest: Manifest, precision: str) -> list[str]:
    """The graphs an engine set of ``precision`` has by default: the text encoder and the video
    graph, and the split video graph's two parts where the bundle has them (at INT8: where
    calibration quantized them)."""
    graphs = list(GRAPHS)
    precision = precision_name(precision, PRECISIONS, "engine precision")
    split = manifest.split_precisions()
    if split and (precision != INT8_TENSORRT or precision in split):
        graphs += SPLIT_GRAPHS
    return graphs


def workspace_mib(workspace_gb: float) -> int:
    """A workspace limit in GiB as whole MiB (at least 1); ValueError unless positive."""
    if workspace_gb <= 0:
        raise ValueError(f"workspace must be positive GiB, got {workspace_gb}")
    return max(1, int(workspace_gb * 1024))


# -- TensorRT and the GPU (the runtime's, with build errors) ------------------------------------


def gpu_info(device: int = 0) -> dict[str, str]:
    """Name and compute capability ("8.6") of a CUDA GPU (``runtime.backends.gpu_info``).

    Raises ``EngineBuildError`` without cuda-python or without a usable CUDA GPU.
    """
    try:
        return probe_gpu(device)
    except BackendUnavailable as error:
        raise EngineBuildError(
            f"{error}; TensorRT engines are built on the GPU model they will run on, with its "
            f"NVIDIA driver and the GPU extra installed: {INSTALL_HINT}"
        ) from None


def import_tensorrt():
    """``import tensorrt`` (``runtime.backends.import_tensorrt``: needs >= 10), or
    ``EngineBuildError`` saying how to install it."""
    try:
        return load_tensorrt()
    except BackendUnavailable as error:
        raise EngineBuildError(str(error)) from None


# -- building ----------------------------------------------------------------------------------


def build_engines(
    bundle: str | Path | Manifest,
    precision: str = "fp16",
    workspace_gb: float | None = None,
    timing_cache: str | Path | None = None,
    graphs: tuple[str, ...] | list[str] | None = None,
    verbose: bool = False,
    device: int = 0,
) -> dict[str, dict]:
    """Build a TensorRT engine per graph of a bundle and record it in the bundle's manifest.

    Args:
        bundle: the bundle directory (loaded with every file's sha256 verified), or a Manifest.
        precision: "fp32", "fp16" or "int8-tensorrt" (see the module docstring for the graphs
            used; "int8", the name of earlier releases, is accepted).
        workspace_gb: builder workspace limit in GiB; None leaves TensorRT's default (the
            device's memory).
        timing_cache: a timing cache file, loaded when it exists and saved back (atomically)
            after each engine, so rebuilds and the other graph reuse the tactic timings.
        graphs: which graphs to build (default ``engine_graphs``).
        verbose: TensorRT's verbose log.
        device: the CUDA device to build on (TensorRT builds for the current device); its
            name and compute capability are recorded.
    Returns:
        graph -> the manifest entry of its engine (file, tensorrt, gpu, compute_capability,
        device, built_from, strongly_typed, profile, workspace_gb, build_seconds).
    Raises:
        EngineBuildError: TensorRT or cuda-python missing, TensorRT < 10, no CUDA GPU, an FP16
            engine without an FP16 graph on TensorRT 11, a parser error (naming the nodes), a
            failed build.
        BundleError: the bundle lacks the graph variant the precision needs.
    """
    precision = precision_name(precision, PRECISIONS, "engine precision")
    if workspace_gb is not None:
        workspace_mib(workspace_gb)
    manifest = as_manifest(bundle, verify=True)
    trt = import_tensorrt()
    major = major_version(trt.__version__)
    # Plans first: a missing variant is reported before any GPU work.
    graphs = engine_graphs(manifest, precision) if graphs is None else graphs
    plans = [plan_build(manifest, graph, precision, major) for graph in graphs]
    gpu = gpu_info(device) | {"device": device}
    logger = tensorrt_logger(trt, verbose)  # also registers TensorRT's plugins for the parser
    log.info("TensorRT %s on CUDA device %d, %s (sm %s)", trt.__version__, device, gpu["name"],
             gpu["compute_capability"])  # fmt: skip
    entries = {}
    # TensorRT builds on the calling thread's current CUDA device.
    with _current_device(device):
        for plan in plans:
            if plan.note:
                log.warning(plan.note)
            entries[plan.graph] = _build_engine(trt, logger, manifest, plan, gpu, workspace_gb,
                                                timing_cache)  # fmt: skip
    return entries


@contextlib.contextmanager
def _current_device(device: int) -> Iterator[None]:
    """``device`` current on this thread for the block (the runtime's CUDA layer)."""
    stack = contextlib.ExitStack()
    try:
        cuda = load_cuda_api(device)
        stack.enter_context(cuda.activate(device))
    except (BackendUnavailable, CudaError) as error:
        raise EngineBuildError(f"cannot make CUDA device {device} current: {error}") from None
    with stack:
        yield


def _build_engine(trt, logger, manifest: Manifest, plan: BuildPlan, gpu: dict,
                  workspace_gb: float | None, timing_cache: str | Path | None) -> dict:  # fmt: skip
    onnx_path = manifest.path(plan.onnx_file)
    log.info("building %s (%s) from %s", plan.engine_file, plan.precision, plan.onnx_file)
    start = time.perf_counter()
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, plan.strongly_typed))
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)) so a sibling external-data file is found.
    if not parser.parse_from_file(str(onnx_path)):
        raise EngineBuildError(_parser_failure(parser, onnx_path))

    config = builder.create_builder_config()
    if not plan.strongly_typed:
        # TensorRT 10 only: BuilderFlag.FP16 is removed in 11 (plan_build refuses this there).
        config.set_flag(trt.BuilderFlag.FP16)
    if workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    profile = _add_profile(builder, config, network, manifest, plan.graph)
    _load_timing_cache(config, timing_cache)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT could not build {plan.engine_file} from {onnx_path} (the errors are in "
            "TensorRT's log above; rerun with --verbose for more). Common causes: too small a "
            "workspace (--workspace), profile ranges too large for the GPU's memory (re-export "
            "with smaller --frames/--expressions maxima), or layers without an implementation "
            "in this precision"
        )
    build_seconds = time.perf_counter() - start
    if timing_cache is not None:
        atomic_write_bytes(Path(timing_cache), memoryview(config.get_timing_cache().serialize()))

    path = manifest.path(plan.engine_file, listed=False)  # engines/ must not lead outside
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, memoryview(serialized))
    manifest.add_file(plan.engine_file, "tensorrt engine")
    entry = {
        "file": plan.engine_file,
        "tensorrt": trt.__version__,
        "gpu": gpu["name"],
        "compute_capability": gpu["compute_capability"],
        "device": gpu["device"],
        "built_from": plan.onnx_file,
        "strongly_typed": plan.strongly_typed,
        "profile": profile,
        "workspace_gb": workspace_gb,
        "build_seconds": round(build_seconds, 1),
    }
    manifest.add_engine(plan.precision, plan.graph, entry)
    manifest.save()
    log.info("wrote %s (%.1f MB) in %.1f s", path, path.stat().st_size / 1e6, build_seconds)
    return entry


def _network_flags(trt, strongly_typed: bool) -> int:
    """Creation flags: STRONGLY_TYPED, or 0 for TensorRT 10's weakly typed network.

    In TensorRT 11 the flag is deprecated and ignored (every network is strongly typed); it is
    looked up with getattr so a release that drops it still gets a strongly typed network.
    """
    if not strongly_typed:
        return 0
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _parser_failure(parser, onnx_path: Path) -> str:
    """The parser's errors, each with the failing node's name, operator and description."""
    lines = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        # node_name()/node_operator() exist from TensorRT 10.0 (IParserError::nodeName,
        # nodeOperator); node() is the node's index, -1 when the error is not about a node.
        name = _call(error, "node_name")
        operator = _call(error, "node_operator")
        node = _call(error, "node")
        where = f"node {name!r}" if name else (f"node #{node}" if node not in (None, -1) else "")
        if operator:
            where = f"{where} ({operator})" if where else f"({operator})"
        lines.append(f"  - {where + ': ' if where else ''}{error.desc()}")
    hint = ""
    try:
        from .tensorrt_ops import tensorrt_report

        report = tensorrt_report({onnx_path.name: onnx_path})
        if report["problems"]:
            hint = "\nthe operator table also flags:\n" + "\n".join(
                f"  - {problem}" for problem in report["problems"]
            )
    except Exception as error:  # noqa: BLE001 - a failing hint must not hide the parser errors
        log.debug("no operator report for %s: %s", onnx_path, error)
    return (
        f"TensorRT's ONNX parser rejected {onnx_path}:\n"
        + "\n".join(lines)
        + hint
        + "\nchange the model or the export so these nodes become supported operators "
        "(export.tensorrt_ops lists them), then re-export the bundle"
    )


def _call(obj, method: str):
    function = getattr(obj, method, None)
    try:
        return function() if callable(function) else None
    except (RuntimeError, TypeError, ValueError):
        return None


def _add_profile(builder, config, network, manifest: Manifest, graph: str) -> dict:
    """One optimisation profile: min/opt/max from the manifest for every dynamic input."""
    specs = {spec.name: spec for spec in manifest.inputs(graph)}
    profile = builder.create_optimization_profile()
    shapes = {}
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        spec = specs.get(tensor.name)
        if spec is None:
            raise EngineBuildError(
                f"{graph} graph input {tensor.name!r} is not in the manifest ({sorted(specs)}): "
                "the ONNX file does not belong to this bundle; re-export it"
            )
        dims = tuple(tensor.shape)
        if len(dims) != len(spec.shape) or any(
            d >= 0 and isinstance(s, int) and d != s for d, s in zip(dims, spec.shape, strict=True)
        ):
            raise EngineBuildError(
                f"{graph} graph input {tensor.name} has shape {dims} in the ONNX file but "
                f"{spec.describe()} in the manifest; re-export the bundle"
            )
        if all(d >= 0 for d in dims):
            continue
        points = {which: profile_shape(spec, manifest.profiles, which) for which in PROFILE_POINTS}
        try:
            profile.set_shape(tensor.name, points["min"], points["opt"], points["max"])
        except (RuntimeError, TypeError, ValueError) as error:
            # TensorRT raises (not returns False) for min > opt, opt > max, a negative or
            # wrong-rank shape: the manifest's profiles are the cause, so name them.
            raise EngineBuildError(
                f"TensorRT rejected the {graph} profile of input {tensor.name} (ONNX shape "
                f"{dims}): min {points['min']}, opt {points['opt']}, max {points['max']} from "
                f"the manifest's profiles {manifest.profiles} ({error}); re-export the bundle "
                "with valid --frames/--expressions ranges"
            ) from None
        shapes[tensor.name] = {which: list(shape) for which, shape in points.items()}
    index = config.add_optimization_profile(profile) if shapes else 0
    if isinstance(index, int) and index < 0:  # -1: TensorRT found the profile invalid
        raise EngineBuildError(f"TensorRT rejected the {graph} optimisation profile {shapes}")
    return shapes


def _load_timing_cache(config, path: str | Path | None) -> None:
    """Attach a timing cache: the file's when it exists and TensorRT accepts it, else a new one."""
    if path is None:
        return
    path = Path(path)
    blob = path.read_bytes() if path.is_file() else b""
    cache = None
    if blob:
        try:
            cache = config.create_timing_cache(blob)
        except (RuntimeError, TypeError, ValueError) as error:  # truncated, other version
            log.warning("timing cache %s is unusable (%s); starting a new one", path, error)
    if cache is None:
        cache = config.create_timing_cache(b"")  # an empty buffer makes a new cache
    # ignore_mismatch=False: a cache from another GPU model is not applied (it would mislead
    # the tactic choice); TensorRT then logs the mismatch and builds without it.
    if config.set_timing_cache(cache, ignore_mismatch=False) is False:
        log.warning("timing cache %s does not match this GPU/TensorRT; starting a new one", path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    elif blob:
        log.info("timing cache loaded from %s", path)
