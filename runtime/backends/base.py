"""What every backend shares: the errors, the manifest's input checks and :class:`BaseBackend`.

A backend runs one graph of a bundle: ``infer(feeds) -> outputs``, both dicts of numpy arrays
keyed by the tensor names the manifest records. :class:`BaseBackend` reads those names from
the manifest and checks every call's feeds against it (:func:`check_feeds`) before the
backend's own ``_infer``, so a wrong dtype, rank or size fails with an error naming the
tensor, the expected shape with its profile ranges and the received one, not deep inside a
runtime.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np

from runtime.manifest import BundleError, Manifest, TensorSpec
from runtime.precisions import PRECISIONS, precision_name
from runtime.profiles import describe_shape

AVAILABLE = "available"
BUILD_ENGINE = "python export/build_engine.py"


class InputError(ValueError):
    """Feeds that do not match a graph's inputs (names, dtype, rank, static dims, profiles)."""


class BackendUnavailable(RuntimeError):
    """A backend or execution provider that this machine cannot run (says what is missing)."""


def import_package(
    module: str, install: str, errors: tuple[type[BaseException], ...] = (ImportError,)
) -> Any:
    """``import module``, or BackendUnavailable naming the error and ``install`` (the command
    that installs it): the one rule for a backend whose package may be absent."""
    try:
        return importlib.import_module(module)
    except errors as error:
        raise BackendUnavailable(f"{module} is not installed ({error}); {install}") from None


def user_cache_dir(name: str) -> Path:
    """``$PROXYFORMER_CACHE/<name>``, else ``$XDG_CACHE_HOME/proxyformer/<name>``, else
    ``~/.cache/proxyformer/<name>``: where backends keep compiled models by default (never
    inside a bundle, which may be read-only)."""
    root = os.environ.get("PROXYFORMER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "proxyformer"
    )
    return Path(root) / name


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


# -- the base class ------------------------------------------------------------------------


def as_manifest(manifest: Manifest | str | Path, verify: bool = True) -> Manifest:
    """``manifest`` itself, or the manifest of the bundle directory it names (loaded with
    every file's sha256 checked when ``verify``)."""
    return manifest if isinstance(manifest, Manifest) else Manifest.load(manifest, verify=verify)


class BaseBackend:
    """One graph of a bundle on some runtime; subclasses implement ``_infer`` and ``_release``.

    The constructor reads the graph's inputs and outputs from the manifest; :meth:`infer`
    checks the feeds against them before ``_infer``; :meth:`close` releases once (also as a
    context manager). Subclasses set ``name`` once loaded, e.g. "onnxruntime-cpu fp16".

    Args:
        manifest: the bundle's manifest (or the bundle directory).
        graph: "text_encoder" or "video".
        precision: the variant ("fp32", "fp16", "int8-tensorrt", "int8-cpu").
    """

    name: str
    runtime: str  # "onnxruntime", "openvino" or "tensorrt"
    _closed = False
    # Seconds spent inside ``infer`` compiling for new input shapes (OpenVINO's static
    # shapes), so timings can tell a one-off compile from the call's own work.
    shape_compile_seconds = 0.0

    def __init__(self, manifest: Manifest | str | Path, graph: str, precision: str) -> None:
        self.manifest = as_manifest(manifest)
        self.graph = graph
        self.precision = precision_name(precision, PRECISIONS)
        self._input_specs = self.manifest.inputs(graph)
        self.input_names = tuple(spec.name for spec in self._input_specs)
        self.output_names = tuple(spec.name for spec in self.manifest.outputs(graph))

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check ``feeds`` against the manifest, then run the graph.

        Args:
            feeds: input name -> numpy array, exactly the graph's inputs.

        Returns:
            Output name -> numpy array, in the manifest's output order.

        Raises:
            InputError: the feeds do not match the graph's inputs (see :func:`check_feeds`).
        """
        if self._closed:
            raise RuntimeError(f"{self.name} is closed")
        check_feeds(self.graph, self._input_specs, self.manifest.profiles, feeds)
        return self._infer(feeds)

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the backend's resources; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        self._release()

    def _release(self) -> None:
        """Free what the subclass holds (sessions, engines, device memory)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        name = getattr(self, "name", type(self).__name__)
        return f"<{type(self).__name__} {name} {getattr(self, 'graph', '?')}>"
