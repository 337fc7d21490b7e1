"""Optimisation-profile shapes: the manifest's min/opt/max ranges of the named axes (T, E, L)
applied to a graph's inputs.

One home for the three places that need them: the TensorRT builder and ``trtexec`` commands
(``export/``), the onnxruntime TensorRT execution provider's profile options and the input
checks' messages (``runtime/backends/``).
"""

from __future__ import annotations

from collections.abc import Mapping

from runtime.manifest import AXES, BundleError, Manifest, TensorSpec

# The points of a profile, in the order TensorRT takes them.
PROFILE_POINTS = ("min", "opt", "max")
Profiles = Mapping[str, Mapping[str, int]]


def is_dynamic(spec: TensorSpec) -> bool:
    """Whether ``spec`` has a named (dynamic) axis."""
    return not all(isinstance(dim, int) for dim in spec.shape)


def profile_shape(spec: TensorSpec, profiles: Profiles, which: str) -> tuple[int, ...]:
    """The concrete shape of ``spec`` at a profile point ("min", "opt", "max").

    Raises:
        BundleError: a named axis of ``spec`` has no profile.
    """
    dims = []
    for dim in spec.shape:
        if isinstance(dim, int):
            dims.append(dim)
        elif dim in profiles:
            dims.append(int(profiles[dim][which]))
        else:
            raise BundleError(
                f"input {spec.describe()} has axis {dim!r} without a profile (profiles: "
                f"{sorted(profiles)}; axes: {sorted(AXES)})"
            )
    return tuple(dims)


def profile_shapes(manifest: Manifest, graph: str) -> dict[str, dict[str, tuple[int, ...]]]:
    """min/opt/max shapes of every input of ``graph`` with a dynamic axis, in input order.

    Raises:
        BundleError: naming the bundle, when a dynamic axis has no profile.
    """
    try:
        return {
            spec.name: {which: profile_shape(spec, manifest.profiles, which)
                        for which in PROFILE_POINTS}
            for spec in manifest.inputs(graph)
            if is_dynamic(spec)
        }  # fmt: skip
    except BundleError as error:
        raise BundleError(f"bundle {manifest.root}: {error}") from None


def shape_list(shapes: Mapping[str, Mapping[str, tuple[int, ...]]], which: str) -> str:
    """``name:AxB,name2:CxD`` at one profile point: the syntax of trtexec's ``--minShapes``
    and of the onnxruntime TensorRT EP's ``trt_profile_min_shapes`` (and opt, max)."""
    return ",".join(
        f"{name}:{'x'.join(str(d) for d in points[which])}" for name, points in shapes.items()
    )


def describe_shape(spec: TensorSpec, profiles: Profiles) -> str:
    """``spec``'s shape with the profile range of each named axis: ``[T in 1..36, 360, 640, 3]``."""
    dims = []
    for dim in spec.shape:
        if isinstance(dim, str) and dim in profiles:
            dims.append(f"{dim} in {profiles[dim]['min']}..{profiles[dim]['max']}")
        else:
            dims.append(str(dim))
    return f"[{', '.join(dims)}]"
