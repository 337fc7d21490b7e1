"""The GPU check's bundle parts (benchmarks/gpu_check.py): TensorRT engines built, run through
the runtime's TensorRT backend and compared with onnxruntime FP32 on the CPU; and onnxruntime's
CUDA and TensorRT execution providers, the same way.

Bundles come from ``--tiny-bundle`` / ``--paper-bundle`` or are exported here (which needs the
export extra: onnx, onnxscript, onnxslim). INT8 needs the bundle's ``int8-tensorrt`` graph: a
bundle without it is calibrated here on a few synthetic clips when the calibration packages
(onnx, PIL, tqdm) are installed. Each comparison uses the export's parity rule
(``export.parity``): the FP16 tolerance for FP16, ``INT8_QDQ_TOLERANCE`` for INT8, the FP32 one
for the FP32 providers.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu_check import Skip, check_deadline

log = logging.getLogger(__name__)

SHIPPED_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "tiny-synthetic"
# The bundles the check makes when none is given: the demo bundle (make bundle) and the paper's.
TINY_EXPORT = {"size": (128, 224), "frames": "1:12:24", "expressions": "1:2:8"}
PAPER_EXPORT = {"preset": "paper-swin-t", "size": (360, 640), "frames": "9:19:36",
                "expressions": "1:1:4"}  # fmt: skip
# Seconds the check must have left to start exporting (and calibrating) the paper-swin-t
# bundle here: its export runs parity at the paper size on the CPU.
PAPER_EXPORT_NEEDS_S = 300.0
CALL = {"tiny": {"T": 12, "E": 2, "L": 16}, "paper": {"T": 19, "E": 1, "L": 16}}


def obtain_bundle(kind: str, given: Path | None, work: Path, deadline: float) -> Path:
    """The bundle of ``kind`` ("tiny" or "paper") in ``work``: a copy of the given one (engines
    and INT8 graphs are added to it; the user's bundle is left as it was), or exported there."""
    target = work / f"{kind}-bundle"
    if (target / "manifest.json").is_file():
        return target  # made by an earlier part of this run
    if given is not None:
        shutil.copytree(given, target)
        return target
    try:
        from export.onnx_export import export_bundle
    except ImportError as error:
        raise Skip(
            f"no {kind} bundle: pass --{kind}-bundle DIR (made on another machine) or install "
            f"the export extra to export it here ({error})"
        ) from None
    if kind == "paper" and deadline - time.monotonic() < PAPER_EXPORT_NEEDS_S:
        raise Skip(
            f"exporting the paper-swin-t bundle needs about {PAPER_EXPORT_NEEDS_S:.0f} s, less "
            "is left: pass --paper-bundle DIR"
        )
    log.info("exporting the %s bundle into %s", kind, target)
    if kind == "tiny":
        export_bundle(SHIPPED_CHECKPOINT, target, precisions=("fp32", "fp16"), **TINY_EXPORT)
    else:
        export_bundle(None, target, precisions=("fp32", "fp16"), **PAPER_EXPORT)
    return target


def ensure_int8(bundle: Path, work: Path, frames: int) -> None:
    """Give ``bundle`` its int8-tensorrt graph (calibrated on 4 synthetic clips), unless it has
    one; ``Skip`` when calibration cannot run here."""
    from runtime.manifest import Manifest

    if "int8-tensorrt" in Manifest.load(bundle, verify=False).precisions("video"):
        return
    try:
        from calibration.int8 import calibrate_bundle
        from training.data.synthetic import write_dataset
    except ImportError as error:
        raise Skip(f"the bundle has no int8-tensorrt graph and calibration cannot run here "
                   f"({error})") from None  # fmt: skip
    height, width = Manifest.load(bundle, verify=False).preprocessing["size"]
    data = write_dataset(work / f"synth-{height}x{width}", videos=8, frames=frames + 1,
                         size=(height, width), seed=0)  # fmt: skip
    calibrate_bundle(bundle, data, ("int8-tensorrt",), "minmax", samples=4, check_samples=2,
                     frames=frames, range_backend="onnxruntime")  # fmt: skip


def _feeds(manifest: Any, kind: str) -> dict:
    from benchmarks.workload import make_feeds

    call = CALL[kind]
    axes = {axis: min(max(call[axis], b["min"]), b["max"]) for axis, b in manifest.profiles.items()}
    return make_feeds(manifest, axes["T"], axes["E"], axes["L"])


def _outputs(runner: Any, feeds: dict) -> dict:
    """Every output of text graph then video graph for one call's feeds."""
    text = runner.text_backend.infer(
        {"input_ids": feeds["input_ids"], "attention_mask": feeds["attention_mask"]}
    )
    return runner.video_backend.infer({"frames": feeds["frames"], "attention_mask":
                                       feeds["attention_mask"], **text})  # fmt: skip


def _tolerance(manifest: Any, precision: str) -> Any:
    from export.parity import FP32_TOLERANCE, INT8_QDQ_TOLERANCE, fp16_tolerance_for
    from proxyformer.config import ProxyFormerConfig

    if precision == "fp32":
        return FP32_TOLERANCE
    if precision == "fp16":
        return fp16_tolerance_for(ProxyFormerConfig.from_dict(manifest.data["model"]["config"]))
    return INT8_QDQ_TOLERANCE


def agreement(outputs: dict, reference: dict, tolerance: Any) -> dict:
    """The parity report of ``outputs`` against ``reference`` (one tolerance, or one per
    output), and whether every output passed."""
    from export.parity import compare

    rules = tolerance if isinstance(tolerance, dict) else dict.fromkeys(reference, tolerance)
    report = {name: compare({name: outputs[name]}, {name: ref}, rules[name])[name]
              for name, ref in reference.items()}  # fmt: skip
    return {"passed": all(entry["ok"] for entry in report.values()), "outputs": report}


def _row(runner: Any, feeds: dict, reference: dict, tolerance: Any, warmup: int, runs: int) -> dict:
    from benchmarks.timing import time_runner

    check = agreement(_outputs(runner, feeds), reference, tolerance)
    timing = time_runner(runner, feeds, warmup, runs)
    return {
        "name": runner.name,
        "p50_ms": round(timing["total"]["p50"], 2),
        "p90_ms": round(timing["total"]["p90"], 2),
        "video_p50_ms": round(timing["video"]["p50"], 2),
        "vs_onnxruntime_fp32": check,
    }


def _reference(manifest: Any, feeds: dict) -> tuple[dict, float]:
    """onnxruntime FP32 (CPU) outputs of one call, and its seconds."""
    from benchmarks.runners import BundleRunner
    from runtime.backends import load_backend

    start = time.perf_counter()
    runner = BundleRunner(load_backend(manifest, "text_encoder", "onnxruntime", "fp32"),
                          load_backend(manifest, "video", "onnxruntime", "fp32"))  # fmt: skip
    try:
        return _outputs(runner, feeds), time.perf_counter() - start
    finally:
        runner.close()


def tensorrt_engines(args: Any, deadline: float) -> dict:
    """FP16 and INT8 engines of the tiny and paper-swin-t bundles: built, run, compared, timed."""
    from runtime.backends import AVAILABLE, available_backends

    status = available_backends()["tensorrt"]
    if status != AVAILABLE:
        raise Skip(f"TensorRT: {status}")
    results = {}
    for kind, given in (("tiny", args.tiny_bundle), ("paper", args.paper_bundle)):
        try:
            check_deadline(deadline, f"the {kind} bundle's engines")
            results[kind] = _bundle_engines(kind, given, args, deadline)
        except Skip as skip:
            results[kind] = {"skipped": str(skip)}
    if not any("precisions" in entry for entry in results.values()):
        raise Skip("; ".join(f"{k}: {v['skipped']}" for k, v in results.items()), results)
    return results


def _bundle_engines(kind: str, given: Path | None, args: Any, deadline: float) -> dict:
    from benchmarks.runners import BundleRunner
    from export.engine import build_engines
    from runtime.backends import TensorRTBackend
    from runtime.manifest import Manifest

    bundle = obtain_bundle(kind, given, args.work, deadline)
    manifest = Manifest.load(bundle, verify=False)
    feeds = _feeds(manifest, kind)
    reference, reference_s = _reference(manifest, feeds)
    entry: dict = {
        "bundle": str(given or bundle),
        "call": {name: list(array.shape) for name, array in feeds.items()},
        "onnxruntime_fp32_cpu_seconds": round(reference_s, 1),
        "precisions": {},
    }
    for precision in ("fp16", "int8-tensorrt"):
        try:
            check_deadline(deadline, f"the {kind} {precision} engines")
            if precision == "int8-tensorrt":
                ensure_int8(bundle, args.work, CALL[kind]["T"] if kind == "tiny" else 9)
            start = time.monotonic()
            built = build_engines(bundle, precision, timing_cache=args.work / "timing.cache")
            manifest = Manifest.load(bundle)
            runner = BundleRunner(TensorRTBackend(manifest, "text_encoder", precision),
                                  TensorRTBackend(manifest, "video", precision))  # fmt: skip
            try:
                row = _row(runner, feeds, reference, _tolerance(manifest, precision),
                           args.warmup, args.runs)  # fmt: skip
            finally:
                runner.close()
            entry["precisions"][precision] = row | {
                "build_seconds": {graph: e["build_seconds"] for graph, e in built.items()},
                "seconds": round(time.monotonic() - start, 1),
            }
        except Skip as skip:
            entry["precisions"][precision] = {"skipped": str(skip)}
    return entry


# -- onnxruntime-gpu ---------------------------------------------------------------------------

# (row, providers, precision): the CUDA provider on the FP32 and FP16 graphs; the TensorRT
# provider on the FP16 graph (trt_fp16_enable: a weakly typed network, which may run the graph's
# FP32 islands in FP16; its error beside native TensorRT's strongly typed FP16 engine measures
# that) and on the INT8 Q/DQ graph.
EP_ROWS = (
    ("cuda fp32", "cuda", "fp32"),
    ("cuda fp16", "cuda", "fp16"),
    ("tensorrt-ep fp16", "tensorrt", "fp16"),
    ("tensorrt-ep int8", "tensorrt", "int8-tensorrt"),
)


def onnxruntime_gpu(args: Any, deadline: float) -> dict:
    """The CUDA and TensorRT execution providers on the tiny bundle against onnxruntime FP32."""
    from runtime.backends import AVAILABLE, available_backends

    status = available_backends()
    cuda = status["onnxruntime-cuda"]
    if cuda != AVAILABLE:
        raise Skip(f"onnxruntime CUDA: {cuda}")
    from benchmarks.runners import BundleRunner
    from runtime.backends import load_backend
    from runtime.manifest import Manifest

    bundle = obtain_bundle("tiny", args.tiny_bundle, args.work, deadline)
    manifest = Manifest.load(bundle, verify=False)
    feeds = _feeds(manifest, "tiny")
    reference, _ = _reference(manifest, feeds)
    rows = {}
    for name, provider, precision in EP_ROWS:
        key = "onnxruntime-cuda" if provider == "cuda" else "onnxruntime-tensorrt"
        if status[key] != AVAILABLE:
            rows[name] = {"skipped": status[key]}
            continue
        if precision not in manifest.precisions("video"):
            rows[name] = {"skipped": f"the bundle has no {precision} video graph"}
            continue
        check_deadline(deadline, f"onnxruntime {name}")
        text_precision = precision if precision in manifest.precisions("text_encoder") else "fp32"
        options = {"providers": [provider], "trt_cache_dir": args.work / "ort-trt-cache"}
        runner = BundleRunner(
            load_backend(manifest, "text_encoder", "onnxruntime", text_precision, **options),
            load_backend(manifest, "video", "onnxruntime", precision, **options),
        )
        try:
            rows[name] = _row(runner, feeds, reference, _tolerance(manifest, precision),
                              args.warmup, args.runs)  # fmt: skip
        finally:
            runner.close()
    return {"bundle": str(bundle), "rows": rows}
