"""Numerical agreement between two sets of graph outputs (PyTorch vs ONNX Runtime, FP16 vs FP32).

An output passes when ``max|a - b| <= atol + rtol * max|b|``: the relative term scales with
the output's range, so mask logits in the tens and box coordinates in [0, 1] share one rule.
For mask logits the fraction of pixels on the same side of 0 (the same thresholded mask) is
reported too, since that is what a user sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float

    def to_dict(self) -> dict:
        return {
            "atol": self.atol,
            "rtol": self.rtol,
            "rule": "max_abs <= atol + rtol * max_abs_ref",
        }


# FP32 ONNX Runtime against PyTorch eager: reordered float sums only.
FP32_TOLERANCE = Tolerance(atol=1e-3, rtol=1e-3)
# FP16 graph against the FP32 graph, both in ONNX Runtime: half-precision storage and GEMMs.
FP16_TOLERANCE = Tolerance(atol=5e-2, rtol=5e-2)


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
        error = float(np.abs(got - ref).max()) if ref.size else 0.0
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        entry = {
            "max_abs_error": error,
            "max_abs_ref": scale,
            "ok": bool(error <= tolerance.atol + tolerance.rtol * scale),
        }
        if name in ("pred_masks", "pred_logits"):
            entry["sign_agreement"] = float(np.mean((got > 0) == (ref > 0)))
        report[name] = entry
    return report


def failures(report: dict[str, dict]) -> list[str]:
    return [
        f"{name}: max abs error {entry['max_abs_error']:.3g} "
        f"(reference max {entry['max_abs_ref']:.3g})"
        for name, entry in report.items()
        if not entry["ok"]
    ]
