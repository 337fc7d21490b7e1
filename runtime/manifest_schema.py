"""The structure ``manifest.json`` must have, checked in full before anything reads it.

``check_manifest(data, where)`` raises :class:`BundleError` at the first problem, naming the
JSON path of the field, what it must be and what it is, e.g.
``bundles/tiny/manifest.json: profiles.T.max must be an int >= min (1), got "8"``. A manifest
that passes can be read by every accessor of :class:`runtime.manifest.Manifest`, the backends
and the predictor without a KeyError or TypeError: the checks follow what they read (the
graphs' inputs and outputs the predictor feeds and reads, the preprocessing it applies, the
profiles of every named axis).

``check_relative(name, field, where)`` is the rule for every file name the manifest holds: a
relative POSIX path inside the bundle, no ``..``, not absolute. Names are checked here as
text; ``Manifest.path`` then resolves them (symlinks included) against the bundle root.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

SCHEMA_VERSION = "1.0"
FORMAT = "proxyformer-bundle"
FRAME_FORMATS = ("uint8-nhwc", "float-nchw")
# Symbolic axes of the graphs and what they count.
AXES = {"E": "expressions", "L": "text tokens", "T": "frames"}
GRAPHS = ("text_encoder", "video")
# The video graph in two parts (``export_bundle(split=True)``): optional, both or neither.
SPLIT_GRAPHS = ("video_encoder", "video_decoder")
LEVELS = ("level0", "level1", "level2", "level3")
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")
# What the runtime feeds each graph (all of it: check_feeds refuses missing and extra inputs)
# and which outputs it reads (the predictor, calibration's agreement, the benchmarks).
RUNTIME_INPUTS = {
    "text_encoder": ("input_ids", "attention_mask"),
    "video": ("frames", "text_features", "attention_mask"),
    "video_encoder": ("frames",),
    "video_decoder": (*LEVELS, "text_features", "attention_mask"),
}
RUNTIME_OUTPUTS = {
    "text_encoder": ("text_features",),
    "video": ("pred_logits", "pred_masks"),
    "video_encoder": LEVELS,
    "video_decoder": ("pred_logits", "pred_masks"),
}
REQUIRED_KEYS = ("model", "preprocessing", "profiles", "graphs", "files", "opset", "versions")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class BundleError(ValueError):
    """A bundle that cannot be used: missing or tampered files, wrong schema, bad entries."""


def show(value: Any, limit: int = 80) -> str:
    """A value as JSON for a message, cut to ``limit`` characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def key_path(parent: str, key: str) -> str:
    """``parent.key``, or ``parent["key"]`` for keys that are not plain identifiers."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", key):
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{json.dumps(key)}]"


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))  # fmt: skip


def check_relative(name: Any, field: str, where: str) -> str:
    """``name`` if it is a relative POSIX path that stays inside the bundle as written."""
    if not isinstance(name, str) or not name:
        raise BundleError(f"{where}: {field} must be a file name inside the bundle, got "
                          f"{show(name)}")  # fmt: skip
    if "\\" in name or "\0" in name or PureWindowsPath(name).drive:
        raise BundleError(f"{where}: {field} must be a relative POSIX path inside the bundle "
                          f"(no backslashes or drive letters), got {show(name)}")  # fmt: skip
    parts = PurePosixPath(name).parts
    if PurePosixPath(name).is_absolute() or ".." in parts:
        raise BundleError(
            f"{where}: {field} must be a path inside the bundle, got {show(name)}: absolute "
            "paths and '..' are refused, a bundle reads only its own files"
        )
    return name


class _Checker:
    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, field: str, expected: str, value: Any = None, got: bool = True) -> BundleError:
        received = f", got {show(value)}" if got else ""
        return BundleError(f"{self.where}: {field} must be {expected}{received}")

    def entry(self, parent: dict, key: str, field: str, kind: type, expected: str) -> Any:
        """``parent[key]``, present and of type ``kind`` (``expected`` names it)."""
        if key not in parent:
            raise BundleError(f"{self.where}: {field} is missing")
        value = parent[key]
        if not isinstance(value, kind):
            raise self.fail(field, expected, value)
        return value

    def mapping(self, parent: dict, key: str, field: str) -> dict:
        return self.entry(parent, key, field, dict, "an object")

    def listing(self, parent: dict, key: str, field: str) -> list:
        return self.entry(parent, key, field, list, "a list")

    def listed(self, name: Any, field: str, files: dict) -> str:
        check_relative(name, field, self.where)
        if name not in files:
            raise BundleError(
                f"{self.where}: {field} names {show(name)}, which is not listed in files (its "
                "size and sha256 are unknown, so the runtime will not read it)"
            )
        return name


def check_manifest(data: Any, where: str) -> None:
    """Raise BundleError naming the first field of ``data`` that the runtime cannot use."""
    check = _Checker(where)
    if not isinstance(data, dict):
        raise BundleError(f"{where}: the top level must be a JSON object, got a "
                          f"{type(data).__name__} ({show(data, 40)})")  # fmt: skip
    if data.get("format") != FORMAT:
        raise check.fail("format", json.dumps(FORMAT), data.get("format"))
    version = data.get("schema_version")
    major = SCHEMA_VERSION.split(".")[0]
    if not isinstance(version, str) or version.split(".")[0] != major:
        raise BundleError(
            f"{where}: schema version {version!r} is not readable by this runtime "
            f"(reads {major}.x); re-export the bundle or update"
        )
    for key in REQUIRED_KEYS:
        if key not in data:
            raise BundleError(f"{where}: required key {key!r} is missing")
    model = check.mapping(data, "model", "model")
    if "config" in model and not isinstance(model["config"], dict):
        raise check.fail("model.config", "an object", model["config"])
    if not is_int(data["opset"]) or data["opset"] < 1:
        raise check.fail("opset", "a positive int", data["opset"])
    check.mapping(data, "versions", "versions")
    files = _check_files(check, data)
    profiles = _check_profiles(check, data)
    preprocessing = _check_preprocessing(check, data, files)
    _check_graphs(check, data, files, profiles, preprocessing)
    _check_engines(check, data)


def _check_files(check: _Checker, data: dict) -> dict:
    files = check.mapping(data, "files", "files")
    for name, entry in files.items():
        field = key_path("files", name)
        check_relative(name, f"the file name {field}", check.where)
        if not isinstance(entry, dict):
            raise check.fail(field, "an object with bytes and sha256", entry)
        if "bytes" not in entry:
            raise BundleError(f"{check.where}: {field}.bytes is missing")
        if not is_int(entry["bytes"]) or entry["bytes"] < 0:
            raise check.fail(f"{field}.bytes", "an int >= 0", entry["bytes"])
        if "sha256" not in entry:
            raise BundleError(f"{check.where}: {field}.sha256 is missing")
        if not isinstance(entry["sha256"], str) or not _SHA256.fullmatch(entry["sha256"]):
            raise check.fail(f"{field}.sha256", "64 lowercase hex digits", entry["sha256"])
    return files


def _check_profiles(check: _Checker, data: dict) -> dict:
    profiles = check.mapping(data, "profiles", "profiles")
    for axis, bounds in profiles.items():
        field = key_path("profiles", axis)
        if axis not in AXES:
            raise BundleError(f"{check.where}: {field}: unknown axis {axis!r} (the axes are "
                              f"{', '.join(AXES)})")  # fmt: skip
        if not isinstance(bounds, dict):
            raise check.fail(field, "an object with min, opt and max", bounds)
        low = 1
        for point, floor in (("min", "1"), ("opt", "min"), ("max", "opt")):
            if point not in bounds:
                raise BundleError(f"{check.where}: {field}.{point} is missing")
            value = bounds[point]
            if not is_int(value) or value < low:
                raise check.fail(f"{field}.{point}", f"an int >= {floor} ({low})", value)
            low = value
    return profiles


def _check_preprocessing(check: _Checker, data: dict, files: dict) -> dict:
    pre = check.mapping(data, "preprocessing", "preprocessing")
    if "size" not in pre:
        raise BundleError(f"{check.where}: preprocessing.size is missing")
    size = pre["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(is_int(s) and s > 0 for s in size)):
        raise check.fail("preprocessing.size", "[height, width], two positive ints", size)
    if "mask_threshold" not in pre:
        raise BundleError(f"{check.where}: preprocessing.mask_threshold is missing")
    threshold = pre["mask_threshold"]
    if not is_number(threshold) or not 0 < threshold < 1:
        raise check.fail("preprocessing.mask_threshold", "a number strictly between 0 and 1",
                         threshold)  # fmt: skip
    if "tokenizer" not in pre:
        raise BundleError(f"{check.where}: preprocessing.tokenizer is missing")
    check.listed(pre["tokenizer"], "preprocessing.tokenizer", files)
    frame_format = pre.get("frame_format")
    if frame_format not in FRAME_FORMATS:
        raise check.fail("preprocessing.frame_format", f"one of {', '.join(FRAME_FORMATS)}",
                         frame_format)  # fmt: skip
    if frame_format == "float-nchw":  # the runtime normalises these frames itself
        for key in ("pixel_mean", "pixel_std"):
            values = pre.get(key)
            if not (isinstance(values, list) and len(values) == 3
                    and all(is_number(v) for v in values)):  # fmt: skip
                raise check.fail(f"preprocessing.{key}", "three numbers (R, G, B)", values)
        if any(v <= 0 for v in pre["pixel_std"]):
            raise check.fail("preprocessing.pixel_std", "positive", pre["pixel_std"])
        if not is_number(pre.get("pixel_scale")) or pre["pixel_scale"] <= 0:
            raise check.fail("preprocessing.pixel_scale", "a positive number",
                             pre.get("pixel_scale"))  # fmt: skip
    return pre


def _check_specs(check: _Checker, specs: list, field: str, profiles: dict) -> dict[str, dict]:
    named = {}
    for index, spec in enumerate(specs):
        at = f"{field}[{index}]"
        if not isinstance(spec, dict):
            raise check.fail(at, "an object with name, dtype and shape", spec)
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise check.fail(f"{at}.name", "a tensor name", name)
        if name in named:
            raise BundleError(f"{check.where}: {at}: tensor {name!r} is listed twice")
        if spec.get("dtype") not in DTYPES:
            raise check.fail(f"{at}.dtype", f"one of {', '.join(DTYPES)}", spec.get("dtype"))
        shape = spec.get("shape")
        if not isinstance(shape, list):
            raise check.fail(f"{at}.shape", "a list of dims", shape)
        for dim_index, dim in enumerate(shape):
            if isinstance(dim, str):
                if dim not in profiles:
                    raise BundleError(
                        f"{check.where}: {at}.shape[{dim_index}] is the axis {dim!r}, which has "
                        f"no range in profiles (it has {sorted(profiles)})"
                    )
            elif not is_int(dim) or dim < 1:
                raise check.fail(f"{at}.shape[{dim_index}]", "a positive int or an axis name",
                                 dim)  # fmt: skip
        named[name] = spec
    return named


def _check_graphs(check: _Checker, data: dict, files: dict, profiles: dict, pre: dict) -> None:
    graphs = check.mapping(data, "graphs", "graphs")
    for name in GRAPHS:
        if name not in graphs:
            raise BundleError(f"{check.where}: graphs.{name} is missing (the runtime runs "
                              f"{' and '.join(GRAPHS)})")  # fmt: skip
    present = [name for name in SPLIT_GRAPHS if name in graphs]
    if present and len(present) != len(SPLIT_GRAPHS):
        missing = next(name for name in SPLIT_GRAPHS if name not in graphs)
        raise BundleError(f"{check.where}: graphs.{present[0]} is there but graphs.{missing} is "
                          "missing: the split video graph needs both parts")  # fmt: skip
    for name, graph in graphs.items():
        field = key_path("graphs", name)
        if not isinstance(graph, dict):
            raise check.fail(field, "an object with inputs, outputs and variants", graph)
        inputs = _check_specs(check, check.listing(graph, "inputs", f"{field}.inputs"),
                              f"{field}.inputs", profiles)  # fmt: skip
        outputs = _check_specs(check, check.listing(graph, "outputs", f"{field}.outputs"),
                               f"{field}.outputs", profiles)  # fmt: skip
        if name in RUNTIME_INPUTS:
            _check_runtime_io(check, field, name, inputs, outputs)
        variants = check.mapping(graph, "variants", f"{field}.variants")
        if not variants:
            raise check.fail(f"{field}.variants", "at least one precision variant", variants)
        for precision, variant in variants.items():
            at = key_path(f"{field}.variants", precision)
            if not isinstance(variant, dict):
                raise check.fail(at, "an object naming the variant's file", variant)
            if "file" not in variant:
                raise BundleError(f"{check.where}: {at}.file is missing")
            check.listed(variant["file"], f"{at}.file", files)
            external = variant.get("external_data", [])
            if not isinstance(external, list):
                raise check.fail(f"{at}.external_data", "a list of file names", external)
            for index, extra in enumerate(external):
                check.listed(extra, f"{at}.external_data[{index}]", files)
    _check_frames(check, graphs["video"], pre)


def _check_runtime_io(check: _Checker, field: str, name: str, inputs: dict,
                      outputs: dict) -> None:  # fmt: skip
    wanted = RUNTIME_INPUTS[name]
    missing = [n for n in wanted if n not in inputs]
    extra = [n for n in inputs if n not in wanted]
    if missing or extra:
        problem = (f"has no {_names(missing)}, which the runtime feeds" if missing
                   else f"has {_names(extra)}, which the runtime does not feed")  # fmt: skip
        raise BundleError(f"{check.where}: {field}.inputs {problem} (it has {sorted(inputs)}; "
                          f"the runtime feeds exactly {list(wanted)})")  # fmt: skip
    missing = [n for n in RUNTIME_OUTPUTS[name] if n not in outputs]
    if missing:
        raise BundleError(
            f"{check.where}: {field}.outputs has no {_names(missing)}, which the runtime reads "
            f"(it has {sorted(outputs)})"
        )


def _names(names: Iterable[str]) -> str:
    return ", ".join(json.dumps(n) for n in names)


def _check_frames(check: _Checker, video: dict, pre: dict) -> None:
    """The video graph's frames input agrees with the preprocessing that makes it."""
    frames = next(spec for spec in video["inputs"] if spec["name"] == "frames")
    height, width = pre["size"]
    if pre["frame_format"] == "uint8-nhwc":
        dtype, shape = "uint8", ["T", height, width, 3]
    else:
        dtype, shape = "float32", ["T", 3, height, width]
    if frames["dtype"] != dtype or frames["shape"][1:] != shape[1:] or len(frames["shape"]) != 4:
        index = video["inputs"].index(frames)
        raise BundleError(
            f"{check.where}: graphs.video.inputs[{index}] (frames) is {frames['dtype']}"
            f"{show(frames['shape'])}, but preprocessing (size {show(pre['size'])}, "
            f"{pre['frame_format']}) makes {dtype}{show(shape)}"
        )


def _check_engines(check: _Checker, data: dict) -> None:
    engines = data.get("engines", {})
    if not isinstance(engines, dict):
        raise check.fail("engines", "an object", engines)
    for precision, per_graph in engines.items():
        field = key_path("engines", precision)
        if not isinstance(per_graph, dict):
            raise check.fail(field, "an object of graph -> engine entry", per_graph)
        for graph, entry in per_graph.items():
            at = key_path(field, graph)
            if not isinstance(entry, dict):
                raise check.fail(at, "an object naming the engine's file", entry)
            if "file" not in entry:
                raise BundleError(f"{check.where}: {at}.file is missing")
            # Inside the bundle here; that it is listed (hash-checked) is required when the
            # TensorRT backend reads it (Manifest.read_verified): an entry for an engine that
            # is not there yet, or not used on this machine, does not make the bundle unusable.
            check_relative(entry["file"], f"{at}.file", check.where)
