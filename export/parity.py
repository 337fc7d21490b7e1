"""Numerical agreement between two sets of graph outputs (PyTorch vs ONNX Runtime, FP16 vs FP32).

An output passes when it is finite and ``err_q <= atol + rtol * max|b|``, ``err_q`` the
``quantile`` of ``|a - b|`` over its elements (1.0: the maximum). The relative term scales with
the output's range, so mask logits in the tens and box coordinates in [0, 1] share one rule.

FP32 graphs are held to the maximum, and so are the FP16 graphs of the paper's architecture:
on ``paper-mini`` (random weights, 64x96, T 1:3:6) the FP16 video graph's largest errors
against FP32 were 1.6e-3 on the class logits and 4.0e-3 on the mask logits, far inside the
tolerance (docs/deployment.md). A model with masked attention (``extensions.masked_attn``, the
``tiny-synthetic`` preset) is held to the 0.99 quantile instead (Polygraphy's
``--check-error-stat quantile --error-quantile``): that decoder thresholds the previous layer's
mask logits at 0, so a logit that half precision moves across 0 changes which pixels one query
attends to, and that one query's outputs in that frame, by far more than rounding (measured on
a checkpoint of the tiny-synthetic recipe: one of 195 query-frame slots, 0.5 % of the
elements). A conversion fault (an overflow, a wrong cast) moves far more than 1 % of an output
and still fails; the maximum is reported beside it. For mask and class logits the fraction on
the same side of 0 (the same thresholded mask) is reported too, since that is what a user sees.

The export's check (``check_parity``) runs every graph in ONNX Runtime (CPU) at the
``parity_cases``, two (T, E, L) combinations the export did not trace at, against PyTorch eager
(FP32 graphs) or against the FP32 graphs (FP16); above tolerance it raises ``ParityError`` and
no bundle is written. ``Tolerance``, ``compare`` and ``failures`` need numpy only; torch is
imported by ``check_parity`` alone.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import nn

    from proxyformer.model import ProxyFormer

    from .torch_export import Profile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    quantile: float = 1.0  # of |error| over an output's elements; 1.0 is the maximum

    def __post_init__(self) -> None:
        if self.atol < 0 or self.rtol < 0:
            raise ValueError(f"atol and rtol must be >= 0, got {self.atol}, {self.rtol}")
        if not 0.5 <= self.quantile <= 1.0:
            raise ValueError(f"the error quantile must be in [0.5, 1], got {self.quantile}")

    def error(self, abs_error: np.ndarray) -> float:
        """The statistic of ``|a - b|`` this tolerance bounds."""
        if self.quantile == 1.0:
            return float(abs_error.max())
        return float(np.quantile(abs_error, self.quantile))

    def to_dict(self) -> dict:
        stat = "max_abs" if self.quantile == 1.0 else f"quantile {self.quantile} of abs error"
        return {
            "atol": self.atol,
            "rtol": self.rtol,
            "quantile": self.quantile,
            "rule": f"{stat} <= atol + rtol * max_abs_ref",
        }


# FP32 ONNX Runtime against PyTorch eager: reordered float sums only.
FP32_TOLERANCE = Tolerance(atol=1e-3, rtol=1e-3)
# FP16 graph against the FP32 graph, both in ONNX Runtime: half-precision storage and GEMMs.
FP16_TOLERANCE = Tolerance(atol=5e-2, rtol=5e-2)
# An INT8 Q/DQ video graph against the FP32 graph (tests/test_polygraphy.py, through Polygraphy's
# Comparator), per output: a sanity bound, not an accuracy claim (INT8 accuracy is the mask
# agreement and same-query rate that calibration measures). On the demo checkpoint's test bundle
# (64x96, T=3, six synthetic clips) the 0.95 quantile of |error| was at most 0.05 of the largest
# |FP32 value| for the mask logits, 0.11 for the boxes and 0.51 for the class logits (15 values
# per clip, between -3 and 0, so one query's drift is the quantile); the signs of 98.5-100 % of
# the mask logits agreed. A graph with wrong scales or a broken node is off by the whole range.
INT8_QDQ_TOLERANCE = {
    "pred_masks": Tolerance(atol=0.0, rtol=0.25, quantile=0.95),
    "pred_boxes": Tolerance(atol=0.0, rtol=0.25, quantile=0.95),
    "pred_logits": Tolerance(atol=0.0, rtol=0.75, quantile=0.95),
}
# The quantile that replaces the maximum for a model with masked attention (module docstring).
MASKED_ATTENTION_QUANTILE = 0.99


def fp16_tolerance_for(config, atol: float | None = None, rtol: float | None = None,
                       quantile: float | None = None) -> Tolerance:
    """The FP16 rule for a model config (``ProxyFormerConfig``): ``FP16_TOLERANCE``, held to
    the 0.99 quantile where the model uses masked attention; any value given replaces it."""
    if quantile is None:
        quantile = MASKED_ATTENTION_QUANTILE if config.extensions.masked_attn else 1.0
    return Tolerance(
        FP16_TOLERANCE.atol if atol is None else atol,
        FP16_TOLERANCE.rtol if rtol is None else rtol,
        quantile,
    )


class ParityError(AssertionError):
    """An exported graph disagrees with its reference beyond the tolerance."""


def compare(
    outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], tolerance: Tolerance
) -> dict[str, dict]:
    """Per output: max abs error, the reference's max abs value, pass/fail, mask agreement."""
    report = {}
    for name, ref in reference.items():
        if name not in outputs:
            raise ParityError(f"output {name!r} is missing (got {sorted(outputs)})")
        got = np.asarray(outputs[name], dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        if got.shape != ref.shape:
            raise ParityError(f"output {name!r} has shape {got.shape}, the reference {ref.shape}")
        abs_error = np.abs(got - ref)
        error = float(abs_error.max()) if ref.size else 0.0
        checked = tolerance.error(abs_error) if ref.size else 0.0
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        finite = bool(np.isfinite(got).all())
        entry = {
            "max_abs_error": error,
            "max_abs_ref": scale,
            "ok": finite and bool(checked <= tolerance.atol + tolerance.rtol * scale),
        }
        if tolerance.quantile < 1.0:
            entry["quantile_abs_error"] = checked
        if not finite:
            entry["non_finite"] = int((~np.isfinite(got)).sum())
        if name in ("pred_masks", "pred_logits"):
            entry["sign_agreement"] = float(np.mean((got > 0) == (ref > 0)))
        report[name] = entry
    return report


def failures(report: dict[str, dict]) -> list[str]:
    """One readable line per output of a ``compare`` report that failed its tolerance."""
    bad = []
    for name, entry in report.items():
        if entry["ok"]:
            continue
        text = f"{name}: max abs error {entry['max_abs_error']:.3g}"
        if "quantile_abs_error" in entry:
            text += f", quantile {entry['quantile_abs_error']:.3g}"
        if entry.get("non_finite"):
            text += f", {entry['non_finite']} values not finite"
        bad.append(text + f" (reference max {entry['max_abs_ref']:.3g})")
    return bad


# -- the export's check: ONNX Runtime against a reference --------------------------------------


def ort_session(path: Path, threads: int | None = None):
    """A CPU ONNX Runtime session of one graph file, without the memory arena or pattern."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    # No arena: parity runs large shapes once per session, and an arena keeps its peak
    # (tens of GB for Video-Swin at 360x640 x 20 frames x 3 expressions) until the end.
    options.enable_cpu_mem_arena = False
    # No memory pattern either: from a session's second run at the same shapes, onnxruntime
    # allocates one block laid out by the first run's plan, which held a stage-1 piece of
    # paper-swin-t (calibration.ranges) 1.7 GB above the first run's peak, clip after clip.
    options.enable_mem_pattern = False
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_ort(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """All outputs of one session run, by name."""
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def _session(sessions: dict, path: Path):
    if path not in sessions:
        sessions[path] = ort_session(path)
    return sessions[path]


def parity_cases(profiles: dict[str, Profile], export_sizes: dict[str, int]) -> list[dict]:
    """Two (T, E, L) combinations inside the profiles, each different from the export's."""
    t, e, length = profiles["T"], profiles["E"], profiles["L"]
    small = {"T": t.min, "E": e.min, "L": max(length.min, min(5, length.max))}
    large = {"T": min(t.max, t.opt + 1), "E": min(e.max, 3), "L": length.max}
    cases = []
    for case in (small, large):
        if case != export_sizes and case not in cases:
            cases.append(case)
    return cases


def check_parity(
    graphs: dict[str, nn.Module],
    files: dict[str, Path],
    specs: dict,
    cases: list[dict],
    tokenizer,
    model: ProxyFormer,
    tolerance: Tolerance,
    reference: str = "pytorch",
    reference_files: dict[str, Path] | None = None,
    reference_outputs: dict[tuple[int, str], dict[str, np.ndarray]] | None = None,
    record: dict[tuple[int, str], dict[str, np.ndarray]] | None = None,
) -> dict:
    """Run every graph in ONNX Runtime at each case against PyTorch eager (or against other
    ONNX files, for the FP16 graphs); raise ``ParityError`` above tolerance.

    ``record`` collects the ONNX Runtime outputs by (case index, graph); passed back as
    ``reference_outputs`` (same cases, same graphs) they stand in for running
    ``reference_files`` again: the FP16 check reuses what the FP32 check computed, which at
    the paper size saves one FP32 run per case and graph (about 100 s of an export).

    Returns per graph the manifest's parity entry: reference, tolerance, each case's report
    and the worst error over the cases.
    """
    from .torch_export import make_inputs, run_torch

    results = {name: [] for name in files}
    # One session per file for all cases: creating one optimises the whole graph again (seconds
    # at the paper size). Without the arena, a session holds no memory between runs.
    sessions: dict[Path, object] = {}
    for index, sizes in enumerate(cases):
        for name, path in files.items():
            inputs, outputs = specs[name]
            feeds = make_inputs(inputs, sizes, tokenizer, model, seed=100 + index)
            if reference_outputs is not None and (index, name) in reference_outputs:
                ref = reference_outputs[index, name]
            elif reference_files is None:
                ref = run_torch(graphs[name], feeds, [o.name for o in outputs])
            else:
                ref = run_ort(_session(sessions, reference_files[name]), feeds)
            got = run_ort(_session(sessions, path), feeds)
            if record is not None:
                record[index, name] = got
            report = compare(got, ref, tolerance)
            results[name].append({"sizes": sizes, "outputs": report})
            log.info(
                "parity %s %s vs %s: %s", path.name, sizes, reference,
                ", ".join(f"{k} {v['max_abs_error']:.2e}" for k, v in report.items()),
            )  # fmt: skip
            bad = failures(report)
            if bad:
                stat = f" (its {tolerance.quantile} quantile)" if tolerance.quantile < 1 else ""
                raise ParityError(
                    f"{path.name} disagrees with {reference} at T={sizes['T']}, E={sizes['E']}, "
                    f"L={sizes['L']}: |error|{stat} beyond atol {tolerance.atol} + rtol "
                    f"{tolerance.rtol} x max: " + "; ".join(bad)
                )

    sessions.clear()
    gc.collect()

    def worst(cases_: list[dict], key: str) -> dict[str, float]:
        return {out: max(c["outputs"][out][key] for c in cases_) for out in cases_[0]["outputs"]}

    summary = {}
    for name, cases_ in results.items():
        summary[name] = {
            "reference": reference, "tolerance": tolerance.to_dict(), "cases": cases_,
            "max_abs_error": worst(cases_, "max_abs_error"),
        }  # fmt: skip
        if tolerance.quantile < 1:
            summary[name]["quantile_abs_error"] = worst(cases_, "quantile_abs_error")
    return summary
