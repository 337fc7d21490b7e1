"""Time of one training step, split into its phases, for any ``training/train.py`` recipe.

    python benchmarks/train_step.py --steps 20 --tag tiny-recipe -- \\
        --preset tiny --data data/synth --batch-size 4 --num-frames 4 --train-scales 128 \\
        --pair-expressions --cls-target iou --workers 0

Everything after ``--`` is a ``training/train.py`` command line: the benchmark builds the same
``Trainer`` (model, data loader, criterion, optimizer), runs ``--warmup`` steps, then times
``--steps`` optimizer steps phase by phase: data (the loader's next batch), forward, loss,
backward, optimizer (clipping and AdamW). On CUDA every phase ends with a synchronisation, so
the split is exact but the total is a little above an unsynchronised run's. Nothing is saved
to the run directory (a temporary one unless ``--out`` is given after ``--``). Writes JSON and
a markdown table to ``benchmarks/results/<machine>/train-step-<tag>.*`` and prints the table.
Single process only (no ``torchrun``).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.machine import load_average, machine_info
from benchmarks.report import RESULTS_DIR
from benchmarks.timing import synchronize

ROOT = Path(__file__).resolve().parents[1]  # the repository whose commit is recorded

log = logging.getLogger("train_step")

PHASES = ("data", "forward", "loss", "backward", "optimizer")


def time_steps(trainer, steps: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per phase for ``steps`` optimizer steps after ``warmup`` untimed ones (one
    micro-batch per step: ``--accumulate`` is not supported here)."""
    from training.losses import outputs_to_float

    if trainer.config.accumulate != 1:
        raise ValueError("time one micro-batch per step: leave --accumulate at 1")
    device = trainer.device

    def sync() -> None:
        synchronize(device)

    trainer.model.train()  # as Trainer.train
    times: dict[str, list[float]] = {phase: [] for phase in PHASES}
    batches = iter(trainer.loader)
    for step in range(warmup + steps):
        marks = [time.perf_counter()]
        try:
            batch = next(batches)
        except StopIteration:  # an epoch ended: the next one, as training does
            trainer.sampler.set_epoch(trainer.sampler.epoch + 1)
            trainer.dataset.set_epoch(trainer.sampler.epoch)
            batches = iter(trainer.loader)
            batch = next(batches)
        frames, ids, mask, targets = trainer._to_device(batch)  # as Trainer._micro_step
        sync()
        marks.append(time.perf_counter())
        with trainer._autocast():
            outputs = trainer.ddp_model(frames, ids, mask)
        outputs = outputs_to_float(outputs)
        sync()
        marks.append(time.perf_counter())
        losses = trainer.criterion(outputs, targets)
        sync()
        marks.append(time.perf_counter())
        trainer.scaler.scale(losses["loss"]).backward()
        sync()
        marks.append(time.perf_counter())
        trainer._optimizer_step()
        sync()
        marks.append(time.perf_counter())
        if step >= warmup:
            for phase, start, end in zip(PHASES, marks[:-1], marks[1:]):
                times[phase].append(end - start)
    return times


def summarize(times: dict[str, list[float]]) -> dict:
    totals = [sum(values) for values in zip(*times.values())]
    median_total = statistics.median(totals)
    rows = {
        phase: {
            "median_ms": 1000 * statistics.median(values),
            "mean_ms": 1000 * statistics.fmean(values),
            "share": statistics.fmean(values) / statistics.fmean(totals),
        }
        for phase, values in times.items()
    }
    return {
        "phases": rows,
        "step_median_ms": 1000 * median_total,
        "step_mean_ms": 1000 * statistics.fmean(totals),
        "step_p90_ms": 1000 * sorted(totals)[int(0.9 * (len(totals) - 1))],
        "steps_per_s": 1.0 / median_total,
    }


def markdown(report: dict) -> str:
    summary = report["summary"]
    lines = [
        f"Training step, {report['tag']}: {report['steps']} steps after {report['warmup']} "
        f"warm-up, {report['machine']['cpu']} ({report['machine']['cores']} cores"
        + (f", {report['machine']['gpu']}" if report["machine"]["gpu"] else "")
        + f"), torch {report['torch']}, {report['threads']} threads",
        "",
        "| phase | median ms | mean ms | share |",
        "|---|---:|---:|---:|",
    ]
    for phase, row in summary["phases"].items():
        share = 100 * row["share"]
        lines.append(f"| {phase} | {row['median_ms']:.1f} | {row['mean_ms']:.1f} | {share:.0f} % |")
    lines.append(
        f"| **step** | **{summary['step_median_ms']:.1f}** | {summary['step_mean_ms']:.1f} | "
        f"p90 {summary['step_p90_ms']:.1f} ms, {summary['steps_per_s']:.2f} steps/s |"
    )
    return "\n".join(lines) + "\n"


def code_version() -> dict:
    """The commit of the code being timed and whether tracked files differ from it."""
    import subprocess

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or None
    return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        split = argv.index("--")
        own, train_args = argv[:split], argv[split + 1 :]
    else:
        own, train_args = argv, []
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--tag", default="run", help="name of the result files")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=RESULTS_DIR,
        help="results go to OUT_DIR/<machine>/train-step-<tag>.{json,md}",
    )
    args = parser.parse_args(own)
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0, got {args.steps}, {args.warmup}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    from training.train import parse_args as parse_train_args
    from training.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="train-step-") as scratch:
        if "--out" not in train_args:
            train_args = [*train_args, "--out", scratch]
        config = parse_train_args(train_args)
        trainer = Trainer(config)
        machine = machine_info(str(trainer.device))
        log.info("timing %d steps after %d warm-up steps", args.steps, args.warmup)
        times = time_steps(trainer, args.steps, args.warmup)
    report = {
        "tag": args.tag,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "code": code_version(),
        "machine": machine | {"load_average_end": load_average()},
        "train_config": json.loads(json.dumps(config.to_dict(), default=str)),
        "summary": summarize(times),
        "seconds": times,
    }
    table = markdown(report)
    out = args.out_dir / machine["slug"]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"train-step-{args.tag}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"train-step-{args.tag}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
