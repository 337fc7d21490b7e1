"""The GPU check's report as markdown (``benchmarks/gpu_check.py`` writes it beside the JSON);
standard library only, so it renders a committed ``gpu-check.json`` anywhere."""

from __future__ import annotations


def _cell(value) -> str:
    return "–" if value is None else str(value)


def _parts_table(report: dict) -> list[str]:
    lines = ["| part | status | seconds | reason |", "|---|---|---:|---|"]
    for name, part in report["parts"].items():
        reason = str(part.get("reason", "")).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {name} | {part['status']} | {part['seconds']} | {reason} |")
    return lines


def _torch(results: dict) -> list[str]:
    paper = results["paper"]
    height, width = results["size"]
    lines = [
        "",
        (
            f"## PyTorch at the paper setting ({results['preset']}, {results['frames']} frames "
            f"at {height}x{width}, {results['timing']})"
        ),
        "",
        (
            f"{results['warmup']} warm-up + {results['runs']} timed calls per row; TF32 matmul "
            f"{'on' if results['tf32_matmul'] else 'off'}. The paper: "
            f"**{paper['latency_ms']:.0f} ms** on an {paper['device']} ({paper['setting']})."
        ),
        "",
        *([f"**{results['preset']} instead of paper-swin-t**: {results['preset_note']}.", ""]
          if results.get("preset_note") else []),
        "| mode | E | p50 ms | p90 ms | × paper's 109 ms | peak GPU memory GiB | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in results["rows"]:
        if "skipped" in row:
            lines.append(f"| {row['mode']} | {row['expressions']} | – | – | – | – | "
                         f"{row['skipped']} |")  # fmt: skip
            continue
        ratio = row["p50_ms"] / paper["latency_ms"]
        note = ", ".join(f"{key} {row[key]}" for key in ("capture_seconds", "compile_seconds")
                         if key in row)  # fmt: skip
        lines.append(
            f"| {row['mode']} | {row['expressions']} | {row['p50_ms']:.1f} | {row['p90_ms']:.1f} "
            f"| {ratio:.2f} | {_cell(row['peak_gpu_memory_gib'])} | {note} |"
        )
    return lines


def _train(results: dict) -> list[str]:
    return [
        "",
        (
            f"## Training step with AMP ({results['preset']}, batch {results['batch']}, "
            f"{results['frames']} frames at {results['size'][0]}x{results['size'][1]})"
        ),
        "",
        (
            f"{results['amp']} autocast (gradient scaler "
            f"{'on' if results['grad_scaler'] else 'off'}), AdamW: p50 "
            f"**{results['step_p50_ms']} ms**, p90 {results['step_p90_ms']} ms per step over "
            f"{results['steps']} steps after {results['warmup']}; peak GPU memory "
            f"{_cell(results['peak_gpu_memory_gib'])} GiB; losses finite: {results['finite']}."
        ),
    ]


def _agreement(row: dict) -> str:
    check = row["vs_onnxruntime_fp32"]
    worst = ", ".join(f"{name} {entry['max_abs_error']:.3g}" for name, entry
                      in check["outputs"].items())  # fmt: skip
    return f"{'pass' if check['passed'] else '**FAIL**'} (max abs error: {worst})"


def _rows_table(title: str, rows: dict) -> list[str]:
    lines = ["", title, "", "| row | p50 ms | p90 ms | vs onnxruntime FP32 (CPU) |",
             "|---|---:|---:|---|"]  # fmt: skip
    for name, row in rows.items():
        if "skipped" in row:
            lines.append(f"| {name} | – | – | skipped: {row['skipped']} |")
        else:
            lines.append(f"| {name} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | "
                         f"{_agreement(row)} |")  # fmt: skip
    return lines


def format_report(report: dict) -> str:
    """The whole report: the parts with their status and reason, then each part's figures."""
    machine = report["machine"]
    lines = [
        f"# GPU check — {machine.get('gpu') or 'no GPU'}",
        "",
        (
            f"{report['started_utc']}, {report['seconds']} s of a {report['budget_s']:.0f} s "
            f"budget; CPU {machine['cpu']} ({machine['cores']} cores). Command: "
            f"`{report['command']}`."
        ),
        "",
        *_parts_table(report),
    ]
    parts = report["parts"]
    if parts.get("torch", {}).get("status") == "ran":
        lines += _torch(parts["torch"]["results"])
    if parts.get("train", {}).get("status") == "ran":
        lines += _train(parts["train"]["results"])
    if parts.get("onnxruntime-gpu", {}).get("status") == "ran":
        lines += _rows_table("## onnxruntime CUDA and TensorRT execution providers (tiny bundle)",
                             parts["onnxruntime-gpu"]["results"]["rows"])  # fmt: skip
    if parts.get("engines", {}).get("status") == "ran":
        for kind, entry in parts["engines"]["results"].items():
            title = f"## TensorRT engines, {kind} bundle"
            if "skipped" in entry:
                lines += ["", title, "", f"Skipped: {entry['skipped']}"]
                continue
            rows = {precision: row | {"name": precision} for precision, row
                    in entry["precisions"].items()}  # fmt: skip
            lines += _rows_table(f"{title} (call {entry['call']})", rows)
    tests = parts.get("tests", {}).get("results")
    if tests:
        lines += ["", f"## gpu tests: {tests['summary']}", ""]
        lines += [f"- skipped: {reason}" for reason in tests["skip_reasons"]]
    return "\n".join(lines) + "\n"
