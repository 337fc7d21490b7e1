"""``trtexec`` commands that build a bundle's engines, for production builds and machines
where ``export/build_engine.py`` should not import TensorRT: ``trtexec_commands`` and
``trtexec_script`` (the commands with comment lines saying which TensorRT they assume).

The engines are the ones ``export.engine.build_engines`` would build (same ONNX graph, typing
and optimisation profile, see ``export.engine.plan_build``), but get no manifest entry.
Nothing here imports ``tensorrt``: its version is read from pip metadata when installed.
"""

from __future__ import annotations

import shlex
from importlib import metadata as importlib_metadata
from pathlib import Path

from export.engine import BuildPlan, engine_graphs, plan_build, workspace_mib
from runtime.backends.base import as_manifest
from runtime.backends.trt import MIN_TENSORRT_MAJOR, major_version
from runtime.manifest import Manifest
from runtime.profiles import PROFILE_POINTS, profile_shapes, shape_list

DEFAULT_TENSORRT_MAJOR = 10  # assumed for trtexec commands when TensorRT is not installed here
# pip distributions that install the ``tensorrt`` module (the meta package and per-CUDA wheels).
TENSORRT_DISTRIBUTIONS = (
    "tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11",
    "tensorrt-cu13-bindings", "tensorrt-cu12-bindings", "tensorrt-cu11-bindings",
)  # fmt: skip


def installed_tensorrt_version() -> str | None:
    """The installed TensorRT's version from pip metadata, without importing ``tensorrt``."""
    for name in TENSORRT_DISTRIBUTIONS:
        try:
            return importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return None


def resolve_tensorrt_major(tensorrt_major: int | None = None) -> tuple[int, str]:
    """The TensorRT major version commands are written for, and a line saying where it came from.

    Given explicitly, it is used as is; otherwise the installed ``tensorrt`` distribution's
    version (read from pip metadata, the module is not imported); otherwise 10 is assumed.
    """
    if tensorrt_major is not None:
        if tensorrt_major < MIN_TENSORRT_MAJOR:
            raise ValueError(f"TensorRT {tensorrt_major} is not supported (needs >= 10)")
        return tensorrt_major, f"written for TensorRT {tensorrt_major} (as requested)"
    version = installed_tensorrt_version()
    if version is not None:
        return major_version(version), f"written for TensorRT {version} (installed here)"
    return DEFAULT_TENSORRT_MAJOR, (
        f"written for TensorRT {DEFAULT_TENSORRT_MAJOR}: tensorrt is not installed here, so "
        "version 10 is assumed; pass --tensorrt-major 11 for TensorRT 11"
    )


def _trtexec_entries(
    bundle: str | Path | Manifest,
    precision: str,
    workspace_gb: float | None,
    timing_cache: str | Path | None,
    graphs: tuple[str, ...] | list[str] | None,
    tensorrt_major: int | None,
) -> tuple[str, list[tuple[str, BuildPlan, Path]]]:
    major, origin = resolve_tensorrt_major(tensorrt_major)
    manifest = as_manifest(bundle, verify=False)
    graphs = engine_graphs(manifest, precision) if graphs is None else graphs
    entries = []
    for graph in graphs:
        plan = plan_build(manifest, graph, precision, major)
        engine = manifest.path(plan.engine_file, listed=False)
        args = ["trtexec", f"--onnx={manifest.path(plan.onnx_file)}", f"--saveEngine={engine}"]
        # --stronglyTyped: opt-in on TensorRT 10; on 11 strong typing is always on and the flag
        # is "no longer needed" (10.x -> 11.x trtexec migration guide), accepted as a no-op.
        # --fp16 exists only on TensorRT 10 (removed in 11 with --int8, --best, ...).
        args.append("--stronglyTyped" if plan.strongly_typed else "--fp16")
        shapes = profile_shapes(manifest, graph)
        if shapes:
            # trtexec shape spec: name:AxBxC, comma-separated; min, opt and max all given.
            for which in PROFILE_POINTS:
                args.append(f"--{which}Shapes={shape_list(shapes, which)}")
        if workspace_gb is not None:
            # --memPoolSize=workspace:N: N in MiB when no unit suffix is given (trtexec help,
            # TensorRT 8.4 to 10.x); suffixes (K, M, G) were added later, so none is used.
            args.append(f"--memPoolSize=workspace:{workspace_mib(workspace_gb)}")
        if timing_cache is not None:
            args.append(f"--timingCacheFile={timing_cache}")
        args.append("--skipInference")  # build and save only; benchmarks measure elsewhere
        entries.append((shlex.join(args), plan, engine))
    return origin, entries


def trtexec_commands(
    bundle: str | Path | Manifest,
    precision: str,
    workspace_gb: float | None = None,
    timing_cache: str | Path | None = None,
    graphs: tuple[str, ...] | list[str] | None = None,
    tensorrt_major: int | None = None,
) -> list[str]:
    """The ``trtexec`` command (shell-quoted) that builds each graph's engine.

    Args:
        bundle: the bundle directory (or its loaded ``Manifest``).
        precision: "fp32", "fp16" or "int8-tensorrt" (needs the bundle's "int8-tensorrt" graph).
        workspace_gb: builder workspace limit in GiB (``--memPoolSize``); None: TensorRT's.
        timing_cache: a timing cache file trtexec loads and saves (``--timingCacheFile``).
        graphs: which graphs (default ``export.engine.engine_graphs``).
        tensorrt_major: the TensorRT major version the flags are for; None: the installed
            version, or 10 when TensorRT is not installed (``trtexec_script`` says which).
    Returns:
        One command per graph, writing ``engines/{graph}.{precision}.plan`` in the bundle.
        Engines built this way get no manifest entry; ``build_engines`` records its engines.
    """
    _, entries = _trtexec_entries(
        bundle, precision, workspace_gb, timing_cache, graphs, tensorrt_major
    )
    return [command for command, _, _ in entries]


def trtexec_script(
    bundle: str | Path | Manifest,
    precision: str,
    workspace_gb: float | None = None,
    timing_cache: str | Path | None = None,
    graphs: tuple[str, ...] | list[str] | None = None,
    tensorrt_major: int | None = None,
) -> str:
    """``trtexec_commands`` preceded by comment lines: the TensorRT version assumed, fallbacks."""
    origin, entries = _trtexec_entries(
        bundle, precision, workspace_gb, timing_cache, graphs, tensorrt_major
    )
    # trtexec does not create --saveEngine's folder, and a fresh bundle has no engines/: it
    # would build for minutes and then fail to write the plan.
    folders = dict.fromkeys(str(engine.parent) for _, _, engine in entries)
    lines = [
        f"# trtexec commands ({precision}), {origin}",
        (
            "# engines built by trtexec get no manifest.json entry; "
            "export/build_engine.py builds and records them"
        ),
    ]
    lines += [f"# note: {plan.note}" for _, plan, _ in entries if plan.note]
    lines += [shlex.join(["mkdir", "-p", folder]) for folder in folders]
    lines += [command for command, _, _ in entries]
    return "\n".join(lines)
