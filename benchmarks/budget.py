"""The memory budget at work: peak memory and time of ``python -m runtime segment`` with and
without ``--memory-budget``, per backend.

    python benchmarks/budget.py --bundle bundles/paper-swin-t-split --backends ort,ov,ov-bf16 \\
        --frames 19 --expressions 4 --budget 8GB

For each backend, three runs of the segment command on one synthetic mp4 of ``--frames`` frames
at the bundle's size (moving shapes), each in a process of its own (``spawn``):

1. one expression, no budget;
2. ``--expressions`` expressions, no budget;
3. ``--expressions`` expressions under ``--budget``.

Each records the process's peak RSS (``VmHWM``, loading included), the segment's own time
(``timings_ms.total`` of its result JSON: decoding, text, video graphs, post-processing and
writing, not loading), the part of it spent compiling for new input shapes (OpenVINO's static
shapes: ``timings_ms.compile``, a one-off per shape and process), and the budget's plan
(window, graph, expressions per call). The report gives the budgeted run's time against both
unbudgeted ones, compiles excluded, the ratios the targets name (docs/benchmarks.md, "Memory
budget"). The budget needs the bundle's memory models
(``benchmarks/memory.py --record``) for each backend.

``--repeat N`` runs the rows N times, round after round (so that a slow spell of the machine
falls on every row alike), and reports each row by its median run, with the highest peak and
every run's seconds: on a virtual machine whose host takes freed memory back, the same command
took 40 to 59 s in one session.

Results go to ``benchmarks/results/<machine>/budget-<tag>.{json,md}``; the markdown is printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path

from benchmarks.long_video import segment_child, write_synthetic_mp4
from benchmarks.machine import cpu_line, run_record, settle_freed_memory
from benchmarks.report import save_results
from benchmarks.rows import BACKENDS
from runtime.allocator import huge_pages_in_children
from runtime.child import ChildDied, run_in_child

log = logging.getLogger(__name__)

TEXTS = (
    "the red circle moving left",
    "the big blue square",
    "the small green triangle",
    "the yellow diamond that stays still",
    "the circle above the square",
    "the shape on the right",
    "the smallest object",
    "the object moving up",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--backends", default="ort,ov,ov-bf16",
                        help="rows of benchmarks.runners.BACKENDS (ONNX runtimes)")  # fmt: skip
    parser.add_argument("--frames", type=int, default=19, help="frames of the video and window")
    parser.add_argument("--expressions", type=int, default=4, help=f"at most {len(TEXTS)}")
    parser.add_argument("--budget", default="8GB", help="the --memory-budget of the third run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each row, in rounds; each row is reported by its median")  # fmt: skip
    parser.add_argument("--out", default=None, help="default: benchmarks/results/<machine>")
    parser.add_argument("--tag", default=None, help="default: the bundle's folder name")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace, manifest) -> list[str]:
    """The rows to run; refuses what would fail in every child, before any runs."""
    from runtime.budget import parse_memory

    parse_memory(args.budget)
    if args.repeat < 1:
        raise ValueError(f"--repeat must be at least 1, got {args.repeat}")
    if not 1 <= args.expressions <= len(TEXTS):
        raise ValueError(f"--expressions must be in [1, {len(TEXTS)}], got {args.expressions}")
    low, high = manifest.profiles["T"]["min"], manifest.profiles["T"]["max"]
    if not low <= args.frames <= high:
        raise ValueError(f"--frames {args.frames} is outside the bundle's T profile [{low}, {high}]")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    wrong = [b for b in backends if b not in BACKENDS or BACKENDS[b].runtime == "torch"]
    if wrong:
        raise ValueError(f"not ONNX runtime rows: {wrong}; choose from "
                         f"{[n for n, s in BACKENDS.items() if s.runtime != 'torch']}")  # fmt: skip
    return backends


def run_row(args: argparse.Namespace, video: Path, work: Path, name: str, expressions: int,
            budget: str, attempt: int = 0) -> dict:  # fmt: skip
    spec = BACKENDS[name]
    out = work / f"{name}-{expressions}-{budget}-{attempt}"
    argv = ["segment", "--bundle", args.bundle, "--video", str(video), "--out", str(out),
            "--backend", spec.runtime, "--precision", spec.precision, "--window",
            str(args.frames), "--threads", str(args.threads), "--memory-budget", budget,
            "--no-overlay", "--name", "clip"]  # fmt: skip
    for text in TEXTS[:expressions]:
        argv += ["--text", text]
    # Rows must not inherit each other's memory: not its RSS (a process each) and not, on a
    # virtual machine, the host still taking back what the previous row freed.
    row = {"backend": name, "expressions": expressions, "budget": budget,
           "settled_s": settle_freed_memory()}  # fmt: skip
    try:
        row |= run_in_child(segment_child, (argv,), f"budget-{name}")
    except ChildDied as error:
        return row | {"exit_code": None, "error": str(error)}
    result_path = out / "clip_result.json"
    if row["exit_code"] == 0 and result_path.is_file():
        result = json.loads(result_path.read_text())
        timings = result["timings_ms"]
        row |= {"segment_ms": timings["total"], "compile_ms": timings.get("compile", 0.0),
                "plan": result.get("memory_plan"), "windows": len(result["windows"]),
                "backend_name": result["backend"],
                "malloc_huge_pages": result.get("malloc_huge_pages")}  # fmt: skip
    log.info("%s", row)
    return row


def _work_ms(run: dict) -> float:
    """A run's segment milliseconds without its compiles for new shapes."""
    return run["segment_ms"] - run.get("compile_ms", 0.0)


def median_row(runs: list[dict]) -> dict:
    """One row from its repeated runs: the run of median time (compiles left out; the lower of
    the two middle ones for an even count), with the highest peak of all and every run's
    seconds and peak under ``runs``; a row with a failed run is reported by that run."""
    failed = [run for run in runs if run.get("exit_code") != 0 or "segment_ms" not in run]
    if failed:
        return failed[0]
    middle = statistics.median_low(_work_ms(run) for run in runs)
    row = dict(next(run for run in runs if _work_ms(run) == middle))
    row["peak_rss_mb"] = max(run["peak_rss_mb"] for run in runs)
    row["runs"] = [{key: run.get(key) for key in ("segment_ms", "compile_ms", "peak_rss_mb",
                                                   "settled_s")} for run in runs]  # fmt: skip
    return row


def format_markdown(results: dict) -> str:
    machine = results["machine"]
    setting = results["setting"]
    lines = [
        f"# Memory budget — {results['bundle']}",
        "",
        (f"{cpu_line(machine)}; {setting['threads']} "
         f"threads. `python -m runtime segment` on a {setting['frames']}-frame synthetic mp4 at "
         f"the bundle's size, window {setting['frames']}, each run in a process of its own: "
         "peak RSS (loading included) and the segment's own time (not loading), of which "
         "compiling for new input shapes (OpenVINO); the ratios leave the compiles out. "
         "malloc with transparent huge pages in "
         f"{sum(bool(r.get('malloc_huge_pages')) for r in results['rows'])} of "
         f"{len(results['rows'])} rows (`runtime.allocator`); each run started once the "
         "machine had handed the previous run's freed memory back (`settled_s`)."
         + (f" Each row is the median of {setting['repeat']} runs made in rounds (its peak "
            "the highest); every run's seconds, compiles left out, in the last column."
            if setting.get("repeat", 1) > 1 else "")),
        "",
        ("| backend | E | budget | peak RSS GiB | segment s | of it compile s | plan | windows "
         "| vs same E, no budget | vs E = 1 | runs s |"),
        "|---|---:|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    rows = results["rows"]
    for row in rows:
        head = f"| {row['backend']} | {row['expressions']} | {row['budget']} |"
        if row.get("exit_code") != 0 or "segment_ms" not in row:
            reason = row.get("error", f"exit code {row.get('exit_code')}")
            lines.append(f"{head} – | – | – | {reason} | – | – | – | – |")
            continue
        plan = row.get("plan")
        plan_text = (f"{plan['mode']}, T {plan['window']}, {plan['expression_group']} per call"
                     if plan else "none")  # fmt: skip
        same = _seconds(rows, row["backend"], row["expressions"], "off")
        single = _seconds(rows, row["backend"], 1, "off")
        seconds, compiling = row["segment_ms"] / 1e3, row.get("compile_ms", 0.0) / 1e3
        work = seconds - compiling
        lines.append(f"{head} {row['peak_rss_mb'] / 1024:.2f} | {seconds:.1f} | {compiling:.1f} | "
                     f"{plan_text} | {row['windows']} | {_ratio(work, same)} | "
                     f"{_ratio(work, single)} | "
                     + ", ".join(f"{_work_ms(run) / 1e3:.1f}" for run in row.get("runs", [row]))
                     + " |")  # fmt: skip
    lines += ["", f"Command: `{results['command']}`", ""]
    return "\n".join(lines)


def _seconds(rows: list[dict], backend: str, expressions: int, budget: str) -> float | None:
    """The segment seconds of that row, compiles for new shapes left out."""
    for row in rows:
        if (row["backend"], row["expressions"], row["budget"]) == (backend, expressions, budget):
            if "segment_ms" not in row:
                return None
            return _work_ms(row) / 1e3
    return None


def _ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.2f}x" if reference else "–"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from runtime.manifest import Manifest

    manifest = Manifest.load(args.bundle)
    backends = check_args(args, manifest)
    with tempfile.TemporaryDirectory(prefix="proxyformer-budget-") as folder:
        work = Path(folder)
        video = write_synthetic_mp4(work / "clip.mp4", args.frames, tuple(manifest.size),
                                    args.seed)  # fmt: skip
        # The rows run the command in spawned children (``segment_child``), which start with
        # the malloc tunable ``python -m runtime`` restarts itself with (runtime.allocator).
        keys = [(name, expressions, budget) for name in backends
                for expressions, budget in ((1, "off"), (args.expressions, "off"),
                                            (args.expressions, args.budget))]  # fmt: skip
        runs: dict[tuple, list[dict]] = {key: [] for key in keys}
        with huge_pages_in_children():
            for _ in range(args.repeat):  # rounds: a slow spell falls on every row alike
                for key in keys:
                    runs[key].append(run_row(args, video, work, *key, len(runs[key])))
        rows = [median_row(runs[key]) for key in keys]
    results = {
        **run_record("benchmarks/budget.py", argv),
        "bundle": args.bundle,
        "setting": {
            "frames": args.frames,
            "expressions": args.expressions,
            "budget": args.budget,
            "threads": args.threads,
            "repeat": args.repeat,
        },
        "rows": rows,
    }
    save_results(results, args.out, f"budget-{args.tag or Path(args.bundle).name}",
                 format_markdown(results))  # fmt: skip
    return results


if __name__ == "__main__":
    main()
