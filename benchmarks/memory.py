"""Peak memory against the frames T and the expressions E of one call, per backend.

    python benchmarks/memory.py --bundle bundles/tiny --backends ort,ov,ov-bf16 \\
        --frames 6 12 24 --expressions 1 2 4 8
    python benchmarks/memory.py --bundle bundles/paper-swin-t --backends ort,ov,ov-bf16 \\
        --frames 9 19 --expressions 1 2
    python benchmarks/memory.py --bundle bundles/paper-swin-t-split --backends ort,ov-bf16 \\
        --frames 9 16 19 --expressions 1 4 --modes video split --ort-arena off --record

Every (backend, T, E) point runs in a process of its own (``spawn``): for the ONNX runtimes the
runtime's own ``RVOSPredictor`` segments random frames at the bundle's size in one window
(``benchmarks.isolate.predictor_point_child``: no torch in the process, twice on OpenVINO, which
compiles in its first call); PyTorch rows call the model twice on seeded random inputs
(``benchmarks.workload.make_feeds``). The process's peak RSS (``VmHWM``) is read, as well as its
RSS once the backend was loaded. A point whose
process is killed (out of memory) is recorded as failed with the signal, and the sweep goes on.
Points are run from the smallest call up, and a backend's larger calls are skipped once one
failed (``--keep-going`` runs them anyway).

``--modes split`` measures the split video graph (``video_encoder`` then ``video_decoder``, a
bundle exported with ``--split``) beside the one graph. ``--record`` fits each backend's and
mode's memory model (``runtime.budget.MemoryModel``) to its points and keeps it in the bundle's
manifest, where a memory budget (``RVOSPredictor(memory_budget=...)``, ``--memory-budget``)
reads it; onnxruntime rows are recorded with ``--ort-arena off`` or ``shared``, its bounded
modes, and a budget then runs onnxruntime as recorded (``runtime.budget.measured_arena``). With
``shared`` each point makes its call twice, as on OpenVINO: the shared arena keeps what a run
still held at its end, and the peak over two calls counts it.

Results go to ``benchmarks/results/<machine>/memory-<tag>.{json,md,png}``: a table, and a
figure of peak RSS against T (at the smallest E) and against E (at the largest T). The
markdown is printed.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from benchmarks.isolate import point_body, predictor_point_child
from benchmarks.machine import cpu_line, machine_info, run_record
from benchmarks.report import save_results
from benchmarks.rows import BACKENDS
from runtime.allocator import huge_pages_in_children
from runtime.backends.ort import ARENA_SETTINGS
from runtime.child import ChildDied, run_in_child

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--backends", default="ort,ov", help=f"of {', '.join(BACKENDS)}")
    parser.add_argument("--frames", type=int, nargs="+", required=True, help="T values")
    parser.add_argument("--expressions", type=int, nargs="+", default=[1], help="E values")
    parser.add_argument("--text-length", type=int, default=20, help="L (clipped to the profile)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["video"], choices=("video", "split"),
                        help="the one video graph, and/or its two parts (a --split bundle)")  # fmt: skip
    parser.add_argument("--ort-arena", default="on", choices=tuple(ARENA_SETTINGS),
                        help="onnxruntime's CPU memory arena: off or shared are the bounded "
                             "modes a memory budget runs, as recorded")  # fmt: skip
    parser.add_argument("--record", action="store_true",
                        help="fit and keep each backend's memory model in the bundle's manifest")  # fmt: skip
    parser.add_argument("--keep-going", action="store_true",
                        help="run a backend's larger calls after one failed")  # fmt: skip
    parser.add_argument("--out", default=None, help="default: benchmarks/results/<machine>")
    parser.add_argument("--tag", default=None, help="default: the bundle's folder name")
    return parser.parse_args(argv)


def check_points(manifest: Any, frames: list[int], expressions: list[int]) -> None:
    """Every T and E inside the bundle's profiles, before any process starts."""
    for axis, values in (("T", frames), ("E", expressions)):
        low, high = manifest.profiles[axis]["min"], manifest.profiles[axis]["max"]
        outside = [v for v in values if not low <= v <= high]
        if outside:
            raise ValueError(f"{axis} = {outside} outside the bundle's {axis} profile "
                             f"[{low}, {high}]")  # fmt: skip


def _point_child(connection: Any, bundle: str, name: str, frames: int, expressions: int,
                 text_length: int, threads: int) -> None:  # fmt: skip
    """One call of a PyTorch row in this (spawned) process, twice (``point_body``)."""

    def load():
        import torch

        from benchmarks.runners import SkipBackend, open_runner
        from benchmarks.workload import load_baseline_model, make_feeds
        from runtime.manifest import Manifest

        torch.set_num_threads(threads)
        manifest = Manifest.load(bundle)
        feeds = make_feeds(manifest, frames, expressions, text_length)
        model = load_baseline_model(manifest, "cpu")
        try:
            runner, _ = open_runner(name, manifest, model, "cpu", threads)
        except SkipBackend as reason:
            return str(reason)
        return (lambda: runner(feeds)), True

    point_body(connection, load)


def sweep(args: argparse.Namespace, backends: list[str], text_length: int) -> list[dict]:
    points = []
    calls = sorted((t * e, t, e) for t in args.frames for e in args.expressions)
    options = {"cpu_arena": ARENA_SETTINGS[args.ort_arena]}
    for name, mode in ((n, m) for n in backends for m in args.modes):
        stopped = None
        for _, frames, expressions in calls:
            point = {"backend": name, "mode": mode, "frames": frames, "expressions": expressions}
            if stopped and not args.keep_going:
                point |= {"status": "not run", "reason": f"a smaller call failed: {stopped}"}
                points.append(point)
                continue
            spec = BACKENDS[name]
            if spec.runtime == "torch":
                target = _point_child
                arguments = (args.bundle, name, frames, expressions, text_length, args.threads)
            else:
                row_options = {"threads": args.threads}
                if spec.runtime == "onnxruntime":
                    row_options |= options
                target = predictor_point_child
                arguments = (args.bundle, spec.runtime, spec.precision, mode, frames,
                             expressions, row_options)  # fmt: skip
            try:
                point |= run_in_child(target, arguments, f"memory-{name}")
            except ChildDied as error:
                point |= {"status": "failed", "reason": str(error)}
            if point["status"] == "failed":
                stopped = f"T={frames}, E={expressions}"
            log.info("%s", point)
            points.append(point)
    return points


def format_markdown(results: dict) -> str:
    machine = results["machine"]
    setting = results["setting"]
    lines = [
        f"# Peak memory per call — {results['bundle']}",
        "",
        (
            f"{cpu_line(machine)}; {setting['threads']} "
            f"threads, L = {setting['text_length']}. Each point in a process of its own: peak "
            "RSS (VmHWM) of loading the backend and its calls; the last call's seconds; malloc "
            + ("with" if setting.get("malloc_huge_pages") else "without")
            + " transparent huge pages (`runtime.allocator`)."
        ),
        "",
        "| backend | graph | T | E | peak RSS GiB | after load GiB | last call s | note |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for p in results["points"]:
        row = f"| {p['backend']} | {p.get('mode', 'video')} | {p['frames']} | {p['expressions']} |"
        if p["status"] == "measured":
            lines.append(f"{row} {p['peak_rss_mb'] / 1024:.2f} | {p['rss_loaded_mb'] / 1024:.2f} "
                         f"| {p['seconds']:.2f} | |")  # fmt: skip
        else:
            lines.append(f"{row} – | – | – | {p['status']}: {p['reason']} |")
    if results.get("models"):
        lines += [
            "",
            ("Memory models kept in the bundle (peak = base + max(a·P(T) + b·T·E, x·T·E), in "
             "GB of 10^9 bytes; P(T): T padded to a multiple of the backbone's temporal window, "
             "the step; x: the expressions' phase, 0 where no point shows it; `runtime.budget`):"),
            "",
            "| backend | graph | base | a (per frame) | b (per frame and expression) | x | step |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for name, by_mode in results["models"].items():
            for mode, m in by_mode.items():
                lines.append(f"| {name} | {mode} | {m['base'] / 1e9:.3f} | "
                             f"{m['per_frame'] / 1e9:.4f} | {m['per_frame_expression'] / 1e9:.4f} "
                             f"| {m.get('expression_phase', 0.0) / 1e9:.4f} "
                             f"| {m.get('frame_step', 1)} |")  # fmt: skip
    lines += ["", f"Command: `{results['command']}`", ""]
    return "\n".join(lines)


def record_models(manifest: Any, results: dict) -> dict:
    """Fit each backend's and mode's memory model to its measured points and keep them in the
    bundle's manifest (``runtime.budget.record_memory_models``); returns them by row name."""
    from runtime.budget import MemoryModel, frame_step, record_memory_models

    step = frame_step(manifest)

    fitted: dict[str, dict] = {}
    for name in dict.fromkeys(p["backend"] for p in results["points"]):
        spec = BACKENDS[name]
        if spec.runtime == "torch":
            continue
        models = {}
        for mode in results["setting"]["modes"]:
            points = [{"T": p["frames"], "E": p["expressions"],
                       "peak_bytes": int(p["peak_rss_mb"] * 2**20),
                       "seconds": round(p["seconds"], 2)}
                      for p in results["points"] if p["backend"] == name
                      and p.get("mode", "video") == mode and p["status"] == "measured"]  # fmt: skip
            try:
                models[mode] = MemoryModel.fit(points, step)
            except ValueError as reason:
                log.warning("%s %s: no memory model (%s)", name, mode, reason)
        if models:
            measured = {key: results[key] for key in ("command", "created")}
            measured |= {"machine": results["machine"]["slug"], "setting": results["setting"]}
            record_memory_models(manifest, spec.runtime, spec.precision, models, measured)
            fitted[name] = {mode: model.to_dict() for mode, model in models.items()}
    return fitted


def plot(results: dict, path: Path) -> Path | None:
    """Peak RSS against T (at the smallest E) and against E (at the largest T), per backend."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no figure (pip install -e '.[bench]')")
        return None
    measured = [p for p in results["points"] if p["status"] == "measured"]
    e_low = min(results["setting"]["expressions"])
    t_high = max(results["setting"]["frames"])
    figure, (by_t, by_e) = plt.subplots(1, 2, figsize=(11, 4))
    for name in dict.fromkeys(p["backend"] for p in measured):
        rows = [p for p in measured if p["backend"] == name]
        t_rows = sorted((p["frames"], p["peak_rss_mb"] / 1024) for p in rows
                        if p["expressions"] == e_low)  # fmt: skip
        e_rows = sorted((p["expressions"], p["peak_rss_mb"] / 1024) for p in rows
                        if p["frames"] == t_high)  # fmt: skip
        if t_rows:
            by_t.plot(*zip(*t_rows), marker="o", label=name)
        if e_rows:
            by_e.plot(*zip(*e_rows), marker="o", label=name)
    by_t.set(xlabel="frames T", ylabel="peak RSS (GiB)", title=f"E = {e_low}")
    by_e.set(xlabel="expressions E", ylabel="peak RSS (GiB)", title=f"T = {t_high}")
    for axis in (by_t, by_e):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(f"Peak memory per call — {results['bundle']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from runtime.manifest import Manifest

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise SystemExit(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    manifest = Manifest.load(args.bundle)
    check_points(manifest, args.frames, args.expressions)
    text_length = min(args.text_length, manifest.profiles["L"]["max"])
    # The children's malloc as ``python -m runtime``'s (it restarts itself with huge pages):
    # the recorded seconds choose the plan's mode for that command.
    with huge_pages_in_children() as huge_pages:
        points = sweep(args, backends, text_length)
    machine = machine_info("cpu")
    results = {
        **run_record("benchmarks/memory.py", argv, machine),
        "bundle": args.bundle,
        "setting": {
            "frames": args.frames,
            "expressions": args.expressions,
            "text_length": text_length,
            "threads": args.threads,
            "modes": args.modes,
            "ort_arena": args.ort_arena,
            "malloc_huge_pages": huge_pages,
        },
        "points": points,
    }
    if args.record:
        results["models"] = record_models(manifest, results)
    tag = args.tag or Path(args.bundle).name
    out = save_results(results, args.out, f"memory-{tag}", format_markdown(results))
    plot(results, out / f"memory-{tag}.png")
    return results


if __name__ == "__main__":
    main()
