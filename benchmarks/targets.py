"""The issue's latency targets (CPU, at the paper setting) and the paper's own figure."""

from __future__ import annotations

PAPER = {
    "latency_ms": 109.0,
    "device": "NVIDIA A40",
    "kind": "GPU",
    "setting": "paper-swin-t, 19 frames at 360x640, one expression",
}
PAPER_SETTING = {"preset": "paper-swin-t", "frames": 19, "size": (360, 640)}
TARGET_ORT_VS_TORCH = 1.5  # ORT FP32 at least this many times faster than PyTorch eager
TARGET_INT8_VS_ORT = 2.0  # the best INT8 at least this many times faster than ORT FP32
INT8_ROWS = ("ort-int8", "ort-int8-trt", "ov-int8")  # the CPU INT8 rows (onnxruntime, OpenVINO)
TARGET_E4_VS_E1 = 1.6  # E = 4 costs at most this many times E = 1


def p50_of(row: dict | None) -> float | None:
    """The p50 ms of one call of a timed row; None for a row that is absent or was not timed."""
    if row is None or row.get("status") != "timed":
        return None
    return row["latency"]["total"]["p50"]


def at_paper_setting(setting: dict) -> bool:
    """Whether a run's preset, frames and size are the paper's (where the targets are defined)."""
    return (
        setting["preset"] == PAPER_SETTING["preset"]
        and setting["frames"] == PAPER_SETTING["frames"]
        and tuple(setting["size"]) == PAPER_SETTING["size"]
    )


def _ort_vs_torch(by_name: dict[str, dict]) -> dict:
    torch_row, ort_row = by_name.get("torch"), by_name.get("ort")
    target = {
        "name": "ort_fp32_vs_torch",
        "description": "ORT FP32 speed-up over PyTorch eager (CPU)",
        "threshold": TARGET_ORT_VS_TORCH,
        "comparison": ">=",
    }
    if p50_of(torch_row) is None or p50_of(ort_row) is None:
        target["reason"] = "needs timed torch and ort rows"
    elif torch_row["device"] != "cpu":
        target["reason"] = f"torch ran on {torch_row['device']}; the target is CPU vs CPU"
    else:
        target["value"] = p50_of(torch_row) / p50_of(ort_row)
    return target


def _int8_vs_ort(by_name: dict[str, dict]) -> dict:
    int8_rows = [by_name[n] for n in INT8_ROWS if p50_of(by_name.get(n)) is not None]
    target = {
        "name": "int8_vs_ort_fp32",
        "description": "best INT8 (CPU: ORT or OpenVINO) speed-up over ORT FP32",
        "threshold": TARGET_INT8_VS_ORT,
        "comparison": ">=",
    }
    ort_p50 = p50_of(by_name.get("ort"))
    if ort_p50 is None or not int8_rows:
        target["reason"] = "needs timed ort and ort-int8 (or ort-int8-trt, ov-int8) rows"
    else:
        best = min(int8_rows, key=p50_of)
        target["value"] = ort_p50 / p50_of(best)
        target["backend"] = best["backend"]
    return target


def _e4_vs_e1(by_name: dict[str, dict], sweep: dict[str, list[dict]]) -> dict:
    target = {
        "name": "e4_vs_e1",
        "description": "time of E=4 expressions / E=1 on one video",
        "threshold": TARGET_E4_VS_E1,
        "comparison": "<=",
    }
    ratios = {}
    for backend, entries in sweep.items():
        es = {entry["expressions"]: entry for entry in entries}
        if 1 in es and 4 in es:
            ratios[backend] = es[4]["p50"] / es[1]["p50"]
    if ratios:
        cpu_rows = [n for n in ratios if by_name[n]["device"] == "cpu"]
        headline = "ort" if "ort" in ratios else (cpu_rows or list(ratios))[0]
        target |= {"value": ratios[headline], "backend": headline, "per_backend": ratios}
        target["per_backend_passed"] = {n: r <= TARGET_E4_VS_E1 for n, r in ratios.items()}
    else:
        target["reason"] = "needs an E sweep with E=1 and E=4 (the bundle's E profile must reach 4)"
    return target


def _judge(target: dict) -> None:
    """Set ``passed``: True/False against the threshold, None where there is no value."""
    value = target.get("value")
    if value is None:
        target["passed"] = None
    elif target["comparison"] == ">=":
        target["passed"] = bool(value >= target["threshold"])
    else:
        target["passed"] = bool(value <= target["threshold"])


def evaluate_targets(rows: list[dict], sweep: dict[str, list[dict]], setting: dict) -> dict:
    """The issue's three targets (CPU, paper setting) with pass/fail, or why not evaluated."""
    by_name = {row["backend"]: row for row in rows}
    targets = [_ort_vs_torch(by_name), _int8_vs_ort(by_name), _e4_vs_e1(by_name, sweep)]
    for target in targets:
        _judge(target)
    at_paper = at_paper_setting(setting)
    note = None
    if not at_paper:
        note = (
            f"the targets are defined at {PAPER_SETTING['preset']}, {PAPER_SETTING['frames']} "
            f"frames at {PAPER_SETTING['size'][0]}x{PAPER_SETTING['size'][1]}; this run is "
            f"{setting['preset']}, {setting['frames']} frames at "
            f"{setting['size'][0]}x{setting['size'][1]}: indicative only"
        )
    return {"at_paper_setting": at_paper, "note": note, "targets": targets}
