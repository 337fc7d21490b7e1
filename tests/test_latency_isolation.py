"""Latency rows in processes of their own (benchmarks.isolate): each row's peak RSS is its own,
a row whose process dies is reported as failed with the signal, and the targets that compare
memory and speed near the machine's limit are judged from those rows."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from benchmarks.isolate import measure_in_child
from benchmarks.report import format_markdown
from benchmarks.suite import run_benchmark
from benchmarks.targets import evaluate_targets
from runtime.backends import available_backends
from runtime.child import death_reason


@pytest.fixture(scope="module")
def isolated(tiny_bundle) -> dict:
    return run_benchmark(
        tiny_bundle, ["torch", "ort", "trt-fp16"], e_sweep=(1,), warmup=0, runs=2,
        torch_device="cpu", gemm_size=256, write=False, command="pytest",
    )  # fmt: skip


def test_rows_record_their_own_peak_memory(isolated):
    rows = {row["backend"]: row for row in isolated["backends"]}
    assert isolated["setting"]["isolated"] is True
    for name in ("torch", "ort"):
        memory = rows[name]["memory"]
        assert rows[name]["status"] == "timed", rows[name].get("reason")
        assert memory["process"] == "child (spawn)"
        # The backend and its calls come on top of what the process held before opening it.
        assert 0 < memory["rss_before_open_mb"] <= memory["peak_rss_mb"]
    # The torch row's process holds the model; the ort row's never imports it into memory.
    assert (
        rows["torch"]["memory"]["rss_before_open_mb"] > rows["ort"]["memory"]["rss_before_open_mb"]
    )
    assert rows["trt-fp16"]["status"] == "skipped" and "memory" not in rows["trt-fp16"]
    markdown = format_markdown(isolated)
    assert "peak RSS GB |" in markdown and "process of its own" in markdown
    assert "× vs ort |" in markdown
    assert rows["ort"]["speedup_vs_ort"] == pytest.approx(1.0)


def _spawned_children(pid: int) -> list[int]:
    """The multiprocessing ``spawn`` children of ``pid`` (not its resource tracker), found by
    their parent pid in ``/proc/<pid>/stat``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):  # gone meanwhile
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # the fields after "(comm)": state ppid
        if parent == pid and b"spawn_main" in command:
            found.append(int(entry.name))
    return found


def test_a_row_whose_process_dies_is_failed_with_the_signal(tiny_bundle):
    """Kill the row's process for real (as the OOM killer would); the run goes on and the row
    names the signal."""
    setting = {"frames": 3, "expressions": 1, "text_length": 12, "e_sweep": [], "warmup": 0,
               "runs": 100000, "threads": 1}  # fmt: skip
    gflops = {1: {"text": 0.1, "video": 0.1, "total": 0.2}}
    peaks = {"cpu": {"fp32": {"gflops": 1.0}}}
    before = set(_spawned_children(os.getpid()))
    result: dict = {}

    def run() -> None:
        result["row"] = measure_in_child(
            "ort", tiny_bundle, setting, gflops, peaks, "cpu", available_backends()
        )

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    new: list[int] = []
    while not new and time.monotonic() < deadline:
        time.sleep(0.2)
        new = [pid for pid in _spawned_children(os.getpid()) if pid not in before]
    assert new, "the row's process never started"
    time.sleep(3)  # let it get into its timed calls
    for pid in new:
        os.kill(pid, signal.SIGKILL)
    thread.join(timeout=120)
    row, sweep = result["row"]
    assert row["status"] == "failed" and sweep is None
    assert "SIGKILL" in row["reason"] and "out of memory" in row["reason"]


def test_death_reasons():
    assert "SIGSEGV" in death_reason(-signal.SIGSEGV)
    assert "exited with code 3" in death_reason(3)


def _row(name: str, runtime: str, p50: float, rss: float | None = None, gflops_s: float = 1.0):
    row = {"backend": name, "status": "timed", "device": "cpu", "runtime": runtime,
           "latency": {"total": {"p50": p50}}, "gflops_per_s": gflops_s}  # fmt: skip
    if rss is not None:
        row["memory"] = {"peak_rss_mb": rss}
    return row


SETTING = {"preset": "paper-swin-t", "frames": 19, "size": [360, 640]}


def test_near_limit_targets_with_amx():
    rows = [
        _row("torch", "torch", 28000.0),
        _row("torch-bf16", "torch", 16000.0),
        _row("ort", "onnxruntime", 18000.0, rss=21000.0),
        _row("ov-bf16", "openvino", 4000.0, rss=3300.0, gflops_s=600.0),
    ]
    peaks = {"cpu_flags": {"amx_bf16": True}, "cpu": {"bf16": {"gflops": 2000.0}}}
    targets = {t["name"]: t for t in evaluate_targets(rows, {}, SETTING, peaks)["targets"]}
    assert targets["best_cpu_vs_ort_fp32"]["value"] == pytest.approx(4.5)
    assert targets["best_cpu_vs_ort_fp32"]["threshold"] == 6.0
    assert targets["best_cpu_vs_ort_fp32"]["passed"] is False
    assert targets["best_cpu_vs_best_torch"]["value"] == pytest.approx(4.0)
    assert targets["best_cpu_vs_best_torch"]["passed"] is True
    assert targets["best_cpu_fraction_of_bf16_peak"]["value"] == pytest.approx(0.3)
    assert targets["best_cpu_fraction_of_bf16_peak"]["passed"] is True
    assert targets["best_cpu_rss_vs_ort_fp32"]["value"] == pytest.approx(3300 / 21000)
    assert targets["best_cpu_rss_vs_ort_fp32"]["passed"] is True
    assert {t["backend"] for t in targets.values() if t["name"].startswith("best_")} == {"ov-bf16"}


def test_near_limit_targets_without_amx_and_without_memory():
    rows = [_row("ort", "onnxruntime", 10.0), _row("ov", "openvino", 5.0)]
    targets = {t["name"]: t for t in evaluate_targets(rows, {}, SETTING, {})["targets"]}
    assert "best_cpu_vs_best_torch" not in targets  # AMX-only targets
    assert targets["best_cpu_vs_ort_fp32"]["threshold"] == 1.5
    assert targets["best_cpu_vs_ort_fp32"]["passed"] is True  # 2x
    rss = targets["best_cpu_rss_vs_ort_fp32"]
    assert rss["passed"] is None and "peak RSS" in rss["reason"]
    none = evaluate_targets([_row("torch", "torch", 1.0)], {}, SETTING, {})["targets"]
    assert all(t["passed"] is None for t in none if t["name"].startswith("best_cpu"))
