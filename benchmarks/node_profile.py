"""Node time by operator type for one call of a row: onnxruntime's profiler on the ORT rows,
OpenVINO's per-node counters (``PERF_COUNT``) on the OpenVINO rows.

OpenVINO's operator type is its layer type and the kernel that ran it, e.g. ``FullyConnected
(brgemm_avx512_amx_bf16)``: whether a GEMM ran on AMX, in BF16 or fell back to f32 is the first
thing a slow row needs to be asked.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from benchmarks.runners import open_runner
from runtime.manifest import Manifest


def _last_run(events: list[dict]) -> tuple[float, float] | None:
    """(start, end) in microseconds of the trace's last ``model_run``; None without one."""
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    if not runs:
        return None
    return runs[-1]["ts"], runs[-1]["ts"] + runs[-1]["dur"]


def _kernels(events: list[dict], window: tuple[float, float]) -> Iterator[tuple[str, str, float]]:
    """(node, op type, ms) of every kernel that started inside ``window``."""
    begin, end = window
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        if begin <= event["ts"] <= end:
            node = event["name"].removesuffix("_kernel_time")
            yield node, event.get("args", {}).get("op_name", "?"), event["dur"] / 1e3


def ort_trace_nodes(
    profile_files: dict[str, str | Path],
) -> dict[str, list[tuple[str, str, float]]]:
    """graph -> (node, op type, ms) of the last run in each onnxruntime profile JSON."""
    nodes = {}
    for graph, path in profile_files.items():
        events = json.loads(Path(path).read_text())
        window = _last_run(events)
        if window is not None:
            nodes[graph] = list(_kernels(events, window))
    return nodes


def op_time_table(graph_nodes: dict[str, list[tuple[str, str, float]]], top: int = 15) -> dict:
    """Node time by operator type.

    Args:
        graph_nodes: graph name -> (node, op type, ms) of one call.
        top: how many operator types (and single nodes) to keep.

    Returns:
        ``{"op_types": [{"op_type", "calls", "ms", "percent"}], "top_nodes": [...],
        "graph_ms": {graph: node ms}, "total_ms"}``, sorted by time.
    """
    by_type: dict[str, list[float]] = {}
    nodes: list[dict] = []
    graph_ms: dict[str, float] = {}
    for graph, kernels in graph_nodes.items():
        graph_ms[graph] = 0.0
        for node, op_type, ms in kernels:
            entry = by_type.setdefault(op_type, [0, 0.0])
            entry[0] += 1
            entry[1] += ms
            graph_ms[graph] += ms
            nodes.append({"graph": graph, "node": node, "op_type": op_type, "ms": ms})
    total = sum(ms for _, ms in by_type.values())
    rows = [
        {"op_type": op, "calls": calls, "ms": ms, "percent": 100 * ms / total if total else 0.0}
        for op, (calls, ms) in sorted(by_type.items(), key=lambda item: -item[1][1])
    ]
    nodes.sort(key=lambda node: -node["ms"])
    return {"op_types": rows[:top], "top_nodes": nodes[:top], "graph_ms": graph_ms,
            "total_ms": total}  # fmt: skip


def _profiled_call(name: str, manifest: Manifest, feeds: dict[str, np.ndarray], threads: int,
                   profile_dir: str | Path, read: str) -> dict:  # fmt: skip
    """A row opened with profiling on, one warm-up and one profiled call; then each graph's
    backend's ``read`` method (its profile) by graph name."""
    runner, _ = open_runner(name, manifest, None, "cpu", threads, profile_dir=profile_dir)
    try:
        runner(feeds)
        runner(feeds)
        return {
            "text_encoder": getattr(runner.text_backend, read)(),
            "video": getattr(runner.video_backend, read)(),
        }
    finally:
        runner.close()


def profile_ort(
    name: str,
    manifest: Manifest,
    feeds: dict[str, np.ndarray],
    threads: int,
    out_dir: Path,
    tag: str,
    top: int = 15,
) -> dict:
    """One profiled call (after one warm-up) of an ORT row; per-op-type table of its nodes.

    The raw traces are kept in ``out_dir/profiles/``.
    """
    with tempfile.TemporaryDirectory(prefix="ort-profile-") as work:
        traces = _profiled_call(name, manifest, feeds, threads, work, "end_profiling")
        table = op_time_table(ort_trace_nodes(traces), top)
        keep = out_dir / "profiles"
        keep.mkdir(parents=True, exist_ok=True)
        table["files"] = {}
        for graph, trace in traces.items():
            target = keep / f"latency-{tag}-{name}-{graph}.json"
            shutil.move(trace, target)
            table["files"][graph] = str(target)
    return table


def profile_openvino(
    name: str,
    manifest: Manifest,
    feeds: dict[str, np.ndarray],
    threads: int,
    out_dir: Path,
    tag: str,
    top: int = 15,
) -> dict:
    """One profiled call (after one warm-up) of an OpenVINO row; per-op-type table of its
    nodes, the op type being OpenVINO's layer type with its kernel. Every node's time is kept
    in ``out_dir/profiles/latency-<tag>-<name>.json``."""
    infos = _profiled_call(name, manifest, feeds, threads, out_dir, "profiling_info")
    table = op_time_table(
        {
            graph: [(i["node"], f"{i['layer_type']} ({i['exec_type']})", i["ms"]) for i in nodes]
            for graph, nodes in infos.items()
        },
        top,
    )
    keep = out_dir / "profiles"
    keep.mkdir(parents=True, exist_ok=True)
    target = keep / f"latency-{tag}-{name}.json"
    target.write_text(json.dumps(infos, indent=1))
    table["files"] = {"nodes": str(target)}
    table["runtime"] = "OpenVINO"
    return table
