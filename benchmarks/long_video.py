"""Long videos: the segment command's peak memory against the video's length, and how well
windows keep one object per expression, with and without linking.

    python benchmarks/long_video.py --bundle bundles/tiny
    python benchmarks/long_video.py --bundle bundles/tiny --memory-frames 50 1000 \\
        --memory-size 360x640 --videos 8 --frames 240 --overlap 3

1. **Memory.** A synthetic mp4 of each length in ``--memory-frames`` (moving shapes at
   ``--memory-size``) is segmented by ``python -m runtime segment`` (masks and overlay written)
   in a process of its own; its peak RSS (``VmHWM``) and time are recorded, and the ratio of the
   longest to the shortest.
2. **Identity.** ``--videos`` synthetic videos of ``--frames`` frames at the bundle's size, in
   which every object stays in view for the whole video, are segmented in windows of the
   bundle's largest frame count for each of their expressions: independent windows (no
   overlap), overlapping windows with the score alone, and overlapping windows with linking.
   For each: J&F against the ground truth, the identity switches the runtime recorded, and the
   ground-truth switches (the ground-truth object that best matches the expression's track
   changes between consecutive windows; windows where the track is empty do not count).

Results go to ``benchmarks/results/<machine>/long-video-<tag>.{json,md}``; the markdown is
printed.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import cpu_line, machine_info, run_record
from benchmarks.report import save_results
from runtime.allocator import huge_pages_in_children
from runtime.child import ChildDied, max_rss_mb, run_in_child

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # Here, not at the top: the segment children (spawn) import this module, and
    # proxyformer imports torch, 0.5 GB of RSS the runtime's process does not have.
    from proxyformer.summary import parse_size

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-frames", type=int, nargs="*", default=[50, 1000])
    parser.add_argument("--memory-size", type=parse_size, default=(360, 640), help="HxW")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--overlap", type=int, default=None, help="default: a quarter window")
    parser.add_argument("--link-weights", type=float, nargs="+", default=[0.1],
                        help="the linking weights to compare (runtime.stream.TrackLinker)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=None, help="default: benchmarks/results/<machine>")
    parser.add_argument("--tag", default=None, help="default: the bundle's folder name")
    return parser.parse_args(argv)


def write_synthetic_mp4(path: Path, frames: int, size: tuple[int, int], seed: int) -> Path:
    """Moving shapes, rendered and written one frame at a time."""
    from runtime.writers import OverlayWriter
    from training.data.synthetic import iter_render, sample_objects

    rng = np.random.default_rng(seed)
    objects = sample_objects(rng, *size, frames)
    writer = OverlayWriter(path, fps=25)
    for image, _ in iter_render(objects, rng, frames, *size):
        writer.write(image[None])
    return writer.close()


def segment_child(connection, argv: list[str]) -> None:
    """The segment command in this (spawned) process; sends its exit code, seconds, peak RSS."""
    logging.basicConfig(level=logging.WARNING)
    from runtime.__main__ import main

    started = time.perf_counter()
    code = main(argv)
    connection.send({"exit_code": code, "seconds": time.perf_counter() - started,
                     "peak_rss_mb": max_rss_mb()})  # fmt: skip


def measure_memory(args: argparse.Namespace, work: Path) -> list[dict]:
    rows = []
    for frames in args.memory_frames:
        video = write_synthetic_mp4(work / f"clip{frames}.mp4", frames, args.memory_size,
                                    args.seed)  # fmt: skip
        argv = ["segment", "--bundle", args.bundle, "--video", str(video), "--out",
                str(work / f"out{frames}"), "--text", "the red circle", "--text",
                "the big square", "--backend", args.backend, "--threads", str(args.threads)]  # fmt: skip
        try:
            row = run_in_child(segment_child, (argv,), f"segment-{frames}")
        except ChildDied as error:
            row = {"exit_code": None, "error": str(error)}
        row["frames"] = frames
        log.info("memory: %s", row)
        rows.append(row)
    return rows


def _gt_object(track: np.ndarray, labels: np.ndarray, ids: list[int]) -> int | None:
    """The ground-truth object whose masks best overlap ``track`` (T, H, W); None if empty."""
    if not track.any():
        return None
    ious = []
    for obj in ids:
        gt = labels == obj
        ious.append((track & gt).sum() / max((track | gt).sum(), 1))
    return ids[int(np.argmax(ious))]


def measure_identity(args: argparse.Namespace) -> dict:
    from runtime.predictor import RVOSPredictor
    from training.data.synthetic import generate_video
    from training.metrics import summarize_jf, video_jf

    predictor = RVOSPredictor(args.bundle, backend=args.backend, threads=args.threads)
    window = predictor.max_frames
    overlap = window // 4 if args.overlap is None else args.overlap
    height, width = predictor.size
    modes = {"independent": (0, False, 0.0), "overlap, score only": (overlap, False, 0.0)}
    for weight in args.link_weights:
        modes[f"overlap, linked (weight {weight:g})"] = (overlap, True, weight)
    rows = {name: [] for name in modes}
    for index in range(args.videos):
        images, labels, objects, expressions = generate_video(
            args.seed, "valid", index, args.frames, height, width
        )
        texts = [text for text, _ in expressions]
        ids = [obj.obj_id for obj in objects]
        text = predictor.encode_text(texts)
        for name, (shared, link, weight) in modes.items():
            results = list(predictor.stream(images, text, window, overlap=shared, link=link,
                                            link_weight=weight))  # fmt: skip
            masks = np.concatenate([r.masks for r in results], axis=1)
            for e, (_, obj_id) in enumerate(expressions):
                j, f = video_jf(labels == obj_id, masks[e])
                matched, offset = [], 0
                for r in results:
                    span = slice(offset, offset + len(r.names))
                    matched.append(_gt_object(r.masks[e], labels[span], ids))
                    offset += len(r.names)
                seen = [m for m in matched if m is not None]
                rows[name].append({
                    "video": index, "expression": texts[e], "J": j, "F": f,
                    "recorded_switches": sum(r.choices[e].switch for r in results),
                    "gt_switches": sum(a != b for a, b in itertools.pairwise(seen)),
                    "windows": len(results),
                })  # fmt: skip
        log.info("identity: video %d of %d done", index + 1, args.videos)
    summary = {}
    for name, entries in rows.items():
        windows = sum(r["windows"] - 1 for r in entries)  # window boundaries crossed
        summary[name] = summarize_jf(entries) | {
            "recorded_switches": sum(r["recorded_switches"] for r in entries),
            "gt_switches": sum(r["gt_switches"] for r in entries),
            "boundaries": windows,
        }
    return {"window": window, "overlap": overlap, "summary": summary, "rows": rows}


def ratio_longest_shortest(rows: list[dict]) -> float | None:
    """Peak RSS of the longest video over that of the shortest (None with fewer than two)."""
    if len(rows) < 2:
        return None
    rows = sorted(rows, key=lambda row: row["frames"])
    return rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]


def format_markdown(results: dict) -> str:
    machine = results["machine"]
    lines = [f"# Long videos — {results['bundle']}", "",
             f"{cpu_line(machine)}.", ""]  # fmt: skip
    memory = results["memory"]
    if memory:
        size = results["setting"]["memory_size"]
        title = (f"## Peak memory of `python -m runtime segment` ({size} mp4, 2 expressions, "
                 "masks and overlay written)")  # fmt: skip
        lines += [title, "", "| frames | s | peak RSS MB |", "|---:|---:|---:|"]
        for row in memory:
            rss = row.get("peak_rss_mb")
            lines.append(f"| {row['frames']} | {row.get('seconds', float('nan')):.1f} | "
                         + (f"{rss:.0f} |" if rss else f"failed: {row.get('error')} |"))  # fmt: skip
        if results.get("memory_ratio"):
            lines += ["", f"Longest / shortest: {results['memory_ratio']:.2f}× the peak RSS."]
    identity = results["identity"]
    if identity:
        s = results["setting"]
        title = (f"## One object per expression ({s['videos']} synthetic videos of {s['frames']} "
                 f"frames; windows of {identity['window']} frames, overlap {identity['overlap']})")  # fmt: skip
        header = ("| windows | J&F | J | F | switches recorded | ground-truth switches | "
                  "window boundaries |")  # fmt: skip
        lines += ["", title, "", header, "|---|---:|---:|---:|---:|---:|---:|"]
        for name, row in identity["summary"].items():
            lines.append(f"| {name} | {100 * row['J&F']:.2f} | {100 * row['J']:.2f} | "
                         f"{100 * row['F']:.2f} | {row['recorded_switches']} | "
                         f"{row['gt_switches']} | {row['boundaries']} |")  # fmt: skip
    lines += ["", f"Command: `{results['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # The children run the command with the malloc tunable it restarts itself with
    # (runtime.allocator), so their memory and seconds are the command's.
    with tempfile.TemporaryDirectory(prefix="proxyformer-long-video-") as work, \
            huge_pages_in_children() as huge_pages:  # fmt: skip
        memory = measure_memory(args, Path(work))
    identity = measure_identity(args) if args.videos > 0 else None
    machine = machine_info("cpu")
    done = [r for r in memory if r.get("peak_rss_mb")]
    height, width = args.memory_size
    results = {
        **run_record("benchmarks/long_video.py", argv, machine),
        "bundle": args.bundle,
        "setting": {
            "backend": args.backend,
            "threads": args.threads,
            "memory_size": f"{height}x{width}",
            "videos": args.videos,
            "frames": args.frames,
            "seed": args.seed,
            "malloc_huge_pages": huge_pages,
        },
        "memory": memory,
        "memory_ratio": ratio_longest_shortest(done),
        "identity": identity,
    }
    tag = args.tag or Path(args.bundle).name
    save_results(results, args.out, f"long-video-{tag}", format_markdown(results))
    return results


if __name__ == "__main__":
    main()
