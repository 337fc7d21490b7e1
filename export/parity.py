"""Numerical agreement between two sets of graph outputs (PyTorch vs ONNX Runtime, FP16 vs FP32).

An output passes when it is finite and ``err_q <= atol + rtol * max|b|``, ``err_q`` the
``quantile`` of ``|a - b|`` over its elements (1.0: the maximum). The relative term scales with
the output's range, so mask logits in the tens and box coordinates in [0, 1] share one rule.

FP32 graphs are held to the maximum. FP16 graphs are held to the 0.99 quantile (Polygraphy's
``--check-error-stat quantile --error-quantile``): the decoder's masked attention thresholds the
previous layer's mask logits at 0, so a logit that half precision moves across 0 changes which
pixels one query attends to, and that one query's outputs in that frame, by far more than
rounding (measured on a checkpoint of the tiny recipe: one of 195 query-frame slots, 0.5 % of
the elements). A conversion fault (an overflow, a wrong cast) moves far more than 1 % of an output
and still fails; the maximum is reported beside it. For mask and class logits the fraction on
the same side of 0 (the same thresholded mask) is reported too, since that is what a user sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
# FP16 graph against the FP32 graph, both in ONNX Runtime: half-precision storage and GEMMs,
# and the masked attention's thresholds (see the module docstring).
FP16_TOLERANCE = Tolerance(atol=5e-2, rtol=5e-2, quantile=0.99)


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
