"""INT8 calibration of a bundle's video graph: explicit Q/DQ from real calibration clips.

    python calibration/calibrate.py --bundle bundles/tiny --data data/synth --samples 64 \\
        --method entropy --target int8-tensorrt int8-cpu
    python calibration/calibrate.py --bundle bundles/tiny --data data/synth --sensitivity
    python calibration/calibrate.py --bundle bundles/tiny --data data/synth --keep-float 4
    python calibration/calibrate.py --bundle bundles/paper-swin-t --data data/synth-360 \
        --samples 32 --frames 19 --method minmax --range-backend onnxruntime \
        --range-pieces 128 --target int8-cpu                         # bounded memory

Writes ``video.int8-tensorrt.onnx`` / ``video.int8-cpu.onnx`` and their manifest entries
(calibration settings, Q/DQ summary, mask agreement with FP32 on held-out clips); on a bundle
exported with ``--split``, also ``video_encoder.<target>.onnx`` and
``video_decoder.<target>.onnx``, quantized from the same ranges, so a memory budget can run
INT8 expressions in groups. The work is done by ``calibration.int8``; this script only parses
arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys

from calibration.int8 import calibrate_bundle, float_nodes_from_sensitivity, sensitivity
from calibration.quantize import METHODS, TARGETS
from runtime.manifest import SPLIT_GRAPHS, BundleError
from runtime.precisions import cli_type


def count(minimum: int):
    """An argparse type: an int >= ``minimum``, refused by argparse (usage, exit 2) otherwise,
    so a count of 0 stops here rather than after the bundle and the data are read."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True, help="bundle directory (export/to_onnx.py)")
    parser.add_argument("--data", required=True,
                        help="dataset root, Ref-YouTube-VOS layout (data/synth...)")  # fmt: skip
    parser.add_argument("--split", default="train", help="split the calibration clips come from")
    parser.add_argument("--samples", type=count(1), default=64,
                        help="calibration clips (one per video)")  # fmt: skip
    parser.add_argument("--method", default="entropy", choices=METHODS)
    parser.add_argument(
        "--target",
        nargs="+",
        default=list(TARGETS),
        type=cli_type(TARGETS, "calibration target"),
        help="int8-tensorrt: symmetric int8 Q/DQ; int8-cpu: ONNX Runtime's u8s8 form "
        "(default both)",
    )
    parser.add_argument("--cpu-format", default="qdq", choices=("qdq", "qoperator"))
    parser.add_argument("--seed", type=int, default=0, help="which videos and clips")
    parser.add_argument("--frames", type=count(1), default=None,
                        help="frames per clip (default: the profile's optimum; fewer frames "
                        "need less memory to calibrate large models)")  # fmt: skip
    parser.add_argument("--check-split", default="valid", help="held-out clips for the agreement")
    parser.add_argument("--check-samples", type=count(0), default=8,
                        help="held-out clips the INT8 graphs are compared with FP32 on, each "
                        "graph in a process of its own (0: no check)")  # fmt: skip
    parser.add_argument("--exclude", nargs="*", default=[], help="node names to leave in float")
    parser.add_argument(
        "--quantize-class-path",
        action="store_true",
        help="also quantize the class path (the nodes only pred_logits depends on: mask "
        "pooling, geometry, selection, class MLP), left in float by default",
    )
    parser.add_argument(
        "--keep-float",
        type=count(0),
        default=0,
        help="leave the K most sensitive nodes (from --sensitivity) in float",
    )
    parser.add_argument(
        "--sensitivity",
        action="store_true",
        help="rank quantized nodes by the agreement gained when left in float",
    )
    parser.add_argument(
        "--recalibrate", action="store_true", help="rebuild the cached samples and ranges"
    )
    parser.add_argument(
        "--range-backend",
        default="calibrator",
        choices=("calibrator", "onnxruntime", "openvino"),
        help="calibrator: onnxruntime's calibrator (every method); onnxruntime or openvino: "
        "MinMax ranges (--method minmax) in bounded memory, run by that engine clip by clip, "
        "which calibrates paper-size graphs",
    )
    parser.add_argument(
        "--range-pieces", type=count(1), default=1,
        help="with --range-backend onnxruntime or openvino: cut the video graph into this many "
        "consecutive pieces (at most; cut before LayerNorms), run one after the other on each "
        "clip, so only one piece's tensors are alive at a time (paper-swin-t at 19 frames: 128)",
    )  # fmt: skip
    parser.add_argument("--threads", type=count(1), default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # onnxruntime's quantizer logs through the root logger, line by line: keep the root at
    # WARNING and this project's own loggers (progress, clip by clip) at INFO.
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("calibration", "runtime", "export"):
        logging.getLogger(name).setLevel(logging.INFO)
    args = parse_args(argv)
    try:
        return run(args)
    except BundleError as error:
        # A bundle that cannot be used is the user's to fix: its message, not a traceback.
        print(f"error: {error}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    if args.sensitivity:
        for target in args.target:
            rows = sensitivity(args.bundle, target, args.method, args.data, args.check_split,
                               min(args.check_samples, 4), args.seed, args.threads)  # fmt: skip
            print(f"{target}: most sensitive nodes (mask IoU vs FP32 when left in float)")
            for row in rows[:10]:
                print(f"  {row['mask_iou']:.4f}  mse {row['mask_logit_mse']:.3g}  {row['node']}")
        return 0
    for target in args.target:
        exclude = list(args.exclude)
        if args.keep_float:
            exclude += float_nodes_from_sensitivity(args.bundle, target, args.keep_float)
        manifest = calibrate_bundle(
            args.bundle, args.data, (target,), args.method, args.samples, args.split, args.seed,
            args.check_split, args.check_samples, exclude, args.cpu_format, args.threads,
            args.recalibrate, args.frames, args.quantize_class_path, args.range_backend,
            args.range_pieces,
        )  # fmt: skip
        args.recalibrate = False
        for graph in ("video", *SPLIT_GRAPHS):
            if graph not in manifest.graphs or target not in manifest.precisions(graph):
                continue
            entry = manifest.variant(graph, target)
            result = entry["agreement_vs_fp32"]
            check = ("not checked against FP32 (--check-samples 0)" if result is None else
                     f"mask IoU vs FP32 {result['mask_iou']:.4f}, same query "
                     f"{result['same_query']:.3f} ({result['tracks']} held-out tracks, "
                     f"{' + '.join(result.get('graphs', ['video']))})")  # fmt: skip
            print(f"{entry['file']}: {entry['quantization']['quantized_ops']} quantized ops, "
                  f"{check}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
