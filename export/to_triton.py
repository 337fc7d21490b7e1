"""Write a Triton Inference Server model repository from a bundle.

    python export/to_triton.py --bundle bundles/tiny --out model_repository
    python export/to_triton.py --bundle bundles/tiny --out model_repository --format plan \\
        --precision fp16 --plans bundles/tiny/engines --overwrite      # trtexec-built plans

The repository holds three models (names prefixed by ``--name``, default ``proxyformer``):

- ``<name>_text_encoder`` and ``<name>_video``: the bundle's graphs, as ``onnxruntime_onnx``
  (the precision's ONNX variant) or ``tensorrt_plan`` (``--format plan``: the bundle's engines
  for that precision, or ``{graph}.{precision}.plan`` files in ``--plans``, which is where
  ``export/build_engine.py --print-trtexec`` commands save them). Every named axis (T, E, L)
  is -1 in config.pbtxt: Triton's config has no ranges, the limits are the manifest's
  profiles (written as comments, checked by the Python model before each call and built into
  TensorRT engines; ``--ort-tensorrt`` passes them to onnxruntime's TensorRT EP as its
  ``trt_profile_*_shapes``);
- ``<name>``: a Python-backend model that takes FRAMES uint8 ``[T, H, W, 3]`` and EXPRESSIONS
  BYTES ``[E]`` and returns MASKS bool ``[E, T, H, W]``, SCORES float32 ``[E]`` and QUERIES
  int64 ``[E, windows]``. Its model.py is ``runtime/triton_model.py``: the runtime's
  predictor with the two graphs called through BLS (``runtime.triton_bls``). The bundle's
  manifest and tokenizer are copied beside it; the request limits are config parameters.

The bundle is loaded and hash-checked before anything is written; the repository is written
into a staging directory and moved into place whole, and an existing ``--out`` is refused
unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

from runtime.backends.ort import tensorrt_ep_options
from runtime.files import make_staging_dir, replace_directory
from runtime.manifest import MANIFEST_NAME, BundleError, Manifest, TensorSpec
from runtime.precisions import RUNTIME_PRECISIONS
from runtime.serving import Limits
from runtime.triton_bls import (
    BUNDLE_DIR,
    EXPRESSIONS,
    FRAMES,
    GRAPH_PARAMETERS,
    MASKS,
    QUERIES,
    SCORES,
)

log = logging.getLogger("export.to_triton")

GRAPHS = ("text_encoder", "video")
# numpy dtype names (the manifest's) -> Triton's DataType names.
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64",
                "int32": "TYPE_INT32", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL",
                "bytes": "TYPE_STRING"}  # fmt: skip
KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
MODEL_PY = Path(__file__).resolve().parents[1] / "runtime" / "triton_model.py"


class RepositoryError(ValueError):
    """An --out that cannot be written, or a bundle without what the repository needs."""


def tensor_block(specs: list[TensorSpec], profiles: dict) -> str:
    """``input [...]`` / ``output [...]`` entries: named axes become -1, their profile range a
    comment above the entry (Triton's config has no field for it)."""
    entries = []
    for spec in specs:
        dims = ", ".join("-1" if isinstance(d, str) else str(d) for d in spec.shape)
        ranges = [f"{d} in {profiles[d]['min']}..{profiles[d]['max']}"
                  for d in spec.shape if isinstance(d, str) and d in profiles]  # fmt: skip
        note = f"  # {spec.describe()}" + (f"; {', '.join(ranges)}" if ranges else "")
        entries.append(f"{note}\n  {{\n    name: \"{spec.name}\"\n    data_type: "
                       f"{TRITON_TYPES[spec.dtype]}\n    dims: [ {dims} ]\n  }}")  # fmt: skip
    return "[\n" + ",\n".join(entries) + "\n]"


def instance_group(kind: str, count: int) -> str:
    return f"instance_group [\n  {{\n    count: {count}\n    kind: {KINDS[kind]}\n  }}\n]"


def tensorrt_accelerator(manifest: Manifest, graph: str, precision: str, cache_dir: str) -> str:
    """An ``optimization`` block running an ONNX graph through onnxruntime's TensorRT EP in
    Triton's onnxruntime backend, with the manifest's profiles as its optimisation profile.

    The options are the runtime's own (``runtime.backends.ort.tensorrt_ep_options``), renamed
    where Triton's key differs (precision_mode) and with "1"/"0" booleans."""
    options = tensorrt_ep_options(manifest, graph, precision, cache_dir)
    mode = {"fp16": "FP16", "int8-tensorrt": "INT8"}.get(precision, "FP32")
    parameters = {"precision_mode": mode}
    for key, value in options.items():
        if key.startswith(("trt_profile_", "trt_engine_cache_", "trt_timing_cache_")):
            parameters[key] = {"True": "1", "False": "0"}.get(value, value)
    lines = "\n".join(f'    parameters {{ key: "{key}" value: "{value}" }}'
                      for key, value in parameters.items())  # fmt: skip
    return ("# onnxruntime's TensorRT execution provider, one engine for the whole profile\n"
            "optimization { execution_accelerators {\n  gpu_execution_accelerator : [ {\n"
            f'    name : "tensorrt"\n{lines}\n  }} ]\n}}}}\n')  # fmt: skip


def graph_config(manifest: Manifest, graph: str, model: str, platform: str, kind: str,
                 count: int, accelerator: str = "") -> str:  # fmt: skip
    """config.pbtxt of one of the bundle's graphs."""
    profiles = manifest.profiles
    return (
        f"# {graph} of the bundle {manifest.root.name}, written by export/to_triton.py\n"
        f'name: "{model}"\nplatform: "{platform}"\n'
        "# The named axes are not a batch: Triton's own batching stays off.\nmax_batch_size: 0\n"
        f"input {tensor_block(manifest.inputs(graph), profiles)}\n"
        f"output {tensor_block(manifest.outputs(graph), profiles)}\n"
        f"{instance_group(kind, count)}\n{accelerator}"
    )


def python_config(manifest: Manifest, name: str, models: dict[str, str], limits: Limits,
                  count: int) -> str:  # fmt: skip
    """config.pbtxt of the Python-backend model; its instances run on the CPU (tokenizing,
    resizing, selecting and upsampling are numpy), the graphs where their configs say."""
    inputs = [
        TensorSpec(FRAMES, "uint8", ("T", "H", "W", 3)),
        TensorSpec(EXPRESSIONS, "bytes", ("E",)),
    ]
    outputs = [
        TensorSpec(MASKS, "bool", ("E", "T", "H", "W")),
        TensorSpec(SCORES, "float32", ("E",)),
        TensorSpec(QUERIES, "int64", ("E", "windows")),
    ]
    parameters = {GRAPH_PARAMETERS[graph]: model for graph, model in models.items()}
    parameters.update({key: str(value) for key, value in asdict(limits).items()})
    params = "\n".join(f'parameters: {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}'
                       for key, value in parameters.items())  # fmt: skip
    return (
        f"# The ProxyFormer pipeline over {models['text_encoder']} and {models['video']} (BLS),"
        " written by export/to_triton.py\n"
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
        f"input {tensor_block(inputs, {})}\noutput {tensor_block(outputs, {})}\n"
        f"{instance_group('cpu', count)}\n{params}\n"
    )


def graph_source(manifest: Manifest, graph: str, precision: str, fmt: str,
                 plans: Path | None) -> tuple[list[Path], str]:  # fmt: skip
    """The files of one graph's model (the graph first) and its platform."""
    if fmt == "onnx":
        if precision not in manifest.precisions(graph) and graph == "text_encoder":
            precision = "fp32"  # INT8 variants exist for the video graph only (as the runtime)
        variant = manifest.variant(graph, precision)
        files = [manifest.path(variant["file"])]
        files += [manifest.path(name) for name in variant.get("external_data", [])]
        return files, "onnxruntime_onnx"
    if plans is not None:
        plan = plans / f"{graph}.{precision}.plan"
        if not plan.is_file():
            raise RepositoryError(
                f"--plans {plans}: {plan.name} is missing (expected "
                f"{{graph}}.{{precision}}.plan for {graph} at {precision})"
            )
        return [plan], "tensorrt_plan"
    return [manifest.path(manifest.engine(precision, graph)["file"])], "tensorrt_plan"


def check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise RepositoryError(f"--out {out} already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise RepositoryError(f"--out {out} is a file, expected a directory")


def write_repository(
    bundle: str | Path, out: str | Path, precision: str = "fp32", fmt: str = "auto",
    plans: str | Path | None = None, kind: str = "gpu", count: int = 1, python_count: int = 1,
    name: str = "proxyformer", limits: Limits | None = None, overwrite: bool = False,
    ort_tensorrt: bool = False, trt_cache_dir: str = "/tmp/proxyformer-ort-tensorrt",
) -> Path:  # fmt: skip
    """Write the repository (see the module's docstring); returns ``out``.

    Raises:
        RepositoryError: ``out`` exists without ``overwrite``, a plan is missing, or an
            argument is out of range.
        BundleError: the bundle is missing, malformed or fails its hash checks, or lacks the
            precision's variant or engine.
    """
    out, limits = Path(out), limits or Limits()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise RepositoryError(f"--name {name!r} is not a model name: letters, digits, '_', "
                              "'.' and '-', starting with a letter or digit")  # fmt: skip
    check_out(out, overwrite)
    if kind not in KINDS:
        raise RepositoryError(f"--kind must be one of {sorted(KINDS)}, got {kind!r}")
    if count < 1 or python_count < 1:
        raise RepositoryError(f"instance counts must be >= 1, got {count} and {python_count}")
    if precision in RUNTIME_PRECISIONS:
        raise RepositoryError(f"--precision {precision} is a runtime setting, not a graph of "
                              "the bundle; Triton serves the bundle's graphs")  # fmt: skip
    manifest = Manifest.load(bundle, verify=True)  # before anything is written
    if fmt == "auto":
        fmt = "plan" if plans is not None or precision in manifest.data["engines"] else "onnx"
    if fmt not in ("onnx", "plan"):
        raise RepositoryError(f"--format must be auto, onnx or plan, got {fmt!r}")
    if ort_tensorrt and (fmt != "onnx" or kind != "gpu"):
        raise RepositoryError(f"--ort-tensorrt runs ONNX graphs through TensorRT on a GPU: it "
                              f"needs --format onnx and --kind gpu, got {fmt} and {kind}")  # fmt: skip
    plans = Path(plans) if plans is not None else None
    models = {graph: f"{name}_{graph}" for graph in GRAPHS}
    sources = {graph: graph_source(manifest, graph, precision, fmt, plans) for graph in GRAPHS}

    staging = make_staging_dir(out)
    try:
        for graph, (files, platform) in sources.items():
            version = staging / models[graph] / "1"
            version.mkdir(parents=True)
            suffix = ".onnx" if platform == "onnxruntime_onnx" else ".plan"
            shutil.copyfile(files[0], version / f"model{suffix}")
            for extra in files[1:]:  # external data keeps the name the graph refers to
                shutil.copyfile(extra, version / extra.name)
            accelerator = (tensorrt_accelerator(manifest, graph, precision, trt_cache_dir)
                           if ort_tensorrt else "")  # fmt: skip
            (staging / models[graph] / "config.pbtxt").write_text(
                graph_config(manifest, graph, models[graph], platform, kind, count, accelerator)
            )
        version = staging / name / "1"
        (version / BUNDLE_DIR).mkdir(parents=True)
        shutil.copyfile(manifest.root / MANIFEST_NAME, version / BUNDLE_DIR / MANIFEST_NAME)
        tokenizer = manifest.preprocessing["tokenizer"]
        (version / BUNDLE_DIR / tokenizer).write_bytes(manifest.read_verified(tokenizer))
        shutil.copyfile(MODEL_PY, version / "model.py")
        (staging / name / "config.pbtxt").write_text(
            python_config(manifest, name, models, limits, python_count)
        )
        replace_directory(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote the Triton repository %s (%s, %s, instances %s)", out, fmt, precision, kind)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True, help="the bundle directory")
    parser.add_argument("--out", required=True, type=Path, help="the repository to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--precision",
        default="fp32",
        help="the graphs' variant: fp32, fp16, int8-cpu, int8-tensorrt",
    )
    parser.add_argument("--format", dest="fmt", default="auto", choices=("auto", "onnx", "plan"),
                        help="auto: plan where the bundle has engines of the precision (or "
                        "--plans is given), else onnx")  # fmt: skip
    parser.add_argument(
        "--plans",
        type=Path,
        default=None,
        help="a directory of trtexec-built {graph}.{precision}.plan files",
    )
    parser.add_argument(
        "--kind",
        default="gpu",
        choices=sorted(KINDS),
        help="instance kind of the two graphs (the Python model runs on CPU)",
    )
    parser.add_argument("--count", type=int, default=1, help="instances per graph")
    parser.add_argument("--python-count", type=int, default=1,
                        help="instances of the Python model")  # fmt: skip
    parser.add_argument("--name", default="proxyformer", help="the pipeline model's name")
    parser.add_argument(
        "--ort-tensorrt",
        action="store_true",
        help="ONNX graphs on a GPU: run them through onnxruntime's TensorRT EP "
        "with the manifest's profiles (engines built at first load)",
    )
    parser.add_argument(
        "--trt-cache-dir",
        default="/tmp/proxyformer-ort-tensorrt",
        help="with --ort-tensorrt: the server-side engine and timing cache",
    )
    defaults = Limits()
    for field, value in asdict(defaults).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=value,
                            help=f"request limit (default {value})")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        limits = Limits(**{f: getattr(args, f) for f in asdict(Limits())})
        write_repository(
            args.bundle,
            args.out,
            args.precision,
            args.fmt,
            args.plans,
            args.kind,
            args.count,
            args.python_count,
            args.name,
            limits,
            args.overwrite,
            args.ort_tensorrt,
            args.trt_cache_dir,
        )
    except (BundleError, RepositoryError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
