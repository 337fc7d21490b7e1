"""Build TensorRT engines for a bundle, or print the equivalent trtexec commands.

    python export/build_engine.py --bundle bundles/tiny --precision fp16 --timing-cache trt.cache
    python export/build_engine.py --bundle bundles/tiny --precision int8-tensorrt --workspace 4
    python export/build_engine.py --bundle bundles/tiny --precision fp16 --print-trtexec

Engines go to BUNDLE/engines/{graph}.{precision}.plan with an entry in manifest.json. fp16
builds the bundle's fp16 graphs (on TensorRT 10 a bundle without them falls back to the FP16
builder flag); int8 builds the Q/DQ graphs from calibration/calibrate.py. --print-trtexec
prints the commands without importing TensorRT, so it works on a machine without a GPU.

The work is done by ``export.engine`` and ``export.trtexec``; this script only parses arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys

from export.engine import PRECISIONS, EngineBuildError, build_engines
from export.trtexec import trtexec_script
from runtime.manifest import GRAPHS, SPLIT_GRAPHS, BundleError
from runtime.precisions import cli_type


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True, help="bundle directory (manifest.json)")
    parser.add_argument(
        "--precision", default="fp16", type=cli_type(PRECISIONS, "engine precision"),
        help=f"engine precision: {', '.join(PRECISIONS)} (default fp16)",
    )
    parser.add_argument(
        "--workspace",
        type=float,
        default=None,
        metavar="GB",
        help="builder workspace limit in GiB (default: TensorRT's)",
    )
    parser.add_argument(
        "--timing-cache",
        default=None,
        metavar="FILE",
        help="timing cache file, loaded if present and saved after building",
    )
    parser.add_argument(
        "--graphs",
        nargs="+",
        default=None,
        choices=(*GRAPHS, *SPLIT_GRAPHS),
        help="graphs to build (default: all; the split video graph's parts too, where the "
        "bundle has them and the precision is not int8)",
    )
    parser.add_argument(
        "--print-trtexec",
        action="store_true",
        help="print the trtexec commands and exit (TensorRT is not imported)",
    )
    parser.add_argument(
        "--tensorrt-major",
        type=int,
        default=None,
        metavar="N",
        help="with --print-trtexec: TensorRT major version the flags are for "
        "(default: the installed one, else 10)",
    )
    parser.add_argument(
        "--device", type=int, default=0, metavar="N",
        help="CUDA device to build on (engines run on that GPU model; default 0)",
    )
    parser.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.print_trtexec:
            print(trtexec_script(args.bundle, args.precision, args.workspace, args.timing_cache,
                                 args.graphs, args.tensorrt_major))  # fmt: skip
            return 0
        entries = build_engines(args.bundle, args.precision, args.workspace, args.timing_cache,
                                args.graphs, verbose=args.verbose, device=args.device)  # fmt: skip
    except (EngineBuildError, BundleError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for graph, entry in entries.items():
        print(
            f"{graph}: {args.bundle}/{entry['file']} (TensorRT {entry['tensorrt']}, "
            f"{entry['gpu']}, sm {entry['compute_capability']}, {entry['build_seconds']} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
