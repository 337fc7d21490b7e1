"""The bundle contract: ``manifest.json``, its schema, reader and writer.

A bundle is a directory that export writes and the runtime reads, never importing torch:

    bundle/
      manifest.json          this schema
      tokenizer.json         HF ``tokenizers`` file (truncation/padding inside)
      text_encoder.onnx      input_ids, attention_mask -> text_features
      video.onnx             frames, text_features, attention_mask -> logits, boxes, masks
      text_encoder.fp16.onnx, video.fp16.onnx, video.int8-*.onnx   precision variants
      engines/*.plan         TensorRT engines (manifest entry: version, GPU, sha256)

The manifest holds the model config, every graph's inputs and outputs (name, dtype, shape with
named dynamic axes), the optimisation-profile ranges of the dynamic axes, the preprocessing,
each precision variant's file and parity figures, the sha256 of every file, the opset and the
package versions. Graph inputs and outputs are the same for every precision variant (the
FP16 and INT8 graphs keep float32 inputs and outputs), so a runtime feeds them all alike.

Schema versions: a reader accepts its own major version only; a newer minor version may add
keys, which older readers ignore.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

# Re-exported: importers of runtime.manifest's file helpers keep working.
from runtime.files import atomic_write_bytes, atomic_write_text, sha256_file  # noqa: F401
from runtime.precisions import INT8_TENSORRT

SCHEMA_VERSION = "1.0"
FORMAT = "proxyformer-bundle"
MANIFEST_NAME = "manifest.json"
GRAPHS = ("text_encoder", "video")
# Symbolic axes of the graphs and what they count.
AXES = {"E": "expressions", "L": "text tokens", "T": "frames"}


class BundleError(ValueError):
    """A bundle that cannot be used: missing or tampered files, wrong schema, bad entries."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: dims are ints (static) or axis names ("T", "E", "L")."""

    name: str
    dtype: str  # numpy dtype name: "float32", "int64", "uint8", ...
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict) -> TensorSpec:
        return cls(data["name"], data["dtype"], tuple(data["shape"]))

    def describe(self) -> str:
        return f"{self.name} {self.dtype}[{', '.join(str(d) for d in self.shape)}]"


def installed_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Python's version and each installed package's (absent ones are left out)."""
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


class Manifest:
    """``manifest.json`` of a bundle directory, as a validated dict with typed accessors.

    ``Manifest.load(bundle)`` checks the schema version and, by default, the sha256 of every
    file listed; ``save()`` re-hashes nothing by itself: writers call ``add_file`` for each
    file they create, then ``save``.
    """

    def __init__(self, root: str | Path, data: dict) -> None:
        self.root = Path(root)
        self.data = data

    # -- creation, loading, saving ---------------------------------------------------------

    @classmethod
    def new(
        cls,
        root: str | Path,
        model: dict,
        preprocessing: dict,
        profiles: dict[str, dict[str, int]],
        opset: int,
        versions: dict[str, str],
    ) -> Manifest:
        data = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "model": model,
            "preprocessing": preprocessing,
            "profiles": profiles,
            "opset": opset,
            "versions": versions,
            "graphs": {},
            "files": {},
            "engines": {},
        }
        return cls(root, data)

    @classmethod
    def load(cls, root: str | Path, verify: bool = True) -> Manifest:
        """Read ``root/manifest.json``; with ``verify`` check every file's size and sha256."""
        root = Path(root)
        path = root / MANIFEST_NAME
        if not root.is_dir():
            raise BundleError(f"bundle directory {root} does not exist")
        if not path.is_file():
            raise BundleError(f"{path} is missing: {root} is not a ProxyFormer bundle")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise BundleError(f"{path} is not valid JSON: {error}") from None
        engines = data.get("engines") if isinstance(data, dict) else None
        if isinstance(engines, dict) and "int8" in engines:
            # Earlier releases keyed the TensorRT INT8 engine "int8" (runtime.precisions).
            engines.setdefault(INT8_TENSORRT, engines.pop("int8"))
        manifest = cls(root, data)
        manifest.validate()
        if verify:
            manifest.verify_files()
        return manifest

    def save(self) -> Path:
        self.validate()
        path = self.root / MANIFEST_NAME
        atomic_write_text(path, json.dumps(self.data, indent=2, sort_keys=False) + "\n")
        return path

    def validate(self) -> None:
        data = self.data
        where = self.root / MANIFEST_NAME
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BundleError(f"{where}: format is {data.get('format')!r}, expected {FORMAT!r}")
        version = str(data.get("schema_version", ""))
        if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise BundleError(
                f"{where}: schema version {version!r} is not readable by this runtime "
                f"(reads {SCHEMA_VERSION.split('.')[0]}.x); re-export the bundle or update"
            )
        for key in ("model", "preprocessing", "profiles", "graphs", "files", "opset", "versions"):
            if key not in data:
                raise BundleError(f"{where}: required key {key!r} is missing")
        for axis, bounds in data["profiles"].items():
            if axis not in AXES:
                raise BundleError(f"{where}: profile for unknown axis {axis!r}")
            if not 1 <= bounds["min"] <= bounds["opt"] <= bounds["max"]:
                raise BundleError(
                    f"{where}: profile {axis} needs 1 <= min <= opt <= max, got {bounds}"
                )
        for name, graph in data["graphs"].items():
            for key in ("inputs", "outputs", "variants"):
                if key not in graph:
                    raise BundleError(f"{where}: graph {name!r} has no {key!r}")
            for precision, variant in graph["variants"].items():
                if "file" not in variant:
                    raise BundleError(f"{where}: {name} variant {precision!r} names no file")

    def verify_files(self) -> None:
        """Every listed file exists with its recorded size and sha256 (names the first bad one)."""
        for relative, entry in self.data["files"].items():
            path = self.root / relative
            if not path.is_file():
                raise BundleError(f"bundle file {path} listed in the manifest is missing")
            size = path.stat().st_size
            if size != entry["bytes"]:
                raise BundleError(
                    f"bundle file {path} has {size} bytes, the manifest records {entry['bytes']}: "
                    "the file was changed or truncated after export"
                )
            digest = sha256_file(path)
            if digest != entry["sha256"]:
                raise BundleError(
                    f"bundle file {path} has sha256 {digest[:16]}..., the manifest records "
                    f"{entry['sha256'][:16]}...: the file was changed after export"
                )
        for name, graph in self.data["graphs"].items():
            for precision, variant in graph["variants"].items():
                for relative in [variant["file"], *variant.get("external_data", [])]:
                    if relative not in self.data["files"]:
                        raise BundleError(
                            f"{name} {precision} file {relative} has no sha256 in the manifest"
                        )

    # -- writing ---------------------------------------------------------------------------

    def add_file(self, relative: str | Path, role: str) -> dict:
        """Record a file of the bundle (size and sha256); ``role`` says what it is."""
        relative = Path(relative).as_posix()
        path = self.root / relative
        entry = {"role": role, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        self.data["files"][relative] = entry
        return entry

    def set_graph(self, name: str, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
        graph = self.data["graphs"].setdefault(name, {"variants": {}})
        graph["inputs"] = [spec.to_dict() for spec in inputs]
        graph["outputs"] = [spec.to_dict() for spec in outputs]

    def add_variant(self, graph: str, precision: str, entry: dict) -> None:
        """A precision variant of a graph: ``{"file": ..., "external_data": [...], ...}``."""
        if graph not in self.data["graphs"]:
            raise BundleError(f"add the graph {graph!r} before its {precision} variant")
        self.data["graphs"][graph]["variants"][precision] = entry

    def add_engine(self, precision: str, graph: str, entry: dict) -> None:
        self.data["engines"].setdefault(precision, {})[graph] = entry

    # -- reading ---------------------------------------------------------------------------

    @property
    def config(self) -> dict:
        return self.data["model"]["config"]

    @property
    def preprocessing(self) -> dict:
        return self.data["preprocessing"]

    @property
    def profiles(self) -> dict[str, dict[str, int]]:
        return self.data["profiles"]

    def inputs(self, graph: str) -> list[TensorSpec]:
        return [TensorSpec.from_dict(d) for d in self._graph(graph)["inputs"]]

    def outputs(self, graph: str) -> list[TensorSpec]:
        return [TensorSpec.from_dict(d) for d in self._graph(graph)["outputs"]]

    def precisions(self, graph: str) -> list[str]:
        return list(self._graph(graph)["variants"])

    def variant(self, graph: str, precision: str) -> dict:
        variants = self._graph(graph)["variants"]
        if precision not in variants:
            raise BundleError(
                f"bundle {self.root} has no {precision!r} variant of {graph}.onnx "
                f"(it has {sorted(variants)}); export it with --precision {precision.split('-')[0]}"
                if not precision.startswith("int8")
                else f"bundle {self.root} has no {precision!r} variant of {graph}.onnx (it has "
                f"{sorted(variants)}); run calibration/calibrate.py --bundle {self.root}"
            )
        return variants[precision]

    def variant_path(self, graph: str, precision: str) -> Path:
        return self.root / self.variant(graph, precision)["file"]

    def engine(self, precision: str, graph: str) -> dict:
        try:
            return self.data["engines"][precision][graph]
        except KeyError:
            raise BundleError(
                f"bundle {self.root} has no {precision} TensorRT engine for {graph} (it has "
                f"{ {p: sorted(g) for p, g in self.data['engines'].items()} }); build one with "
                f"python export/build_engine.py --bundle {self.root} --precision {precision}"
            ) from None

    def _graph(self, graph: str) -> dict:
        graphs = self.data["graphs"]
        if graph not in graphs:
            raise BundleError(
                f"bundle {self.root} has no graph {graph!r} (it has {sorted(graphs)})"
            )
        return graphs[graph]

    def to_dict(self) -> dict:
        return copy.deepcopy(self.data)

    def summary(self) -> str:
        """A human-readable description (``python -m runtime info``)."""
        data = self.data
        lines = [
            f"bundle {self.root} (schema {data['schema_version']}, opset {data['opset']})",
            f"model: {data['model'].get('name')} "
            f"({data['model'].get('parameters', '?')} parameters)",
            "preprocessing: " + json.dumps(data["preprocessing"]),
            "profiles: "
            + ", ".join(
                f"{axis} ({AXES[axis]}) {b['min']}..{b['max']} opt {b['opt']}"
                for axis, b in data["profiles"].items()
            ),
        ]
        for name in data["graphs"]:
            lines.append(f"graph {name}:")
            lines.append("  inputs:  " + "; ".join(s.describe() for s in self.inputs(name)))
            lines.append("  outputs: " + "; ".join(s.describe() for s in self.outputs(name)))
            for precision, variant in data["graphs"][name]["variants"].items():
                parity = variant.get("parity", {})
                error = parity.get("max_abs_error")
                agreement = variant.get("agreement_vs_fp32")
                note = ""
                if error:
                    worst = ", ".join(f"{k} {v:.2e}" for k, v in error.items())
                    note = f" (max abs error vs {parity.get('reference')}: {worst}"
                    if "quantile_abs_error" in parity:
                        q = parity["tolerance"]["quantile"]
                        held = ", ".join(
                            f"{k} {v:.2e}" for k, v in parity["quantile_abs_error"].items()
                        )
                        note += f"; its {q} quantile, the one checked: {held}"
                    note += ")"
                elif agreement:
                    note = (
                        f" (mask IoU vs fp32 {agreement['mask_iou']:.4f}, same query "
                        f"{agreement['same_query']:.3f} on {agreement['tracks']} held-out tracks)"
                    )
                lines.append(f"  {precision}: {variant['file']}{note}")
        for precision, engines in data.get("engines", {}).items():
            for graph, entry in engines.items():
                lines.append(
                    f"engine {precision} {graph}: {entry['file']} "
                    f"(TensorRT {entry.get('tensorrt')}, "
                    f"{entry.get('gpu')}, sm {entry.get('compute_capability')})"
                )
        return "\n".join(lines)


def load_manifest(bundle: str | Path, verify: bool = True) -> Manifest:
    return Manifest.load(bundle, verify=verify)
