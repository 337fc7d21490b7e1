"""Export a ProxyFormer checkpoint to an ONNX bundle (text_encoder.onnx + video.onnx + manifest).

    python export/to_onnx.py --checkpoint checkpoints/tiny-synthetic --out bundles/tiny \\
        --size 128x224 --frames 1:8:16
    python export/to_onnx.py --preset paper-swin-t --out bundles/swin-t --size 360x640 \\
        --frames 1:19:36 --precision fp16           # random weights, FP32 + FP16 graphs

The work is done by ``export.onnx_export.export_bundle``; this script only parses arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
from functools import partial

from export.onnx_export import DEFAULT_OPSET, export_bundle
from export.parity import FP16_TOLERANCE, FP32_TOLERANCE, Tolerance, fp16_tolerance_for
from proxyformer.config import PRESETS
from proxyformer.summary import parse_size


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint", help="checkpoint directory (model.safetensors + config.json)"
    )
    source.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="export this preset with random weights (no checkpoint)",
    )
    parser.add_argument("--out", required=True, help="bundle directory to write")
    parser.add_argument(
        "--size",
        type=parse_size,
        default=(360, 640),
        help="frame size HxW fixed in the graphs (default 360x640)",
    )
    parser.add_argument(
        "--frames", default="1:8:36", help="MIN:OPT:MAX frames per call (dynamic T; engine profile)"
    )
    parser.add_argument(
        "--expressions",
        default="1:1:8",
        help="MIN:OPT:MAX expressions per video (dynamic E; engine profile)",
    )
    parser.add_argument(
        "--max-text-len",
        type=int,
        default=32,
        help="tokens per expression; longer ones are truncated",
    )
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument(
        "--frame-format",
        default="uint8-nhwc",
        choices=("uint8-nhwc", "float-nchw"),
        help="uint8 [T,H,W,3] RGB normalised in the graph, or normalised float [T,3,H,W]",
    )
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["fp32"],
        choices=("fp32", "fp16"),
        help="graphs to write; fp32 is always written",
    )
    parser.add_argument(
        "--external-data",
        default="auto",
        choices=("auto", "always", "never"),
        help="weights in a .data file beside each graph (auto: above 1 GiB)",
    )
    parser.add_argument("--no-slim", action="store_true", help="skip onnxslim")
    parser.add_argument(
        "--no-parity", action="store_true", help="skip the ONNX Runtime parity check"
    )
    parser.add_argument("--atol", type=float, default=FP32_TOLERANCE.atol)
    parser.add_argument("--rtol", type=float, default=FP32_TOLERANCE.rtol)
    parser.add_argument("--fp16-atol", type=float, default=None,
                        help=f"default {FP16_TOLERANCE.atol}")  # fmt: skip
    parser.add_argument("--fp16-rtol", type=float, default=None,
                        help=f"default {FP16_TOLERANCE.rtol}")  # fmt: skip
    parser.add_argument(
        "--fp16-quantile", type=float, default=None,
        help="quantile of |fp16 - fp32| held to the FP16 tolerance (default: 1, the maximum; "
        "0.99 for a model with masked attention, see export/parity.py)",
    )  # fmt: skip
    parser.add_argument(
        "--split", action="store_true",
        help="also write the video graph in two parts, video_encoder (per video) and "
        "video_decoder (per expression), which a memory budget (--memory-budget) runs to "
        "split the expressions into groups without running the backbone once per group",
    )  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    parser.add_argument("--seed", type=int, default=0, help="random weights and parity inputs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("onnxscript", "onnx_ir", "onnxslim"):  # per-pass INFO lines
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parse_args(argv)
    # The model's own FP16 rule, with what the user gave in its place.
    fp16_rule = partial(fp16_tolerance_for, atol=args.fp16_atol, rtol=args.fp16_rtol,
                        quantile=args.fp16_quantile)  # fmt: skip
    manifest = export_bundle(
        args.checkpoint,
        args.out,
        preset=args.preset,
        size=args.size,
        frames=args.frames,
        expressions=args.expressions,
        max_text_len=args.max_text_len,
        opset=args.opset,
        frame_format=args.frame_format,
        precisions=tuple(dict.fromkeys(["fp32", *args.precision])),
        external_data=args.external_data,
        slim=not args.no_slim,
        parity=not args.no_parity,
        fp32_tolerance=Tolerance(args.atol, args.rtol),
        fp16_tolerance=fp16_rule,
        overwrite=args.overwrite,
        seed=args.seed,
        split=args.split,
    )
    print(manifest.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
