"""benchmarks/long_video.py: the segment command's peak memory per video length (each in a
process of its own) and identity across windows, written to the results files. Figures are
only checked to exist and be consistent; no limit is asserted."""

from __future__ import annotations

import json

import pytest

from benchmarks import long_video

pytestmark = pytest.mark.slow  # two segment runs in processes of their own


def test_long_video_benchmark_writes_memory_and_identity(tiny_bundle, tmp_path, capsys):
    results = long_video.main([
        "--bundle", str(tiny_bundle), "--memory-frames", "8", "20", "--memory-size", "48x64",
        "--videos", "1", "--frames", "14", "--threads", "1", "--out", str(tmp_path),
        "--tag", "t",
    ])  # fmt: skip
    data = json.loads((tmp_path / "long-video-t.json").read_text())
    assert data == json.loads(json.dumps(results))
    assert [row["frames"] for row in data["memory"]] == [8, 20]
    assert all(row["exit_code"] == 0 and row["peak_rss_mb"] > 0 for row in data["memory"])
    ratio = data["memory"][1]["peak_rss_mb"] / data["memory"][0]["peak_rss_mb"]
    assert data["memory_ratio"] == pytest.approx(ratio)
    identity = data["identity"]
    assert identity["window"] == 6 and identity["overlap"] == 1  # the test bundle's T max is 6
    for name, row in identity["summary"].items():
        assert 0.0 <= row["J&F"] <= 1.0 and row["boundaries"] >= 2, name
    # No shared frames, no agreement to measure: independent windows record no switch.
    assert identity["summary"]["independent"]["recorded_switches"] == 0
    assert data["machine"]["cpu_flags"]
    assert "| overlap, linked (weight 0.1) |" in capsys.readouterr().out
