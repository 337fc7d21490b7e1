"""One command that turns a lent GPU machine into evidence: ``make gpu-check``.

    python -m benchmarks.gpu_check [--budget 480] [--tiny-bundle DIR] [--paper-bundle DIR]

It runs what the machine has and skips the rest, each skip with its reason:

1. ``environment``: the GPU, the driver's CUDA, the packages that are and are not installed;
2. ``tests``: the ``gpu``-marked tests (pytest);
3. ``torch``: paper-swin-t (random weights) at the paper setting, 19 frames at 360x640, E = 1
   and 4: FP32, FP16 and BF16 autocast, a CUDA graph of the FP16 call (``--compile`` adds
   ``torch.compile``); p50/p90 from CUDA events and peak GPU memory, the paper's 109 ms (an
   NVIDIA A40) beside them (``benchmarks.gpu_torch``);
4. ``train``: a paper-swin-t training step with AMP on CUDA;
5. ``onnxruntime-gpu``: the CUDA and TensorRT execution providers on the tiny bundle, against
   onnxruntime FP32 on the CPU (``benchmarks.gpu_engines``);
6. ``engines``: where ``tensorrt`` imports, the FP16 and INT8 engines of the tiny bundle and of
   the paper-swin-t bundle, run through the runtime's TensorRT backend, against onnxruntime FP32,
   and timed.

It needs only what such a machine has (PyTorch with CUDA, onnxruntime, timm, transformers,
einops, safetensors, tokenizers) and downloads nothing: a part whose packages are missing
(pytest, onnx to export a bundle, tensorrt, onnxruntime-gpu, torchvision for Video-Swin, PIL for
the synthetic calibration clips) is skipped, naming them. Bundles made elsewhere can be brought
along (``--tiny-bundle``; the tiny one is a few MB). The whole run keeps to ``--budget`` seconds
(8 minutes): a part that would start after it is skipped, saying so.

Writes ``gpu-check.json`` and ``gpu-check.md`` to ``benchmarks/results/<machine>/`` (refused if
they exist, unless ``--overwrite``) and prints the markdown. Exit status 1 when a part failed.
Only the standard library is imported at the top: this module must load anywhere.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

log = logging.getLogger("gpu_check")

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("environment", "tests", "torch", "train", "onnxruntime-gpu", "engines")
DEFAULT_BUDGET_S = 480.0  # the 8 minutes on one GPU
TESTS_CAP_S = 150.0  # the gpu tests' share, so the timings still get their turn
# Packages each part may need; "environment" reports which are here.
PACKAGES = ("torch", "torchvision", "timm", "transformers", "einops", "safetensors", "tokenizers",
            "numpy", "onnxruntime", "onnx", "tensorrt", "cuda", "pycuda", "polygraphy", "pytest",
            "tqdm", "PIL", "openvino")  # fmt: skip
NAME = "gpu-check"


class Skip(Exception):
    """A part (or a row) that cannot run here; the message is the reason in the report."""


class PartFailed(Exception):
    """A part that ran and found a problem (failed tests); carries what it measured."""


def check_deadline(deadline: float, what: str) -> None:
    """``Skip`` when the budget is spent before ``what``."""
    if time.monotonic() >= deadline:
        raise Skip(f"the time budget was spent before {what}")


def present(module: str) -> bool:
    """Whether ``module`` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# -- the parts ---------------------------------------------------------------------------------


def part_environment(args: argparse.Namespace, deadline: float) -> dict:
    info: dict = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: present(name) for name in PACKAGES},
    }
    try:
        from benchmarks.machine import package_versions

        info["versions"] = package_versions()
    except ImportError as error:
        info["versions"] = f"unknown ({error})"
    try:
        import torch
    except ImportError:
        info["cuda"] = "torch is not installed"
        return info
    info["torch_cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["compute_capability"] = f"{props.major}.{props.minor}"
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    try:
        from runtime.backends import available_backends

        info["backends"] = available_backends()
    except ImportError as error:
        info["backends"] = f"runtime.backends does not import: {error}"
    return info


def part_tests(args: argparse.Namespace, deadline: float) -> dict:
    if not present("pytest"):
        raise Skip("pytest is not installed (the dev extra); the gpu tests cannot run")
    timeout = max(10.0, min(TESTS_CAP_S, deadline - time.monotonic()))
    # -v: one line per test as it ends, so a run cut by the budget still says what passed.
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-rs", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", "tests"]  # fmt: skip
    try:
        run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                             check=False)  # fmt: skip
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout or b""
        output = output.decode(errors="replace") if isinstance(output, bytes) else output
        done = [line for line in output.splitlines() if re.search(r" (PASSED|FAILED|SKIPPED)", line)]
        raise Skip(f"the gpu tests did not finish within {timeout:.0f} s ({len(done)} ended)",
                   {"ended": done}) from None
    lines = run.stdout.splitlines()
    summary = next((line.strip("= ") for line in reversed(lines) if " in " in line), "")
    counts = {key: int(value) for value, key in re.findall(r"(\d+) (\w+)", summary)}
    reasons = sorted({m.group(1) for line in lines
                      if (m := re.match(r"SKIPPED \[\d+\] [^:]+:\d+: (.*)", line))})  # fmt: skip
    errors = [line for line in lines if line.startswith("ERROR ")]
    # A test file that imports a package this machine lacks (onnx, openvino) is not collected:
    # that is the machine's limit, reported, not a failure of the code under test.
    missing = [line for line in errors if "ModuleNotFoundError" in line]
    errors = [line for line in errors if line not in missing]
    if missing:
        reasons.append(f"{len(missing)} test files not collected: "
                       + "; ".join(line.removeprefix("ERROR ") for line in missing))  # fmt: skip
    result = {"command": " ".join(command[1:]), "returncode": run.returncode,
              "summary": summary, "counts": counts, "skip_reasons": reasons,
              "collection_errors": errors}  # fmt: skip
    if run.returncode not in (0, 1, 5) and not counts:
        # pytest stopped before running anything: tests/conftest.py imports a package this
        # machine lacks (torch, numpy), or a usage error. Its message is in the output.
        tail = "\n".join((run.stdout + run.stderr).splitlines()[-20:])
        why = next((line.strip() for line in reversed(tail.splitlines()) if "Error" in line),
                   f"exit code {run.returncode}")  # fmt: skip
        result["tail"] = tail
        if "ModuleNotFoundError" in tail or "ImportError" in tail:
            raise Skip(f"pytest could not start here: {why}", result)
        raise PartFailed(f"pytest could not start (exit code {run.returncode}): {why}", result)
    ran = counts.get("passed", 0) + counts.get("failed", 0)
    if not ran and not errors and (run.returncode in (0, 5) or missing):
        raise Skip(f"every gpu test skipped ({summary}): " + "; ".join(reasons), result)
    if counts.get("failed") or errors:
        result["tail"] = "\n".join(lines[-40:])
        raise PartFailed(f"gpu tests: {summary}", result)
    return result


def part_torch(args: argparse.Namespace, deadline: float) -> dict:
    from benchmarks.gpu_torch import time_paper_setting

    return time_paper_setting(deadline, warmup=args.warmup, runs=args.runs, compile=args.compile)


def part_train(args: argparse.Namespace, deadline: float) -> dict:
    from benchmarks.gpu_torch import train_step

    return train_step(deadline)


def part_onnxruntime_gpu(args: argparse.Namespace, deadline: float) -> dict:
    from benchmarks.gpu_engines import onnxruntime_gpu

    return onnxruntime_gpu(args, deadline)


def part_engines(args: argparse.Namespace, deadline: float) -> dict:
    from benchmarks.gpu_engines import tensorrt_engines

    return tensorrt_engines(args, deadline)


RUNNERS = {
    "environment": part_environment,
    "tests": part_tests,
    "torch": part_torch,
    "train": part_train,
    "onnxruntime-gpu": part_onnxruntime_gpu,
    "engines": part_engines,
}


def run_part(name: str, args: argparse.Namespace, deadline: float) -> dict:
    """One part as a report entry: ran, skipped (with the reason) or failed (with the error)."""
    start = time.monotonic()
    entry: dict = {"status": "ran"}
    try:
        check_deadline(deadline, f"the {name} part")
        entry["results"] = RUNNERS[name](args, deadline)
    except Skip as skip:
        entry = {"status": "skipped", "reason": str(skip.args[0])}
        if len(skip.args) > 1:
            entry["results"] = skip.args[1]
    except PartFailed as failure:
        entry = {"status": "failed", "reason": str(failure.args[0]), "results": failure.args[1]}
    except Exception as error:  # one part's error must not cost the others
        log.exception("part %s failed", name)
        entry = {"status": "failed", "reason": f"{type(error).__name__}: {error}",
                 "traceback": traceback.format_exc(limit=8)}  # fmt: skip
    entry["seconds"] = round(time.monotonic() - start, 1)
    log.info("%s: %s%s", name, entry["status"],
             f" ({entry['reason']})" if "reason" in entry else "")  # fmt: skip
    return entry


# -- the report ----------------------------------------------------------------------------------


def machine_slug() -> tuple[dict, str]:
    """The machine's description and its results folder name (``benchmarks.machine``)."""
    from benchmarks.machine import cpu_count, cpu_model
    from benchmarks.machine import machine_slug as slug

    gpu = None
    if present("torch"):
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    machine = {"cpu": cpu_model(), "cores": cpu_count(), "gpu": gpu}
    return machine, slug(machine["cpu"], machine["cores"], gpu)


def markdown(report: dict) -> str:
    from benchmarks.gpu_report import format_report

    return format_report(report)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, metavar="S",
                        help="seconds the whole check may take (default 480)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="which parts to run (default: all)")
    parser.add_argument("--tiny-bundle", type=Path, default=None, metavar="DIR",
                        help="the tiny bundle, made elsewhere (default: exported here if onnx is)")
    parser.add_argument("--paper-bundle", type=Path, default=None, metavar="DIR",
                        help="the paper-swin-t bundle (default: exported here if onnx is and "
                        "the budget allows)")
    parser.add_argument("--work", type=Path, default=None, metavar="DIR",
                        help="where bundles and engines are made (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="results folder (default benchmarks/results/<machine>)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier gpu-check.json/.md in the results folder")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile (minutes of compiling)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per row")
    parser.add_argument("--runs", type=int, default=20, help="timed calls per row")
    args = parser.parse_args(argv)  # fmt: skip
    if args.budget <= 0 or args.runs < 1 or args.warmup < 0:
        parser.error("--budget must be > 0, --runs >= 1 and --warmup >= 0")
    for option in ("tiny_bundle", "paper_bundle"):
        path = getattr(args, option)
        if path is not None and not (path / "manifest.json").is_file():
            parser.error(f"--{option.replace('_', '-')} {path}: no manifest.json there")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    machine, slug = machine_slug()
    out = args.out or ROOT / "benchmarks" / "results" / slug
    targets = [out / f"{NAME}.json", out / f"{NAME}.md"]
    existing = [str(path) for path in targets if path.exists()]
    if existing and not args.overwrite:  # checked before any work
        print(f"error: {', '.join(existing)} exist; pass --overwrite to replace them",
              file=sys.stderr)  # fmt: skip
        return 2
    started = time.monotonic()
    deadline = started + args.budget
    report = {
        "name": NAME,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python -m benchmarks.gpu_check", *(argv or sys.argv[1:])]),
        "budget_s": args.budget,
        "machine": machine | {"slug": slug},
        "parts": {},
    }
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        args.work = args.work or Path(scratch)
        for name in args.parts:
            report["parts"][name] = run_part(name, args, deadline)
    report["seconds"] = round(time.monotonic() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(report)
    targets[0].write_text(json.dumps(report, indent=2, default=str) + "\n")
    targets[1].write_text(text)
    print(text, end="")
    print(f"wrote {targets[0]} and {targets[1]}", file=sys.stderr)
    failed = [name for name, part in report["parts"].items() if part["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    # Run as benchmarks.gpu_check, not __main__: the parts raise benchmarks.gpu_check.Skip,
    # which a second copy of this module under the name __main__ would not catch.
    from benchmarks.gpu_check import main as package_main

    sys.exit(package_main())
