"""The parity rule of export/parity.py on constructed outputs: the maximum for FP32 and for the
paper architecture's FP16, the 0.99 quantile for FP16 with masked attention (one query flipped by
the masked attention's threshold passes, a fault that moves more than 1 % of an output or
produces non-finite values fails)."""

import numpy as np
import pytest

from export.parity import (
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    Tolerance,
    compare,
    failures,
    fp16_tolerance_for,
)
from proxyformer.config import get_preset

MASKED = fp16_tolerance_for(get_preset("tiny-synthetic"))


def outputs(seed=0):
    rng = np.random.default_rng(seed)
    return {"pred_masks": rng.normal(0, 20, (3, 13, 5, 32, 56)).astype(np.float32)}


def test_one_flipped_query_passes_the_quantile_but_not_the_maximum():
    ref = outputs()
    got = {"pred_masks": ref["pred_masks"] + 0.01}
    got["pred_masks"][1, 4, 2] += 40.0  # one (expression, frame, query) slot: 0.5 % of it
    fp16 = compare(got, ref, MASKED)["pred_masks"]
    assert fp16["ok"] and fp16["max_abs_error"] == pytest.approx(40.01, abs=1e-3)
    assert fp16["quantile_abs_error"] == pytest.approx(0.01, abs=1e-4)
    strict = compare(got, ref, Tolerance(FP16_TOLERANCE.atol, FP16_TOLERANCE.rtol))
    assert not strict["pred_masks"]["ok"] and "quantile_abs_error" not in strict["pred_masks"]
    assert failures(strict) == [
        f"pred_masks: max abs error {40.01:.3g} "
        f"(reference max {strict['pred_masks']['max_abs_ref']:.3g})"
    ]


def test_an_error_over_more_than_one_percent_fails_the_quantile():
    ref = outputs()
    got = {"pred_masks": ref["pred_masks"].copy()}
    got["pred_masks"][:, :, :1] += 40.0  # one query of five in every frame: 20 %
    report = compare(got, ref, MASKED)
    assert not report["pred_masks"]["ok"]
    assert "quantile 40" in failures(report)[0]
    assert 0.0 < report["pred_masks"]["sign_agreement"] < 1.0


def test_non_finite_values_fail_whatever_the_quantile():
    ref = outputs()
    got = {"pred_masks": ref["pred_masks"].copy()}
    got["pred_masks"][0, 0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    report = compare(got, ref, MASKED)
    assert not report["pred_masks"]["ok"] and report["pred_masks"]["non_finite"] == 3
    assert "3 values not finite" in failures(report)[0]


def test_fp32_is_held_to_the_maximum_and_bad_tolerances_are_refused():
    assert FP32_TOLERANCE.quantile == 1.0 and FP32_TOLERANCE.to_dict()["rule"].startswith("max")
    # FP16: the maximum for the paper's architecture, the 0.99 quantile with masked attention.
    assert FP16_TOLERANCE.quantile == 1.0
    for preset in ("tiny", "paper-mini", "paper-swin-t"):
        assert fp16_tolerance_for(get_preset(preset)) == FP16_TOLERANCE, preset
    assert MASKED.to_dict()["quantile"] == 0.99 and MASKED.atol == FP16_TOLERANCE.atol
    assert fp16_tolerance_for(get_preset("tiny-synthetic"), quantile=1.0).quantile == 1.0
    with pytest.raises(ValueError, match="quantile must be in"):
        Tolerance(0.1, 0.1, quantile=0.2)
    with pytest.raises(ValueError, match="atol and rtol"):
        Tolerance(-1.0, 0.0)


def test_parity_cases_are_inside_the_profiles_and_not_the_export_sizes():
    from export.parity import parity_cases
    from export.torch_export import Profile, export_sizes

    profiles = {"T": Profile(1, 3, 6), "E": Profile(1, 1, 4), "L": Profile(1, 12, 12)}
    sizes = export_sizes(profiles)
    cases = parity_cases(profiles, sizes)
    assert cases == [{"T": 1, "E": 1, "L": 5}, {"T": 4, "E": 3, "L": 12}]
    for case in cases:
        assert case != sizes
        assert all(profiles[a].min <= v <= profiles[a].max for a, v in case.items())
    # A static profile that only allows the export's own sizes leaves nothing to check.
    static = {axis: Profile(2, 2, 2) for axis in "TEL"}
    assert parity_cases(static, {"T": 2, "E": 2, "L": 2}) == []
