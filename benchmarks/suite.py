"""One latency benchmark: every backend row timed on one bundle, one after another (so ratios
compare like with like), each in a child process of its own by default (``benchmarks.isolate``:
its peak RSS is its own), then the targets, the optional onnxruntime profiles and the files
(``benchmarks.report``)."""

from __future__ import annotations

import logging
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.gemm import gemm_peaks, peak_for
from benchmarks.isolate import gflops_in_child, measure_in_child
from benchmarks.machine import cpu_count, is_busy, load_average, machine_info, package_versions
from benchmarks.node_profile import profile_openvino, profile_ort
from benchmarks.report import RESULTS_DIR, device_label, write_outputs
from benchmarks.runners import (
    DEFAULT_BACKENDS,
    SkipBackend,
    expand_backends,
    open_runner,
    resolve_torch_device,
)
from benchmarks.targets import PAPER, evaluate_targets, p50_of
from benchmarks.timing import time_runner
from benchmarks.workload import (
    clip_e_sweep,
    clip_text_length,
    count_gflops,
    load_baseline_model,
    make_feeds,
    resolve_axis,
)
from proxyformer.model import ProxyFormer
from runtime.backends import available_backends
from runtime.manifest import Manifest

log = logging.getLogger(__name__)

NOTES = [
    "backends are timed one after another (not interleaved)",
    "ORT rows run onnxruntime's CPU execution provider; trt rows run on the GPU",
    "FP16 graphs on a CPU are held against the BF16 GEMM peak (no FP16 GEMM on CPU)",
    (
        "torch rows run the export wrappers (TextGraph + VideoGraph), eager, BF16 autocast "
        "(FP16 on CUDA) or torch.compile'd (compile time excluded, reported as compile_s); "
        "'× vs best torch' is against the fastest of them"
    ),
    (
        "INT8 graphs keep float ops (softmax, layer norm, ...); % of the INT8 peak is "
        "a lower bound on the quantized GEMMs' efficiency"
    ),
]

ISOLATION_NOTES = {
    True: (
        "each row ran in a child process of its own (spawn); peak RSS is that process's "
        "VmHWM: the interpreter, the inputs, the backend (and the model for torch rows)"
    ),
    False: "every row ran in this one process (--in-process): no per-row memory is recorded",
}


@dataclass
class Workload:
    """What every row is timed on: the setting, the inputs per E and their GFLOPs."""

    setting: dict
    model: ProxyFormer | None  # the PyTorch baseline (torch rows); None once it is not needed
    feeds: dict[int, dict[str, np.ndarray]]  # E -> the inputs of one call
    gflops: dict[int, dict[str, float]]  # E -> count_gflops

    @property
    def main_e(self) -> int:
        """E of the main table."""
        return self.setting["expressions"]


def resolve_setting(
    manifest: Manifest,
    *,
    frames: int | None,
    expressions: int,
    e_sweep: Sequence[int],
    text_length: int,
    warmup: int,
    runs: int,
    threads: int,
) -> dict:
    """The run's shapes and repetitions, checked against (or clipped to) the bundle's profiles."""
    return {
        "preset": manifest.data["model"].get("name") or manifest.config.get("name"),
        "size": list(manifest.preprocessing["size"]),
        "frame_format": manifest.preprocessing["frame_format"],
        "frames": resolve_axis(manifest, "T", frames, "frames"),
        "expressions": resolve_axis(manifest, "E", expressions, "expressions"),
        "text_length": clip_text_length(manifest, text_length),
        "e_sweep": clip_e_sweep(manifest, e_sweep),
        "warmup": warmup,
        "runs": runs,
        "threads": threads,
    }


def default_tag(setting: dict) -> str:
    """``<preset>-<H>x<W>-t<T>-e<E>``."""
    height, width = setting["size"]
    return f"{setting['preset']}-{height}x{width}-t{setting['frames']}-e{setting['expressions']}"


def _warn_if_busy(machine: dict, threads: int) -> None:
    if is_busy(machine["load_average_start"]):
        log.warning(
            "load average %.2f before the benchmark: other processes are running, and with "
            "%d threads on %d cores their contention can inflate timings many times over",
            machine["load_average_start"], threads, machine["cores"],
        )  # fmt: skip


def workload_feeds(manifest: Manifest, setting: dict) -> dict[int, dict[str, np.ndarray]]:
    """The inputs of one call at every E the run times (the main E and the sweep)."""
    shapes = sorted({setting["expressions"], *setting["e_sweep"]})
    return {e: make_feeds(manifest, setting["frames"], e, setting["text_length"]) for e in shapes}


def prepare_workload(manifest: Manifest, setting: dict, torch_device: str) -> Workload:
    """The baseline model, the inputs of every E the run times and their GFLOPs."""
    model = load_baseline_model(manifest, torch_device)
    feeds = workload_feeds(manifest, setting)
    gflops = {
        e: count_gflops(model, setting["frame_format"], feeds[e], torch_device) for e in feeds
    }
    log.info("GFLOPs per call: %s", {e: round(g["total"], 2) for e, g in gflops.items()})
    return Workload(setting, model, feeds, gflops)


def _timed_row(description: dict, main: dict, workload: Workload, peaks: dict) -> dict:
    """A timed row's fields: the main E's latency, GFLOP/s and the fraction of the peak."""
    gflops = workload.gflops[workload.main_e]["total"]
    achieved = gflops / (main["total"]["p50"] / 1e3)
    peak, peak_name = peak_for(peaks, description["device"], description["arithmetic"])
    return {
        "status": "timed",
        "latency": {k: main[k] for k in ("total", "text", "video")},
        "times_ms": main["times_ms"],
        "gflops": gflops,
        "gflops_per_s": achieved,
        "peak": peak_name,
        "peak_gflops_per_s": peak,
        "fraction_of_peak": achieved / peak if peak else None,
    }


def _sweep_entries(measured: dict[int, dict], workload: Workload) -> list[dict]:
    """The E sweep of one row, each E's p50 also as a ratio to the first E's."""
    sweep = workload.setting["e_sweep"]
    base = measured[sweep[0]]["total"]["p50"]
    return [
        {
            "expressions": e,
            "p50": measured[e]["total"]["p50"],
            "p90": measured[e]["total"]["p90"],
            "spread": measured[e]["total"]["spread"],
            "text_p50": measured[e]["text"]["p50"],
            "video_p50": measured[e]["video"]["p50"],
            "ratio_to_first": measured[e]["total"]["p50"] / base,
            "gflops": workload.gflops[e]["total"],
        }
        for e in sweep
    ]


def measure_backend(
    name: str,
    manifest: Manifest,
    workload: Workload,
    peaks: dict,
    torch_device: str,
    status: dict[str, str],
) -> tuple[dict, list[dict] | None]:
    """Time one row at every E of the workload.

    Returns:
        (the row: timed, skipped or failed with the reason; its E sweep, None unless timed
        with a sweep).
    """
    setting = workload.setting
    row: dict[str, Any] = {"backend": name}
    try:
        runner, description = open_runner(
            name, manifest, workload.model, torch_device, setting["threads"], status
        )
    except SkipBackend as error:
        log.info("%s skipped: %s", name, error)
        return row | {"status": "skipped", "reason": str(error)}, None
    row |= description | {"name": runner.name}
    measured: dict[int, dict] = {}
    try:
        for e, feeds in workload.feeds.items():
            measured[e] = time_runner(
                runner, feeds, setting["warmup"], setting["runs"], f"{name} E={e}"
            )
    except Exception as error:  # one failure must not lose the other rows
        log.exception("%s failed", name)
        return row | {"status": "failed", "reason": f"{type(error).__name__}: {error}"}, None
    finally:
        runner.close()
    row |= _timed_row(description, measured[workload.main_e], workload, peaks)
    compile_seconds = getattr(runner, "compile_seconds", None)
    if compile_seconds:  # torch.compile: compiling is reported, never timed
        row["compile_s"] = compile_seconds
    log.info("%s: p50 %.2f ms", name, row["latency"]["total"]["p50"])
    return row, _sweep_entries(measured, workload) if setting["e_sweep"] else None


def best_torch_row(rows: list[dict]) -> dict | None:
    """The fastest timed PyTorch row (eager, BF16 autocast or compiled), or None."""
    timed = [r for r in rows if r["status"] == "timed" and r.get("runtime") == "torch"]
    return min(timed, key=p50_of) if timed else None


def add_speedups(rows: list[dict]) -> str | None:
    """Each timed row's speed-up over (and time ratio to) the torch row (FP32 eager), its
    speed-up over the best PyTorch row of the run and over onnxruntime FP32 (the "ort" row);
    returns the best PyTorch row's name."""
    torch_p50 = p50_of(next((r for r in rows if r["backend"] == "torch"), None))
    ort_p50 = p50_of(next((r for r in rows if r["backend"] == "ort"), None))
    best = best_torch_row(rows)
    best_p50 = p50_of(best)
    for row in rows:
        if row["status"] == "timed":
            p50 = row["latency"]["total"]["p50"]
            row["speedup_vs_torch"] = torch_p50 / p50 if torch_p50 else None
            row["time_ratio_vs_torch"] = p50 / torch_p50 if torch_p50 else None
            row["speedup_vs_best_torch"] = best_p50 / p50 if best_p50 else None
            row["speedup_vs_ort"] = ort_p50 / p50 if ort_p50 else None
    return best["backend"] if best else None


def profile_rows(
    rows: list[dict], manifest: Manifest, workload: Workload, out_dir: Path, tag: str
) -> dict[str, dict]:
    """Per-op-type tables of every timed onnxruntime and OpenVINO row
    (``benchmarks.node_profile``)."""
    profilers = {"onnxruntime": profile_ort, "openvino": profile_openvino}
    profiles = {}
    for row in rows:
        if row["status"] == "timed" and row["runtime"] in profilers:
            log.info("profiling %s", row["backend"])
            profiles[row["backend"]] = profilers[row["runtime"]](
                row["backend"], manifest, workload.feeds[workload.main_e],
                workload.setting["threads"], out_dir, tag,
            )  # fmt: skip
    return profiles


def bundle_summary(manifest: Manifest, preset: str) -> dict:
    """The bundle the rows ran: path, checkpoint or seed, profiles, precisions, ONNX hashes."""
    files, model = manifest.data["files"], manifest.data["model"]
    return {
        "path": str(manifest.root),
        "preset": preset,
        "checkpoint": model.get("checkpoint"),
        "random_weights_seed": model.get("random_weights_seed"),
        "profiles": manifest.profiles,
        "precisions": {g: manifest.precisions(g) for g in ("text_encoder", "video")},
        "video_onnx_sha256": files.get("video.onnx", {}).get("sha256"),
        "text_encoder_onnx_sha256": files.get("text_encoder.onnx", {}).get("sha256"),
    }


def paper_summary(rows: list[dict], machine: dict) -> dict:
    """The paper's figure beside the fastest row measured here."""
    timed = [r for r in rows if r["status"] == "timed"]
    fastest = min(timed, key=p50_of) if timed else None
    return PAPER | {
        "measured_device": device_label(fastest, machine) if fastest else None,
        "measured_best_p50_ms": p50_of(fastest),
        "measured_best_backend": fastest["backend"] if fastest else None,
    }


def run_benchmark(
    bundle: str | Path,
    backends: Sequence[str] = DEFAULT_BACKENDS,
    *,
    frames: int | None = None,
    expressions: int = 1,
    e_sweep: Sequence[int] = (1, 2, 4),
    text_length: int = 20,
    warmup: int = 3,
    runs: int = 10,
    threads: int | None = None,
    torch_device: str = "auto",
    profile: bool = False,
    gemm_size: int = 2048,
    out_dir: str | Path | None = None,
    tag: str | None = None,
    write: bool = True,
    command: str | None = None,
    isolate: bool = True,
) -> dict:
    """Time every backend on one bundle; write JSON, markdown and a plot.

    Args:
        bundle: the bundle directory.
        backends: rows, keys of ``BACKENDS`` ("ort-int8" adds "ort-int8-trt" when present).
        frames: T (default: the bundle's profile opt; must be inside the profile).
        expressions: E of the main table.
        e_sweep: the E values timed for the sweep (clipped to the bundle's E profile).
        text_length: L, clipped to the bundle's L profile.
        warmup, runs: untimed and timed calls per backend and shape.
        threads: torch and onnxruntime intra-op threads (default: all cores); sets
            ``torch.set_num_threads`` for the process.
        torch_device: "auto", "cpu" or "cuda[:i]" for the PyTorch row.
        profile: profile the ORT rows once with onnxruntime's profiler.
        gemm_size: n of the CPU GEMM peak measurements.
        out_dir: where the files go (default ``benchmarks/results/<machine>``).
        tag: file name tag (default ``<preset>-<H>x<W>-t<T>-e<E>``).
        write: write the files (the results are returned either way).
        command: the command line to record (default: ``sys.argv``).
        isolate: time each row in a child process of its own and record its peak RSS
            (``benchmarks.isolate``); False times every row in this process, without memory.

    Returns:
        The results dict that is written as JSON.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    started = time.perf_counter()
    manifest = Manifest.load(bundle)
    threads = int(threads or cpu_count())
    torch.set_num_threads(threads)
    torch_device = resolve_torch_device(torch_device)
    setting = resolve_setting(
        manifest, frames=frames, expressions=expressions, e_sweep=e_sweep,
        text_length=text_length, warmup=warmup, runs=runs, threads=threads,
    )  # fmt: skip
    setting["isolated"] = isolate
    names = expand_backends(backends, manifest)
    machine = machine_info(torch_device)
    tag = tag or default_tag(setting)
    out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR / machine["slug"]
    log.info("benchmark %s on %s (%s), %d threads", tag, machine["cpu"],
             machine["gpu"] or "no GPU", threads)  # fmt: skip
    _warn_if_busy(machine, threads)

    peaks = gemm_peaks(threads, gemm_size, cuda=torch.device(torch_device).type == "cuda")
    if isolate:  # the model only in children: counting GFLOPs runs it (~10 GB at paper size)
        gflops = gflops_in_child(manifest.root, setting, torch_device)
        workload = Workload(setting, None, workload_feeds(manifest, setting), gflops)
    else:
        workload = prepare_workload(manifest, setting, torch_device)
    status = available_backends()
    rows: list[dict] = []
    sweep_results: dict[str, list[dict]] = {}
    for name in names:
        if isolate:
            row, sweep = measure_in_child(
                name, manifest.root, setting, workload.gflops, peaks, torch_device, status
            )
        else:
            row, sweep = measure_backend(name, manifest, workload, peaks, torch_device, status)
        rows.append(row)
        if sweep is not None:
            sweep_results[name] = sweep
    best_torch = add_speedups(rows)
    targets = evaluate_targets(rows, sweep_results, setting, peaks)
    profiles = profile_rows(rows, manifest, workload, out_dir, tag) if profile else {}
    results = {
        "command": command if command is not None else shlex.join([sys.executable, *sys.argv]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "versions": package_versions(),
        "bundle": bundle_summary(manifest, setting["preset"]),
        "setting": setting,
        "gflops": {str(e): g for e, g in workload.gflops.items()},
        "peaks": peaks,
        "backends": rows,
        "best_torch": best_torch,
        "e_sweep": sweep_results,
        "targets": targets,
        "paper": paper_summary(rows, machine),
        "profiles": profiles,
        "notes": list(NOTES) + [ISOLATION_NOTES[isolate]],
        "seconds": time.perf_counter() - started,
    }
    machine["load_average_end"] = load_average()
    if write:
        write_outputs(results, out_dir, tag)
    return results
