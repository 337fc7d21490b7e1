"""How far each CPU backend's video graph strays from FP32 on real clips: INT8 (both Q/DQ
forms), BF16, and FP32 in another runtime, against onnxruntime FP32.

    python benchmarks/int8_agreement.py --bundle bundles/paper-swin-t-split \\
        --data data/synth-360 --frames 19 --clips 4

Held-out clips of ``--split`` (another seed than calibration's: ``calibration.data``) are
built once, at ``--frames`` frames, with the text features of the bundle's own text graph. Each
row then runs the video graph on every clip in a process of its own
(``calibration.int8.outputs_child``, ``spawn``: its peak RSS is its own), and the chosen tracks
are compared with the reference row's: mean mask IoU of the chosen queries' stride-4 masks,
the same-query rate and the largest mask-logit error (``calibration.int8.agreement``, the
measure calibration records in the manifest). Latency is ``benchmarks/latency.py``'s job; the
seconds here are one untimed-warm-up call per clip.

Results go to ``benchmarks/results/<machine>/agreement-<tag>.{json,md}``; the markdown is
printed.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.machine import cpu_line, run_record
from benchmarks.report import save_results
from benchmarks.rows import BACKENDS
from runtime.child import ChildDied, run_in_child

log = logging.getLogger(__name__)

DEFAULT_ROWS = "ort,ort-int8,ort-int8-trt,ov,ov-bf16,ov-int8"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", required=True, help="a dataset root (training/data.py)")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--frames", type=int, default=None, help="default: the bundle's opt T")
    parser.add_argument("--backends", default=DEFAULT_ROWS,
                        help="ONNX rows of benchmarks.rows.BACKENDS; the first is the reference")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1000, help="which clips (calibration's + 1000)")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/<machine>")
    parser.add_argument("--tag", default=None, help="default: the bundle's folder name")
    return parser.parse_args(argv)


def check_rows(text: str) -> list[str]:
    """The rows asked for, refusing a PyTorch row or an unknown one before any work."""
    rows = [b.strip() for b in text.split(",") if b.strip()]
    wrong = [b for b in rows if b not in BACKENDS or BACKENDS[b].runtime in ("torch", "tensorrt")]
    if wrong or len(rows) < 2:
        raise ValueError(
            f"--backends needs a reference and at least one more ONNX CPU row; not such rows: "
            f"{wrong}; choose from "
            f"{[n for n, s in BACKENDS.items() if s.runtime in ('onnxruntime', 'openvino')]}"
        )
    return rows


def format_markdown(results: dict) -> str:
    setting = results["setting"]
    reference = results["rows"][0]["backend"]
    lines = [
        f"# Agreement with FP32 — {results['bundle']}",
        "",
        (
            f"{cpu_line(results['machine'])}; {setting['threads']} threads. {setting['clips']} "
            f"held-out clips of the {setting['split']} split of `{setting['data']}`, "
            f"{setting['frames']} frames at {setting['size'][0]}x{setting['size'][1]}, "
            f"{setting['tracks']} expression tracks; every row against **{reference}**."
        ),
        "",
        (
            "| row | runtime | precision | mask IoU | same query | max mask-logit error | "
            "s per clip | peak RSS GiB |"
        ),
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        head = f"| {row['backend']} | {row['runtime']} | {row['precision']} |"
        if row["status"] != "ran":
            lines.append(f"{head} – | – | – | – | {row['reason']} |")
            continue
        agree = row.get("agreement")
        cells = ("reference | – | –" if row["backend"] == reference else
                 "no reference (its row failed) | – | –" if agree is None else
                 f"{agree['mask_iou']:.4f} | {agree['same_query']:.3f} | "
                 f"{agree['max_mask_logit_error']:.3g}")  # fmt: skip
        lines.append(f"{head} {cells} | {np.median(row['seconds_per_clip']):.1f} | "
                     f"{row['peak_rss_mb'] / 1024:.2f} |")  # fmt: skip
    lines += ["", f"Command: `{results['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from calibration.data import build_calibration_set
    from calibration.int8 import agreement, outputs_child, read_outputs
    from runtime.manifest import Manifest

    rows = check_rows(args.backends)
    if args.clips < 1:
        raise ValueError(f"--clips must be at least 1, got {args.clips}")
    manifest = Manifest.load(args.bundle)
    frames = args.frames or manifest.profiles["T"]["opt"]
    results_rows = []
    with tempfile.TemporaryDirectory(prefix="proxyformer-agreement-") as folder:
        work = Path(folder)
        held_out = build_calibration_set(manifest, args.data, args.split, args.clips, args.seed,
                                         frames)  # fmt: skip
        tracks = sum(int(s["text_features"].shape[0]) for s in held_out.samples)
        held_out.save(work / "clips")
        del held_out
        reference = None
        for name in rows:
            spec = BACKENDS[name]
            row = {"backend": name, "runtime": spec.runtime, "precision": spec.precision}
            out = work / f"{name}.npz"
            try:
                row |= run_in_child(outputs_child, (args.bundle, str(work / "clips"),
                                                    spec.runtime, spec.precision, args.threads,
                                                    str(out)), f"agreement-{name}")  # fmt: skip
            except ChildDied as error:
                row |= {"status": "failed", "reason": str(error)}
            if row["status"] == "ran":
                outputs = read_outputs(out, args.clips)
                if name == rows[0]:
                    reference = outputs
                elif reference is not None:
                    row["agreement"] = agreement(reference, outputs)
            log.info("%s", row)
            results_rows.append(row)
    results = {
        **run_record("benchmarks/int8_agreement.py", argv),
        "bundle": args.bundle,
        "setting": {
            "data": args.data,
            "split": args.split,
            "clips": args.clips,
            "frames": frames,
            "size": list(manifest.size),
            "tracks": tracks,
            "threads": args.threads,
            "seed": args.seed,
        },
        "rows": results_rows,
    }
    save_results(results, args.out, f"agreement-{args.tag or Path(args.bundle).name}",
                 format_markdown(results))  # fmt: skip
    return results


if __name__ == "__main__":
    main()
