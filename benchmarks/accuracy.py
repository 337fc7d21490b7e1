"""J&F of every precision of a bundle, side by side with PyTorch, on a dataset split.

    python benchmarks/accuracy.py --bundle bundles/tiny --data data/synth --split valid

Rows: PyTorch eager (the checkpoint the bundle came from), ONNX Runtime FP32, FP16 and the
INT8 variants (int8-tensorrt: the Q/DQ graph TensorRT builds from, run in ONNX Runtime's CPU
kernels; int8-cpu: ONNX Runtime's own x86 form), and OpenVINO on the CPU at each precision it
runs (openvino-fp32; openvino-bf16: the fp32 graph in BF16, skipped with the reason on a CPU
without BF16 or without openvino). Every row is scored by the same code
(``training.evaluate.evaluate``) on the same frames: the bundle's size must be the split's
native frame size, so no row pays for a resize the others do not. Writes JSON and a markdown
table to ``benchmarks/results/accuracy/`` and prints the table.

``--dataset davis`` scores a Ref-DAVIS17-layout split with ``--protocol referformer`` (its
default; docs/evaluation.md). There every row, PyTorch included, is merged from binary masks
(the runtime's predictor gives no probabilities), so the rows stay comparable with each other;
``training/evaluate.py`` merges probabilities, as ReferFormer does.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import cpu_line, machine_info
from benchmarks.report import RESULTS_DIR

log = logging.getLogger("accuracy")

ROWS = (
    "pytorch", "fp32", "fp16", "int8-tensorrt", "int8-cpu",
    "openvino-fp32", "openvino-bf16", "openvino-int8-cpu",
)  # fmt: skip
OPENVINO_ROW = "openvino-"  # prefix of the OpenVINO rows; the rest is the precision


def _load_split(manifest, data: str | Path, split: str, kind: str = "ytvos", protocol: str = ""):
    """The split as a dataset, checked to have the bundle's frame size: every row then scores the
    same frames, and none pays for a resize the others do not."""
    from training.data import build_dataset
    from training.data.transforms import ClipTransform
    from training.davis import check_dataset

    dataset = build_dataset(
        kind, str(data), split, None, ClipTransform(train=False, eval_short_side=None)
    )
    if protocol == "referformer":
        check_dataset(dataset)
    first = dataset.records[0]
    native = dataset.read_frame(first.video, first.frames[0]).shape[:2]
    size = tuple(manifest.preprocessing["size"])
    if tuple(native) != size:
        raise ValueError(
            f"bundle {manifest.root} takes {size[0]}x{size[1]} frames but {data} {split} has "
            f"{native[0]}x{native[1]}: export the bundle with --size {native[0]}x{native[1]}"
        )
    return dataset


def _score_pytorch(
    manifest, dataset, limit: int | None, threads: int | None, protocol: str = "per-expression"
) -> dict:
    """``evaluate`` of the checkpoint the bundle came from, PyTorch eager."""
    import torch

    from export.source_model import bundle_model
    from training.evaluate import evaluate, segment_video

    if threads:
        torch.set_num_threads(threads)
    model = bundle_model(manifest)
    tokenizer = manifest.load_tokenizer()  # inside the bundle and hash-checked

    def segment(frames, expressions):  # binary masks, as the runtime rows give
        return segment_video(model, tokenizer, frames, expressions, None)

    return evaluate(model, tokenizer, dataset, limit=limit, segment=segment, protocol=protocol)


def _score_runtime(
    manifest,
    dataset,
    precision: str,
    limit: int | None,
    threads: int | None,
    protocol: str = "per-expression",
    backend: str = "onnxruntime",
) -> dict:
    """``evaluate`` of one precision of the bundle, run by the predictor on ``backend``."""
    from runtime.predictor import RVOSPredictor
    from training.evaluate import evaluate

    options = {"threads": threads} if threads else {}
    predictor = RVOSPredictor(manifest, backend=backend, precision=precision, **options)

    def segment(frames, expressions):
        out = predictor.segment(np.stack(frames), expressions)
        return out.masks, out.scores[:, None]

    return evaluate(None, None, dataset, limit=limit, segment=segment, protocol=protocol)


def _openvino_skip_reason(manifest, precision: str) -> str | None:
    """Why an OpenVINO row cannot run here (not installed, a precision it does not run, a CPU
    without BF16, a variant the bundle lacks), or None."""
    from runtime.backends import AVAILABLE, BackendUnavailable, check_capabilities
    from runtime.backends.openvino import (
        cpu_capabilities,
        openvino_precision,
        openvino_status,
        shared_core,
    )
    from runtime.precisions import RUNTIME_VARIANT

    status = openvino_status()
    if status != AVAILABLE:
        return status
    try:
        openvino_precision(precision)
        check_capabilities(precision, cpu_capabilities(shared_core()))
    except (ValueError, BackendUnavailable) as error:
        return str(error)
    variant = RUNTIME_VARIANT.get(precision, precision)
    if variant not in manifest.precisions("video"):
        return f"bundle has no {variant} variant of video.onnx"
    return None


def _add_deltas(results: dict[str, dict]) -> None:
    """Each scored row's J&F difference to ONNX Runtime FP32, in points."""
    reference = results.get("fp32", {}).get("J&F")
    for result in results.values():
        if "J&F" in result and reference is not None:
            result["delta_vs_fp32_points"] = round(100 * (result["J&F"] - reference), 2)


def measure(
    bundle: str | Path,
    data: str | Path,
    split: str = "valid",
    rows: tuple[str, ...] = ROWS,
    limit: int | None = None,
    threads: int | None = None,
    dataset_kind: str = "ytvos",
    protocol: str | None = None,
) -> dict:
    """J, F and J&F of each row; rows whose variant the bundle lacks are reported as skipped.
    ``protocol`` defaults to ``referformer`` for ``dataset_kind="davis"``, ``per-expression``
    otherwise (docs/evaluation.md)."""
    from runtime.manifest import Manifest

    protocol = protocol or ("referformer" if dataset_kind == "davis" else "per-expression")
    if protocol == "referformer" and dataset_kind != "davis":
        raise ValueError("the referformer protocol is Ref-DAVIS17's: use it with dataset_kind='davis'")
    manifest = Manifest.load(bundle)
    dataset = _load_split(manifest, data, split, dataset_kind, protocol)
    results = {}
    for row in rows:
        started = time.perf_counter()
        if row == "pytorch":
            result = _score_pytorch(manifest, dataset, limit, threads, protocol)
        elif row.startswith(OPENVINO_ROW):
            reason = _openvino_skip_reason(manifest, row.removeprefix(OPENVINO_ROW))
            if reason is not None:
                results[row] = {"skipped": reason}
                log.warning("%s skipped: %s", row, reason)
                continue
            result = _score_runtime(manifest, dataset, row.removeprefix(OPENVINO_ROW), limit,
                                    threads, protocol, backend="openvino")  # fmt: skip
        elif row not in manifest.precisions("video"):
            results[row] = {"skipped": f"bundle has no {row} variant of video.onnx"}
            log.warning("%s skipped: %s", row, results[row]["skipped"])
            continue
        else:
            result = _score_runtime(manifest, dataset, row, limit, threads, protocol)
        per_item = "per_expression" if protocol == "per-expression" else "per_object"
        results[row] = result["summary"] | {
            "seconds": round(time.perf_counter() - started, 1),
            f"{per_item}_jf": [round(r["J&F"], 4) for r in result[per_item]],
        }
        log.info("%s: J&F %.4f", row, result["summary"]["J&F"])
    _add_deltas(results)
    return {
        "bundle": str(bundle),
        "model": manifest.data["model"].get("checkpoint") or manifest.data["model"]["name"],
        "data": str(data),
        "dataset": dataset_kind,
        "protocol": protocol,
        "split": split,
        "limit": limit,
        "rows": results,
        "calibration": {
            p: manifest.variant("video", p).get("calibration")
            for p in ("int8-tensorrt", "int8-cpu")
            if p in manifest.precisions("video")
        },
        "machine": machine_info("cpu"),
        "command": " ".join(sys.argv),
    }


def _machine_lines(machine) -> list[str]:
    """Where the seconds column was measured (J&F does not depend on it, the seconds do)."""
    if not isinstance(machine, dict):  # reports written before the machine was recorded
        return []
    return [f"Seconds measured on {cpu_line(machine)}.", ""]


def markdown(report: dict) -> str:
    """The J&F table of a ``measure`` report, one line per row."""
    lines = [
        (
            f"J&F on {report['data']} ({report['split']}, "
            f"{report.get('protocol', 'per-expression')} protocol), bundle {report['bundle']}"
        ),
        "",
        *_machine_lines(report.get("machine")),
        "| row | J&F | J | F | Δ J&F vs ORT FP32 (points) | seconds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    names = {
        "pytorch": "PyTorch eager FP32",
        "fp32": "ONNX Runtime FP32",
        "fp16": "ONNX Runtime FP16",
        "int8-tensorrt": "INT8 Q/DQ, TensorRT form (run in ONNX Runtime CPU)",
        "int8-cpu": "INT8, ONNX Runtime CPU form (u8s8)",
        "openvino-fp32": "OpenVINO FP32 (CPU)",
        "openvino-bf16": "OpenVINO BF16 (CPU, the fp32 graph)",
        "openvino-int8-cpu": "OpenVINO INT8 (CPU, the int8-cpu Q/DQ graph)",
    }
    for row, result in report["rows"].items():
        if "skipped" in result:
            lines.append(f"| {names.get(row, row)} | skipped: {result['skipped']} | | | | |")
            continue
        lines.append(
            f"| {names.get(row, row)} | {result['J&F']:.4f} | {result['J']:.4f} "
            f"| {result['F']:.4f} "
            f"| {result.get('delta_vs_fp32_points', 0):+.2f} | {result['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """The command line: measure, write JSON and markdown, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="valid")
    parser.add_argument("--dataset", default="ytvos", choices=("ytvos", "davis"))
    parser.add_argument(
        "--protocol",
        default=None,
        choices=("per-expression", "referformer"),
        help="how J&F is computed (docs/evaluation.md); default: referformer for davis, "
        "per-expression otherwise",
    )
    parser.add_argument(
        "--rows", default=",".join(ROWS), help="comma-separated subset of " + ",".join(ROWS)
    )
    parser.add_argument("--limit", type=int, default=None, help="first N videos only")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "accuracy")
    parser.add_argument("--tag", default=None, help="file name stem (default: the bundle's name)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("runtime").setLevel(logging.WARNING)
    if args.protocol == "referformer" and args.dataset != "davis":
        parser.error("--protocol referformer is Ref-DAVIS17's protocol: use it with --dataset davis")
    report = measure(args.bundle, args.data, args.split, tuple(args.rows.split(",")), args.limit,
                     args.threads, args.dataset, args.protocol)  # fmt: skip
    table = markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.tag or Path(args.bundle).name
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
