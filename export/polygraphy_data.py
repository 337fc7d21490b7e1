"""Realistic inputs for any graph of a bundle, for Polygraphy and for the project's own checks.

As a Polygraphy data-loader script (docs/polygraphy.md)::

    PROXYFORMER_BUNDLE=bundles/tiny polygraphy run bundles/tiny/video.fp16.onnx --onnxrt \\
        --data-loader-script export/polygraphy_data.py:load_video

``load_video`` and ``load_text_encoder`` yield the feeds of one graph; the bundle comes from
``PROXYFORMER_BUNDLE`` (Polygraphy calls the function without arguments), the sizes from
``PROXYFORMER_SIZES`` ("T=12,E=2,L=16"; each axis left out is the manifest's optimal size, the
"opt" of its profile), ``PROXYFORMER_ITERATIONS`` (feeds per run, default 1) and
``PROXYFORMER_SEED`` (default 0).

What the feeds hold, instead of Polygraphy's uniform random values (which give the video graph
text features no text encoder produces, and token ids whose mask says nothing):

- ``frames``: a clip of the synthetic referring-video set (``training.data.synthetic``: shapes
  moving over a textured background) at the bundle's resolution, uint8 NHWC;
- ``input_ids`` / ``attention_mask``: expressions about that clip's objects, tokenized with
  the bundle's tokenizer and padded (mask 0) or truncated to L tokens;
- ``text_features``: those tokens run through the bundle's FP32 text graph (onnxruntime, CPU).

``python -m export.polygraphy_data BUNDLE GRAPH --trt-shapes`` prints Polygraphy's
``--trt-min-shapes/--trt-opt-shapes/--trt-max-shapes`` arguments for the manifest's profile,
so that ``polygraphy run --trt`` builds the engine for the same shape ranges as
``export/build_engine.py``.

The same feeds come from :func:`graph_feeds` in Python (tests/test_polygraphy.py compares the
FP32, FP16 and INT8 graphs through Polygraphy's Comparator with them).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from runtime.backends.base import as_manifest
from runtime.manifest import BundleError, Manifest
from runtime.profiles import PROFILE_POINTS, profile_shapes

ENV_BUNDLE = "PROXYFORMER_BUNDLE"
ENV_SIZES = "PROXYFORMER_SIZES"
ENV_ITERATIONS = "PROXYFORMER_ITERATIONS"
ENV_SEED = "PROXYFORMER_SEED"


def parse_sizes(text: str | None) -> dict[str, int]:
    """``"T=12,E=2,L=16"`` -> ``{"T": 12, "E": 2, "L": 16}`` (empty or None: ``{}``).

    Raises:
        ValueError: naming the item that is not ``AXIS=positive integer``.
    """
    sizes: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        axis, _, value = item.partition("=")
        if not axis.strip() or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"size {item!r} is not AXIS=N with N >= 1 (e.g. T=12,E=2,L=16)")
        sizes[axis.strip()] = int(value)
    return sizes


def resolve_sizes(manifest: Manifest, sizes: Mapping[str, int] | None = None) -> dict[str, int]:
    """Every profiled axis at ``sizes`` where given, else at its profile's "opt".

    Raises:
        ValueError: an axis the manifest has no profile for, or a size outside its profile.
    """
    profiles = manifest.profiles
    sizes = dict(sizes or {})
    unknown = sorted(set(sizes) - set(profiles))
    if unknown:
        raise ValueError(
            f"axes {unknown} are not in the manifest's profiles ({sorted(profiles)}) of "
            f"bundle {manifest.root}"
        )
    resolved = {}
    for axis, bounds in profiles.items():
        value = int(sizes.get(axis, bounds["opt"]))
        if not bounds["min"] <= value <= bounds["max"]:
            raise ValueError(
                f"{axis}={value} is outside bundle {manifest.root}'s profile "
                f"{bounds['min']}..{bounds['max']}"
            )
        resolved[axis] = value
    return resolved


def synthetic_clip(manifest: Manifest, frames: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """A synthetic referring-video clip at the bundle's resolution: uint8 ``[T, H, W, 3]`` and
    the expressions that refer to its objects."""
    from training.data.synthetic import generate_video  # numpy + PIL; torch is not needed

    height, width = manifest.preprocessing["size"]
    images, _, _, expressions = generate_video(seed, "valid", 0, frames, height, width)
    return images, [text for text, _ in expressions]


def token_feeds(manifest: Manifest, expressions: list[str], length: int) -> dict[str, np.ndarray]:
    """``input_ids`` and ``attention_mask`` ``[E, L]`` int64: the bundle's tokenizer, each
    expression padded with the pad id (mask 0) or truncated to ``length`` tokens."""
    tokenizer = manifest.load_tokenizer()
    pad = int(manifest.preprocessing.get("pad_token_id", 0))
    ids = np.full((len(expressions), length), pad, np.int64)
    mask = np.zeros((len(expressions), length), np.int64)
    for row, encoding in enumerate(tokenizer.encode_batch(expressions)):
        kept = [t for t, m in zip(encoding.ids, encoding.attention_mask) if m][:length]
        ids[row, : len(kept)] = kept
        mask[row, : len(kept)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def graph_feeds(
    bundle: str | Path | Manifest,
    graph: str,
    sizes: Mapping[str, int] | None = None,
    seed: int = 0,
    text_backend=None,
) -> dict[str, np.ndarray]:
    """One set of feeds for ``graph`` ("text_encoder" or "video") of a bundle.

    Args:
        bundle: the bundle directory or its manifest.
        graph: which graph the feeds are for.
        sizes: T, E and L; each axis left out is the profile's "opt".
        seed: picks the synthetic clip (and so the expressions).
        text_backend: the FP32 text graph's backend to reuse (video feeds; created when None).

    Returns:
        Input name -> array, exactly the graph's inputs as the manifest records them.

    Raises:
        ValueError: bad sizes; BundleError: an unknown graph.
        NotImplementedError: a bundle whose frames are "float-nchw" (the runtime normalises
            those itself; this loader writes uint8 NHWC frames only).
    """
    manifest = as_manifest(bundle, verify=False)
    if graph not in manifest.data["graphs"]:
        raise BundleError(f"bundle {manifest.root} has no graph {graph!r}")
    sizes = resolve_sizes(manifest, sizes)
    clip, expressions = synthetic_clip(manifest, sizes["T"], seed)
    # E expressions about the clip (cycled when the clip has fewer).
    expressions = [expressions[i % len(expressions)] for i in range(sizes["E"])]
    tokens = token_feeds(manifest, expressions, sizes["L"])
    if graph == "text_encoder":
        return tokens
    if manifest.preprocessing["frame_format"] != "uint8-nhwc":
        raise NotImplementedError(
            f"bundle {manifest.root} takes {manifest.preprocessing['frame_format']} frames; "
            "the data loader writes uint8-nhwc frames only"
        )
    owned = text_backend is None
    if owned:
        from runtime.backends.ort import OnnxRuntimeBackend

        text_backend = OnnxRuntimeBackend(manifest, "text_encoder", "fp32")
    try:
        features = text_backend.infer(tokens)["text_features"]
    finally:
        if owned:
            text_backend.close()
    return {
        "frames": np.ascontiguousarray(clip),
        "text_features": features,
        "attention_mask": tokens["attention_mask"],
    }


def iter_feeds(
    bundle: str | Path | Manifest,
    graph: str,
    sizes: Mapping[str, int] | None = None,
    iterations: int = 1,
    seed: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """``iterations`` sets of feeds for ``graph``, each from its own clip (seed, seed + 1, ...)."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    manifest = as_manifest(bundle, verify=False)
    for index in range(iterations):
        yield graph_feeds(manifest, graph, sizes, seed + index)


def _from_environment(graph: str) -> list[dict[str, np.ndarray]]:
    bundle = os.environ.get(ENV_BUNDLE)
    if not bundle:
        raise RuntimeError(
            f"set {ENV_BUNDLE} to the bundle directory the ONNX file belongs to, e.g. "
            f"{ENV_BUNDLE}=bundles/tiny polygraphy run bundles/tiny/{graph}.onnx --onnxrt "
            f"--data-loader-script export/polygraphy_data.py:load_{graph}"
        )
    sizes = parse_sizes(os.environ.get(ENV_SIZES))
    iterations = int(os.environ.get(ENV_ITERATIONS, "1"))
    seed = int(os.environ.get(ENV_SEED, "0"))
    # A list, not a generator: Polygraphy may iterate the data more than once (one pass per
    # runner) when it does not cache the inputs.
    return list(iter_feeds(bundle, graph, sizes, iterations, seed))


def load_video() -> list[dict[str, np.ndarray]]:
    """Polygraphy data loader for a bundle's video graph (any precision variant)."""
    return _from_environment("video")


def load_text_encoder() -> list[dict[str, np.ndarray]]:
    """Polygraphy data loader for a bundle's text-encoder graph."""
    return _from_environment("text_encoder")


def trt_shape_args(bundle: str | Path | Manifest, graph: str) -> list[str]:
    """Polygraphy's ``--trt-{min,opt,max}-shapes`` arguments for ``graph``'s profile (the
    manifest's, as ``export.engine`` builds it): ``name:[d0,d1,...]`` per dynamic input."""
    shapes = profile_shapes(as_manifest(bundle, verify=False), graph)
    args: list[str] = []
    for which in PROFILE_POINTS:
        args.append(f"--trt-{which}-shapes")
        args += [f"{name}:[{','.join(map(str, points[which]))}]" for name, points in shapes.items()]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Polygraphy helpers for a bundle's graphs.")
    parser.add_argument("bundle", help="bundle directory (manifest.json)")
    parser.add_argument("graph", choices=("video", "text_encoder"))
    parser.add_argument("--trt-shapes", action="store_true",
                        help="print --trt-min/opt/max-shapes for polygraphy run --trt")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        if args.trt_shapes:
            print(" ".join(trt_shape_args(args.bundle, args.graph)))
            return 0
        feeds = graph_feeds(args.bundle, args.graph)
    except (BundleError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, array in feeds.items():
        print(f"{name}: {array.dtype}{list(array.shape)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
