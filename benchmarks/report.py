"""The latency report: the results as JSON, as markdown, and (``benchmarks.plot``) as a PNG.

``format_markdown`` reads the JSON a run wrote, so the committed ``benchmarks/results/`` files
can be rendered again; it needs neither torch nor the bundle.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from benchmarks.machine import is_busy
from benchmarks.plot import write_plot

log = logging.getLogger(__name__)

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def save_results(results: dict, out: str | Path | None, name: str, markdown: str) -> Path:
    """Write ``results`` as ``<name>.json`` and ``markdown`` as ``<name>.md`` into ``out``
    (default ``benchmarks/results/<machine slug>``), print the markdown; returns the folder."""
    folder = Path(out) if out else RESULTS_DIR / results["machine"]["slug"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (folder / f"{name}.md").write_text(markdown)
    print(markdown)
    return folder


def fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    """A number for a table: ``digits`` decimals and ``suffix``, or "–" for None/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}{suffix}"


def device_label(row: dict, machine: dict) -> str:
    """Where a row ran, in words: the GPU's name or the CPU model with its cores."""
    if row.get("device") == "cuda":
        return f"GPU {machine.get('gpu') or 'cuda'}"
    return f"CPU {machine['cpu']} ({machine['cores']} cores)"


def _header(results: dict) -> list[str]:
    setting, machine = results["setting"], results["machine"]
    height, width = setting["size"]
    lines = [
        (
            f"# Latency — {setting['preset']}, {setting['frames']} frames at {height}x{width}, "
            f"E={setting['expressions']}, L={setting['text_length']}"
        ),
        "",
        f"Device: CPU {machine['cpu']} ({machine['cores']} cores, {setting['threads']} thread(s))"
        + (f"; GPU {machine['gpu']}" if machine.get("gpu") else "; no GPU")
        + f". {setting['warmup']} warm-up + {setting['runs']} timed calls per backend; one call "
        "= text encoder + video graph, uint8 frames and token ids in, raw outputs out.",
        "",
    ]
    if machine.get("isa_cap"):
        lines += [
            (f"**ISA capped** at {machine['isa_cap']} by ONEDNN_MAX_CPU_ISA, emulating a CPU "
             "without what lies above it (the flags below are what is left). PyTorch and "
             "OpenVINO's oneDNN primitives obey the cap; onnxruntime's MLAS and OpenVINO's own "
             "JIT kernels dispatch on the real CPU, so a row of theirs that can use AMX (INT8, "
             "BF16) does not stand for that CPU."),
            "",
        ]
    loads = [machine.get("load_average_start"), machine.get("load_average_end")]
    if any(is_busy(load) for load in loads):
        warning = (
            f"**Warning**: load average {fmt(loads[0])} at the start, {fmt(loads[1])} at the "
            "end: other processes shared the CPU, so these timings (torch's OpenMP threads "
            "above all) may be inflated; rerun on an idle machine."
        )
        lines += [warning, ""]
    return lines


def _work_and_peaks(results: dict) -> list[str]:
    peaks = results["peaks"]
    g = results["gflops"][str(results["setting"]["expressions"])]
    lines = [
        (
            f"GFLOPs per call: {g['total']:.4g} (text {g['text']:.4g} + video {g['video']:.4g}; "
            "FlopCounterMode, 2 per MAC)."
        )
    ]
    cpu = peaks["cpu"]
    flags = [f for f, on in peaks.get("cpu_flags", {}).items() if on and ("vnni" in f or "amx" in f
             or "bf16" in f)]  # fmt: skip
    peak_text = (
        f"Measured GEMM peaks (CPU): FP32 {fmt(cpu['fp32'].get('gflops'), 1)} GFLOP/s "
        f"(numpy {fmt(cpu['fp32_numpy'].get('gflops'), 1)}), BF16 "
        f"{fmt(cpu['bf16'].get('gflops'), 1)} GFLOP/s, INT8 {fmt(cpu['int8'].get('gflops'), 1)} "
        f"GOP/s (CPU flags: {', '.join(flags) or 'no VNNI/AMX/BF16'})"
    )
    if "cuda" in peaks:
        peak_text += "; GPU: " + ", ".join(
            f"{k.upper()} {fmt(v.get('gflops'), 0)}" for k, v in peaks["cuda"].items()
        )
    return lines + [peak_text + ".", ""]


# Columns that results written by older versions lack: (header, present in the results when,
# the cell of a row). Older committed results render as they were, without them.
_OPTIONAL_COLUMNS = (
    ("× vs best torch", lambda r: "best_torch" in r,
     lambda row: fmt(row.get("speedup_vs_best_torch"), 2, "×")),
    ("× vs ort", lambda r: any("speedup_vs_ort" in row for row in r["backends"]),
     lambda row: fmt(row.get("speedup_vs_ort"), 2, "×")),
    ("peak RSS GB", lambda r: any("memory" in row for row in r["backends"]),
     lambda row: fmt((row.get("memory") or {}).get("peak_rss_mb", 0) / 1024 or None, 2)),
)  # fmt: skip


def _backend_line(row: dict, columns: list) -> str:
    total = row["latency"]["total"]
    fraction = row.get("fraction_of_peak")
    return (
        f"| {row['backend']} | {row['device']} | {row['text_precision']}/"
        f"{row['video_precision']} | {total['p50']:.2f} | {total['p90']:.2f} | "
        f"{total['p99']:.2f} | {100 * total['spread']:.1f}% | "
        f"{row['latency']['text']['p50']:.2f} | {row['latency']['video']['p50']:.2f} | "
        f"{row['gflops_per_s']:.1f} | "
        f"{fmt(None if fraction is None else 100 * fraction, 1, '%')} ({row['peak']}) | "
        f"{fmt(row.get('speedup_vs_torch'), 2, '×')} |"
        + "".join(f" {cell(row)} |" for _, _, cell in columns)
    )


def _backend_table(results: dict) -> list[str]:
    columns = [column for column in _OPTIONAL_COLUMNS if column[1](results)]
    lines = [
        (
            "| backend | device | precision (text/video) | p50 ms | p90 | p99 | spread | "
            "text ms | video ms | GFLOP/s | % of peak | × vs torch |"
            + "".join(f" {header} |" for header, _, _ in columns)
        ),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(columns),
    ]
    lines += [
        _backend_line(row, columns) for row in results["backends"] if row["status"] == "timed"
    ]
    if "best_torch" in results:
        lines += ["", _torch_note(results)]
    isolated = results["setting"].get("isolated")  # absent from results of older versions
    if isolated is not None:
        lines += ["", _memory_note(isolated)]
    skipped = [row for row in results["backends"] if row["status"] != "timed"]
    if skipped:
        lines += ["", "Not timed:"]
        lines += [f"- {row['backend']} ({row['status']}): {row['reason']}" for row in skipped]
    return lines


def _memory_note(isolated: bool) -> str:
    if isolated:
        return (
            "Each row ran in a process of its own; peak RSS is that process's peak resident "
            "memory (interpreter, inputs, backend, and the model for PyTorch rows). "
            "× vs ort is against onnxruntime FP32."
        )
    return (
        "Memory: every row ran in this one process (--in-process), so rows inherit each "
        "other's memory and no per-row peak RSS is recorded. × vs ort is against onnxruntime FP32."
    )


def _torch_note(results: dict) -> str:
    """What the PyTorch rows ran, which was fastest, and torch.compile's compile time."""
    note = (
        "PyTorch rows run the export wrappers (TextGraph + VideoGraph), except torch-model: "
        "model(frames, ids, mask), one video per expression; "
        "× vs torch is against FP32 eager, × vs best torch against the fastest PyTorch row ("
        + (results["best_torch"] or "none timed")
        + ")."
    )
    for row in results["backends"]:
        if row.get("compile_s"):
            note += (
                f" {row['backend']}: compiling took {sum(row['compile_s'].values()):.1f} s "
                f"over {len(row['compile_s'])} shape(s), not timed."
            )
    return note


def _sweep_table(results: dict) -> list[str]:
    sweep, setting = results["e_sweep"], results["setting"]
    if not sweep:
        return []
    names = list(sweep)
    lines = [
        "",
        f"## Expressions per video (E sweep; p50 ms and × the E={setting['e_sweep'][0]} time)",
        "",
        "| E | GFLOPs | " + " | ".join(names) + " |",
        "|---:|---:|" + "---:|" * len(names),
    ]
    for index, e in enumerate(setting["e_sweep"]):
        cells = [
            f"{sweep[n][index]['p50']:.2f} ({sweep[n][index]['ratio_to_first']:.2f}×)"
            for n in names
        ]
        lines.append(f"| {e} | {results['gflops'][str(e)]['total']:.4g} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    return lines


def _target_line(target: dict) -> str:
    what = target["description"] + (f" [{target['backend']}]" if target.get("backend") else "")
    if target["passed"] is None:
        result, value = f"not evaluated: {target['reason']}", "–"
    else:
        result = "pass" if target["passed"] else "**MISSED**"
        value = f"{target['value']:.2f}{target.get('unit', '×')}"
    # Targets written before units were recorded render as they were committed.
    unit = target.get("unit")
    required = f"{target['threshold']}×" if unit is None else f"{target['threshold']:.3g}{unit}"
    return f"| {what} | {value} | {target['comparison']} {required} | {result} |"


def _targets_section(results: dict) -> list[str]:
    targets = results["targets"]
    lines = ["", "## Targets (CPU, at the paper setting)", ""]
    if targets["note"]:
        lines += [f"Note: {targets['note']}.", ""]
    lines += ["| target | measured | required | result |", "|---|---:|---:|---|"]
    lines += [_target_line(target) for target in targets["targets"]]
    per_backend = next(
        (t.get("per_backend") for t in targets["targets"] if t["name"] == "e4_vs_e1"), None
    )
    if per_backend:
        lines += ["", "E=4 / E=1 per backend: " + ", ".join(
            f"{n} {r:.2f}×" for n, r in per_backend.items()
        )]  # fmt: skip
    missed = any(target["passed"] is False for target in targets["targets"])
    if missed and not results["profiles"]:
        # Worded as in the committed results, which must render as they were committed.
        lines += ["", "A target is missed: rerun with --profile for onnxruntime's per-op times."]
    return lines


def _paper_line(results: dict) -> list[str]:
    paper, setting = results["paper"], results["setting"]
    height, width = setting["size"]
    if paper["measured_best_p50_ms"] is None:
        measured = "nothing timed."
    else:
        measured = (
            f"best p50 {paper['measured_best_p50_ms']:.2f} ms ({paper['measured_best_backend']}) "
            f"on {paper['measured_device']}, {setting['preset']} {setting['frames']} frames at "
            f"{height}x{width} — a different device"
            + ("" if results["targets"]["at_paper_setting"] else " and setting")
            + ", not a like-for-like comparison."
        )
    return [
        "",
        f"Paper: {paper['latency_ms']:.0f} ms per video on an {paper['device']} ({paper['kind']}),"
        f" {paper['setting']}. Measured here: " + measured,
    ]


def _profile_tables(results: dict) -> list[str]:
    lines: list[str] = []
    for name, table in results["profiles"].items():
        graphs = ", ".join(f"{g} {ms:.2f} ms" for g, ms in table["graph_ms"].items())
        lines += [
            "",
            f"## {table.get('runtime', 'onnxruntime')} profile: {name} (node time "
            f"{table['total_ms']:.2f} ms: {graphs})",
            "",
            "| op type | calls | ms | % |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {r['op_type']} | {r['calls']} | {r['ms']:.2f} | {r['percent']:.1f} |"
            for r in table["op_types"]
        ]
    return lines


def format_markdown(results: dict) -> str:
    """The report: latency table, E sweep, targets (with the paper's figure), profiles."""
    lines = [
        *_header(results),
        *_work_and_peaks(results),
        *_backend_table(results),
        *_sweep_table(results),
        *_targets_section(results),
        *_paper_line(results),
        *_profile_tables(results),
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    return "\n".join(lines)


def write_outputs(results: dict, out_dir: str | Path, tag: str) -> dict[str, Path]:
    """Write ``latency-<tag>.json``, ``.md`` and ``.png`` into ``out_dir``; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / f"latency-{tag}.json",
        "markdown": out_dir / f"latency-{tag}.md",
    }
    results["files"] = {k: str(v) for k, v in paths.items()}
    plot = write_plot(results, out_dir / f"latency-{tag}.png")
    if plot is not None:
        paths["png"] = plot
        results["files"]["png"] = str(plot)
    paths["json"].write_text(json.dumps(results, indent=2, default=str) + "\n")
    paths["markdown"].write_text(format_markdown(results))
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths
