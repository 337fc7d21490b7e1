"""The runtime's command line (no torch).

    python -m runtime segment --bundle bundles/tiny --video clip.mp4 \\
        --text "the small red circle moving left" --text "the big blue square" --out out/
    python -m runtime info --bundle bundles/tiny
    python -m runtime batch --bundle bundles/tiny --videos DIR|LIST --expressions FILE --out OUT
    python -m runtime serve --bundle bundles/tiny --port 8000

``batch`` (``runtime.batch``) segments many videos on a Ray cluster, resumably; ``serve``
(``runtime.server``) serves the predictor over HTTP. Both need the ``serve`` extra.

``segment`` writes per-frame PNG masks in the Ref-YouTube-VOS submission layout
(``OUT/Annotations/<video>/<expression index>/<frame>.png``), an overlay video with each
expression in its own colour (``OUT/<video>_overlay.mp4``, or ``.gif`` with ``--gif``) and
``OUT/<video>_result.json`` (expressions, scores, chosen queries, timings, and every file
the run wrote with its size; written last). An ``OUT`` that already holds outputs of the same
video is refused unless ``--overwrite``, which replaces them as a whole once the new ones are
written (``runtime.outputs``). A truncated or corrupt video is refused unless
``--allow-partial``. Bad arguments and inputs are reported as ``error: ...`` with exit code 2,
before the bundle is loaded where they do not depend on it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m runtime", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="print a bundle's manifest")
    info.add_argument("--bundle", required=True)
    info.add_argument("--json", action="store_true", help="the whole manifest as JSON")
    info.add_argument("--no-verify", action="store_true", help="skip the sha256 checks")

    segment = commands.add_parser("segment", help="segment the objects expressions refer to")
    segment.add_argument("--bundle", required=True)
    segment.add_argument("--video", required=True, help="a video file or a folder of frames")
    segment.add_argument("--text", action="append", required=True,
                         help="a referring expression (repeat for several)")  # fmt: skip
    segment.add_argument("--out", required=True, type=Path)
    segment.add_argument(
        "--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt", "openvino")
    )
    segment.add_argument(
        "--precision",
        default="fp32",
        help="fp32, fp16, int8-cpu or int8-tensorrt (the video graph's variant), or bf16 "
        "(OpenVINO only: the fp32 graphs run in BF16)",
    )
    segment.add_argument(
        "--threads", type=int, default=None, help="onnxruntime intra-op / OpenVINO threads"
    )
    segment.add_argument(
        "--window", type=int, default=None, help="frames per call (default: the bundle's maximum)"
    )
    segment.add_argument(
        "--overlap",
        type=int,
        default=None,
        help="frames consecutive windows share, to link one object per expression across "
        "windows (default: a quarter of the window; 0: independent windows)",
    )
    segment.add_argument(
        "--no-link",
        action="store_true",
        help="choose each window's query by its score alone (identity switches are still "
        "measured and recorded)",
    )
    segment.add_argument(
        "--link-weight",
        type=float,
        default=0.1,
        help="weight of the mask agreement against the class score when linking (0-1)",
    )
    segment.add_argument(
        "--memory-budget",
        default="auto",
        help="the most memory one call may take, e.g. 8GB or 6GiB: the window and the "
        "expressions per call are chosen to fit, from the bundle's memory measurements "
        "(default auto: 80%% of the available memory where the bundle has measurements for "
        "the backend; off: no budget)",
    )
    segment.add_argument("--name", default=None, help="video name in the output layout")
    segment.add_argument("--gif", action="store_true", help="write the overlay as a GIF")
    segment.add_argument("--fps", type=float, default=10.0, help="overlay frame rate (> 0)")
    segment.add_argument("--no-overlay", action="store_true")
    segment.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the outputs of this video already in --out (refused otherwise)",
    )
    segment.add_argument(
        "--allow-partial",
        action="store_true",
        help="segment the frames that decode of a truncated or corrupt video (recorded in the "
        "result JSON) instead of refusing it",
    )
    from .batch import add_arguments as add_batch
    from .server import add_arguments as add_serve

    add_batch(commands.add_parser("batch", help="segment many videos on a Ray cluster"))
    add_serve(commands.add_parser("serve", help="serve the predictor over HTTP"))
    return parser.parse_args(argv)


def run_segment(args: argparse.Namespace) -> dict:
    """Segment one video window by window: each window's masks and overlay frames are written
    as it completes (into the staging area of ``RunOutput``), the result JSON last."""
    from .allocator import malloc_huge_pages
    from .budget import parse_memory
    from .expressions import check_expressions
    from .outputs import RunOutput, default_name
    from .predictor import TIMING_KEYS, RVOSPredictor
    from .stream import check_fraction, check_overlap
    from .video import open_video
    from .writers import OverlayWriter, WriteError, check_fps, write_masks

    # Everything that can be checked without the bundle is checked before it is loaded.
    texts = check_expressions(args.text)
    if not args.no_overlay:
        check_fps(args.fps)
    check_fraction("--link-weight", args.link_weight)
    budget = None if args.memory_budget == "off" else args.memory_budget
    if budget not in (None, "auto"):
        budget = parse_memory(budget)
    name = args.name if args.name is not None else default_name(args.video)
    output = RunOutput(args.out, name, args.overwrite)
    video = open_video(args.video, allow_partial=args.allow_partial)  # decoded as windows run

    options = {"threads": args.threads} if args.threads else {}
    predictor = RVOSPredictor(
        args.bundle, backend=args.backend, precision=args.precision, memory_budget=budget,
        **options,
    )  # fmt: skip
    window = predictor.check_window(args.window)  # the bundle's frame profile: its limits
    plan = predictor.plan(window, len(texts))
    window = plan.window if plan is not None else window
    predictor.prepare(plan)  # the graphs the plan runs, loaded before the timed run
    overlap = check_overlap(window // 4 if args.overlap is None else args.overlap, window)
    windows, frames, switches = [], 0, [0] * len(texts)
    scores = [[] for _ in texts]
    fraction = [0.0] * len(texts)
    timings = dict.fromkeys((*TIMING_KEYS, "write"), 0.0)
    started_run = time.perf_counter()
    suffix = ".gif" if args.gif else ".mp4"
    with output:
        overlay = None
        if not args.no_overlay:
            overlay = OverlayWriter(output.overlay_path(suffix), args.fps, texts)
        try:
            results = predictor.stream(video, texts, window, args.allow_partial, overlap,
                                       link=not args.no_link, link_weight=args.link_weight)  # fmt: skip
            for result in progress(results, video.length, window, overlap):
                started = time.perf_counter()
                for index, masks in enumerate(result.masks):
                    write_masks(masks, result.names, output.masks_dir / str(index))
                    fraction[index] += float(masks.mean()) * len(result.names)
                if overlay is not None:
                    overlay.write(np.stack(result.frames), result.masks)
                timings["write"] += (time.perf_counter() - started) * 1e3
                for key in TIMING_KEYS:
                    timings[key] += result.timings_ms[key]
                for index, choice in enumerate(result.choices):
                    scores[index].append(choice.score)
                    switches[index] += choice.switch
                windows.append(result.record())
                frames += len(result.names)
            if overlay is not None:
                overlay.close()
        except WriteError as error:
            target = output.destination(error.path) if error.path else "an output"
            raise WriteError(
                f"{target} was not written ({error}); nothing of {output.name!r} in {args.out} "
                "was changed",
                error.path,
            ) from error
        finally:
            if overlay is not None:
                overlay.abort()
        timings["total"] = (time.perf_counter() - started_run) * 1e3
        summary = {
            "video": str(args.video),
            "name": output.name,
            "bundle": str(args.bundle),
            "backend": predictor.backend_name,
            "frames": frames,
            "window": window,
            "overlap": overlap,
            "linked": not args.no_link,
            "link_weight": args.link_weight,
            "expressions": [
                {
                    "index": i,
                    "text": text,
                    "score": float(np.mean(scores[i])),
                    "queries": [w["choices"][i]["query"] for w in windows],
                    "identity_switches": switches[i],
                    "foreground_fraction": fraction[i] / max(frames, 1),
                }
                for i, text in enumerate(texts)
            ],
            "windows": windows,
            "memory_plan": plan.as_dict() if plan is not None else None,
            "malloc_huge_pages": malloc_huge_pages(),
            "timings_ms": {k: round(v, 2) for k, v in timings.items()},
        }
        if not args.no_overlay:
            summary["overlay"] = str(args.out / f"{output.name}_overlay{suffix}")
        if video.partial is not None:
            summary["partial_video"] = video.partial
        return output.commit(summary)


def progress(results, frames: int | None, window: int, overlap: int):
    """A progress bar over windows when the frame count is known and spans several windows."""
    if frames is None or frames <= window:
        return results
    from tqdm import tqdm

    total = 1 + -(-(frames - window) // (window - overlap))  # the first, then one per step
    return tqdm(results, total=total, unit="window", leave=False)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from .expressions import shorten
    from .manifest import BundleError, Manifest
    from .video import VideoError

    try:
        if args.command == "info":
            manifest = Manifest.load(args.bundle, verify=not args.no_verify)
            print(json.dumps(manifest.data, indent=2) if args.json else manifest.summary())
            return 0
        if args.command in ("batch", "serve"):
            from .batch import main as batch_main
            from .server import main as serve_main

            return (batch_main if args.command == "batch" else serve_main)(args)
        summary = run_segment(args)
    except (BundleError, VideoError, ValueError, OSError) as error:
        # OSError: a write that failed (WriteError names the file), a missing path.
        print(f"error: {error}", file=sys.stderr)
        return 2
    for entry in summary["expressions"]:
        print(f"[{entry['index']}] {shorten(entry['text'])}: score {entry['score']:.3f}, "
              f"{100 * entry['foreground_fraction']:.1f}% of pixels")  # fmt: skip
    print("timings (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in summary["timings_ms"].items()))
    print(f"masks in {args.out / 'Annotations'}" + (f", overlay {summary['overlay']}"
                                                    if "overlay" in summary else ""))  # fmt: skip
    return 0


if __name__ == "__main__":
    from .allocator import restart_with_huge_pages

    restart_with_huge_pages()  # glibc reads its tunables at start (runtime.allocator)
    sys.exit(main())
