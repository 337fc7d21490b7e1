"""`make demo`: the main job on the embedded default, end to end on this machine's CPU.

1. Export the shipped tiny checkpoint (``checkpoints/tiny-synthetic``) to an ONNX bundle with
   FP32 and FP16 graphs; parity against PyTorch is checked on the way.
2. Generate a small synthetic referring-video set (held out from the checkpoint's training
   data: another seed) and calibrate INT8 for both targets (TensorRT Q/DQ, ONNX Runtime CPU).
3. Segment one synthetic video with the onnxruntime CPU runtime (FP32 and INT8) using the
   video's own expressions; write per-frame PNG masks and an overlay (GIF and MP4).
4. Print the latency table of PyTorch eager against every onnxruntime precision.

Everything goes to ``demo_out/`` (``--out``); the steps reuse what a previous run left there
unless ``--fresh``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("demo")

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "tiny-synthetic"


def parse_args() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "demo_out")
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--videos", type=int, default=40, help="synthetic videos to generate")
    parser.add_argument("--calibration-samples", type=int, default=32)
    parser.add_argument("--runs", type=int, default=10, help="timed runs per backend")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--fresh", action="store_true", help="redo every step")
    return parser.parse_args()


def export_step(checkpoint: Path, bundle: Path) -> None:
    """1. The checkpoint as an FP32 + FP16 bundle (parity-checked), unless it is there."""
    if (bundle / "manifest.json").is_file():
        return
    from export.onnx_export import export_bundle

    log.info("1/4 exporting %s to %s (FP32 + FP16, parity-checked)", checkpoint, bundle)
    export_bundle(
        checkpoint, bundle, size=(128, 224), frames="1:12:24", expressions="1:2:8",
        max_text_len=32, precisions=("fp32", "fp16"),
    )  # fmt: skip


def calibration_step(args: argparse.Namespace, bundle: Path, data: Path) -> None:
    """2. Held-out synthetic videos and INT8 for both targets, unless they are there."""
    from runtime.manifest import Manifest

    if not (data / "meta_expressions").is_dir():
        from training.data.synthetic import write_dataset

        log.info("2/4 generating %d synthetic videos in %s", args.videos, data)
        write_dataset(data, videos=args.videos, frames=12, size=(128, 224), seed=2026)
    if "int8-cpu" not in Manifest.load(bundle).precisions("video"):
        from calibration.int8 import calibrate_bundle

        log.info("2/4 calibrating INT8 on %d clips (entropy; TensorRT and CPU targets)",
                 args.calibration_samples)  # fmt: skip
        calibrate_bundle(bundle, data, ("int8-tensorrt", "int8-cpu"), "entropy",
                         samples=args.calibration_samples, check_samples=6,
                         threads=args.threads)  # fmt: skip


def latency_step(args: argparse.Namespace, bundle: Path) -> str:
    """4. PyTorch eager against every precision; the markdown table."""
    from benchmarks.report import format_markdown
    from benchmarks.runners import DEFAULT_BACKENDS
    from benchmarks.suite import run_benchmark

    log.info("4/4 latency: PyTorch eager vs onnxruntime FP32 / FP16 / INT8 (%d runs)", args.runs)
    results = run_benchmark(
        bundle, DEFAULT_BACKENDS, frames=12, expressions=2, e_sweep=(1, 2, 4), warmup=2,
        runs=args.runs, threads=args.threads, out_dir=args.out / "latency", tag="demo",
    )  # fmt: skip
    return format_markdown(results)


def main() -> None:
    """Run the four steps, each timed; print the bundle, the segmentations and the latency."""
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("onnxscript", "onnx_ir", "onnxslim", "runtime.backends", "root"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    steps = {}
    bundle, data = args.out / "bundle", args.out / "synth"

    tick = time.perf_counter()
    export_step(args.checkpoint, bundle)
    steps["export"] = time.perf_counter() - tick

    tick = time.perf_counter()
    calibration_step(args, bundle, data)
    steps["data + calibration"] = time.perf_counter() - tick
    from runtime.manifest import Manifest

    manifest = Manifest.load(bundle)
    print("\n" + manifest.summary())

    tick = time.perf_counter()
    segment_sample(manifest, data, args.out, args.threads)  # 3.
    steps["segment"] = time.perf_counter() - tick

    tick = time.perf_counter()
    table = latency_step(args, bundle)
    steps["latency"] = time.perf_counter() - tick
    print("\n" + table)
    print("demo steps (s): " + ", ".join(f"{k} {v:.0f}" for k, v in steps.items())
          + f"; total {time.perf_counter() - started:.0f} s; outputs in {args.out}")  # fmt: skip


def segment_sample(manifest, data: Path, out: Path, threads: int | None) -> None:
    """Segment the first valid video with its own expressions, FP32 and INT8 (CPU form)."""
    from runtime.predictor import RVOSPredictor
    from runtime.video import read_video
    from runtime.writers import overlay, write_masks, write_video

    meta = json.loads((data / "meta_expressions" / "valid" / "meta_expressions.json").read_text())
    name = min(meta["videos"])
    expressions = [e["exp"] for e in meta["videos"][name]["expressions"].values()][:3]
    frames, names = read_video(data / "valid" / "JPEGImages" / name)
    options = {"threads": threads} if threads else {}
    print()
    for precision in ("fp32", "int8-cpu"):
        predictor = RVOSPredictor(manifest, backend="onnxruntime", precision=precision, **options)
        result = predictor.segment(frames, expressions)
        target = out / "segment" / precision
        for index, masks in enumerate(result.masks):
            write_masks(masks, names, target / "Annotations" / name / str(index))
        painted = overlay(frames, result.masks, expressions)  # with a legend
        write_video(painted, target / f"{name}_overlay.gif", fps=6)
        write_video(painted, target / f"{name}_overlay.mp4", fps=6)
        print(f"3/4 {precision}: {name}, {len(frames)} frames, "
              f"{result.timings_ms['total']:.0f} ms end to end -> {target}")  # fmt: skip
        for index, (text, score) in enumerate(zip(expressions, result.scores)):
            share = float(np.mean(result.masks[index]))
            print(f"    [{index}] {text!r}: score {score:.3f}, mask {100 * share:.1f}% of pixels")


if __name__ == "__main__":
    main()
