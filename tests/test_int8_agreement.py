"""benchmarks/int8_agreement.py: each CPU row's tracks against onnxruntime FP32 on held-out
clips, every row in a process of its own, on the shared calibrated test bundle."""

from __future__ import annotations

import json

import pytest

from benchmarks import int8_agreement
from benchmarks.report import RESULTS_DIR


def test_rows_against_onnxruntime_fp32(tiny_int8, synth_data, tmp_path):
    pytest.importorskip("openvino")
    results = int8_agreement.main([
        "--bundle", str(tiny_int8), "--data", str(synth_data), "--clips", "2",
        "--backends", "ort,ort-int8,ov", "--threads", "1", "--out", str(tmp_path),
        "--tag", "t",
    ])  # fmt: skip
    rows = {row["backend"]: row for row in results["rows"]}
    assert rows["ort"]["status"] == "ran" and "agreement" not in rows["ort"]
    # FP32 in another runtime: the same tracks, within float rounding.
    same = rows["ov"]["agreement"]
    assert same["same_query"] == 1.0 and same["mask_iou"] > 0.99
    assert same["tracks"] == results["setting"]["tracks"] > 0
    int8 = rows["ort-int8"]["agreement"]
    assert 0.0 < int8["mask_iou"] <= 1.0 and int8["max_mask_logit_error"] > 0
    saved = json.loads((tmp_path / "agreement-t.json").read_text())
    assert [r["backend"] for r in saved["rows"]] == ["ort", "ort-int8", "ov"]
    markdown = (tmp_path / "agreement-t.md").read_text()
    assert "| ov | openvino | fp32 |" in markdown and "against **ort**" in markdown


def test_rows_are_checked_before_any_work():
    with pytest.raises(ValueError, match="not such rows: \\['torch'\\]"):
        int8_agreement.check_rows("torch,ort")
    with pytest.raises(ValueError, match="a reference and at least one more"):
        int8_agreement.check_rows("ort")


@pytest.mark.parametrize(
    "path",
    sorted(RESULTS_DIR.glob("*/agreement-*.json")),
    ids=lambda p: p.parent.name + "/" + p.stem,
)
def test_committed_results_render_as_committed(path):
    results = json.loads(path.read_text())
    assert int8_agreement.format_markdown(results) == path.with_suffix(".md").read_text()
