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

The bundle is a boundary: ``Manifest.load`` checks the whole structure first
(``runtime.manifest_schema``), every file name the manifest holds must stay inside the bundle
(``Manifest.path``: no absolute paths, no ``..``, no symlink out), and everything the runtime
reads (graphs, external data, tokenizer, engines) must be listed in ``files`` so that its size
and sha256 are checked before it loads.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

# Re-exported: importers of runtime.manifest's file helpers keep working.
from runtime.files import atomic_write_bytes, atomic_write_text, sha256_file  # noqa: F401

# The schema's names are defined with its checks and re-exported here, their usual home.
from runtime.manifest_schema import (  # noqa: F401
    AXES,
    FORMAT,
    FRAME_FORMATS,
    GRAPHS,
    SCHEMA_VERSION,
    SPLIT_GRAPHS,
    BundleError,
    check_manifest,
    check_relative,
)
from runtime.precisions import INT8_TENSORRT

MANIFEST_NAME = "manifest.json"


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
        """Read ``root/manifest.json`` and check its structure (``validate``); with
        ``verify`` also check every listed file's size and sha256 (``verify_files``)."""
        root = Path(root)
        path = root / MANIFEST_NAME
        if not root.is_dir():
            raise BundleError(f"bundle directory {root} does not exist")
        if not path.is_file():
            raise BundleError(f"{path} is missing: {root} is not a ProxyFormer bundle")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise BundleError(f"{path} is not valid JSON: {error}") from None
        if isinstance(data, dict):
            engines = data.setdefault("engines", {})
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
        """Check the whole structure (``runtime.manifest_schema``); BundleError names the
        JSON path of the first bad field, and no file is touched, so a manifest that points
        outside the bundle is refused before anything stats or hashes that path."""
        check_manifest(self.data, str(self.root / MANIFEST_NAME))

    def path(self, relative: str, listed: bool = True) -> Path:
        """The path of a file the manifest names, checked to lie inside the bundle.

        Every reader of bundle files goes through here (backends, predictor, calibration,
        engine building). ``relative`` must be a relative POSIX name without ``..``; the
        path, symlinks resolved, must be under the resolved bundle root. With ``listed``
        (readers) the name must also be in ``files``, so that ``verify_files`` has checked
        its size and sha256; writers creating a file pass ``listed=False``.

        Raises:
            BundleError: naming the file and why it is refused.
        """
        where = str(self.root / MANIFEST_NAME)
        check_relative(relative, "a file name", where)
        try:
            root = self.root.resolve()
            resolved = (root / relative).resolve()
        except (OSError, RuntimeError) as error:  # a symlink loop, say
            raise BundleError(f"{where}: {relative} cannot be resolved: {error}") from None
        if not resolved.is_relative_to(root):
            raise BundleError(
                f"{where}: {relative} resolves to {resolved}, outside the bundle {root} (a "
                "symlink out of the bundle?); a bundle reads only its own files"
            )
        if listed and relative not in self.data["files"]:
            raise BundleError(
                f"{where}: {relative} is not listed in files (its size and sha256 are "
                "unknown, so the runtime will not read it)"
            )
        return self.root / relative

    def read_verified(self, relative: str) -> bytes:
        """A listed file's bytes, checked against its size and sha256 as read: for files read
        whole into memory (TensorRT engines), so what is used is what was checked, whether or
        not the manifest was loaded with ``verify``."""
        path = self.path(relative)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise BundleError(f"bundle file {path} listed in the manifest cannot be read: "
                              f"{error}") from None  # fmt: skip
        entry = self.data["files"][relative]
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != entry["bytes"] or digest != entry["sha256"]:
            raise BundleError(
                f"bundle file {path} has {len(data)} bytes and sha256 {digest[:16]}..., the "
                f"manifest records {entry['bytes']} and {entry['sha256'][:16]}...: the file was "
                "changed after it was recorded"
            )
        return data

    def verify_files(self) -> None:
        """Every listed file is a regular file inside the bundle with its recorded size and
        sha256 (names the first bad one)."""
        for relative, entry in self.data["files"].items():
            path = self.path(relative)
            if not path.is_file():
                raise BundleError(
                    f"bundle file {path} listed in the manifest is missing (or not a file)"
                )
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

    # -- writing ---------------------------------------------------------------------------

    def add_file(self, relative: str | Path, role: str) -> dict:
        """Record a file of the bundle (size and sha256); ``role`` says what it is."""
        relative = Path(relative).as_posix()
        path = self.path(relative, listed=False)
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

    @property
    def graphs(self) -> list[str]:
        """The bundle's graphs, in the manifest's order."""
        return list(self.data["graphs"])

    def split_precisions(self) -> list[str]:
        """The precisions both parts of the split video graph have (none without them)."""
        if not all(name in self.data["graphs"] for name in SPLIT_GRAPHS):
            return []
        encoder, decoder = (self.precisions(name) for name in SPLIT_GRAPHS)
        return [p for p in encoder if p in decoder]

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
        """The checked path of a variant's ONNX file (``path``)."""
        return self.path(self.variant(graph, precision)["file"])

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) the frames are resized to."""
        height, width = self.preprocessing["size"]
        return height, width

    @property
    def mask_threshold(self) -> float:
        """The probability above which a mask pixel is foreground (strictly in (0, 1))."""
        return float(self.preprocessing["mask_threshold"])

    def tokenizer_path(self) -> Path:
        """The checked path of the tokenizer (listed in ``files``, so hash-checked)."""
        return self.path(self.preprocessing["tokenizer"])

    def load_tokenizer(self):
        """The bundle's Hugging Face ``tokenizers.Tokenizer``; BundleError naming the file
        when it cannot be read (a file that is not a tokenizer, even with a listed hash)."""
        from tokenizers import Tokenizer

        path = self.tokenizer_path()
        try:
            return Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a bare Exception on any failure
            raise BundleError(
                f"tokenizer {path} could not be read by tokenizers ({error}); re-export the "
                "bundle"
            ) from error

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
            (
                f"model: {data['model'].get('name')} "
                f"({data['model'].get('parameters', '?')} parameters)"
            ),
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
                lines.append(f"  {precision}: {variant['file']}{_variant_note(variant)}")
        for precision, engines in data.get("engines", {}).items():
            for graph, entry in engines.items():
                lines.append(
                    f"engine {precision} {graph}: {entry['file']} "
                    f"(TensorRT {entry.get('tensorrt')}, "
                    f"{entry.get('gpu')}, sm {entry.get('compute_capability')})"
                )
        return "\n".join(lines)


def _variant_note(variant: dict) -> str:
    """A variant's parity or INT8 agreement figures for ``summary``. They are informational
    and not part of the checked schema, so a malformed figure is reported, not raised."""
    try:
        parity = variant.get("parity", {})
        error = parity.get("max_abs_error")
        agreement = variant.get("agreement_vs_fp32")
        note = ""
        if error:
            worst = ", ".join(f"{k} {v:.2e}" for k, v in error.items())
            note = f" (max abs error vs {parity.get('reference')}: {worst}"
            if "quantile_abs_error" in parity:
                q = parity["tolerance"]["quantile"]
                held = ", ".join(f"{k} {v:.2e}" for k, v in parity["quantile_abs_error"].items())
                note += f"; its {q} quantile, the one checked: {held}"
            note += ")"
        elif agreement:
            note = (
                f" (mask IoU vs fp32 {agreement['mask_iou']:.4f}, same query "
                f"{agreement['same_query']:.3f} on {agreement['tracks']} held-out tracks)"
            )
        return note
    except (AttributeError, KeyError, TypeError, ValueError):
        return " (its parity figures are malformed)"


def load_manifest(bundle: str | Path, verify: bool = True) -> Manifest:
    return Manifest.load(bundle, verify=verify)
