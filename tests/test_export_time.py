"""benchmarks/export_time.py: an export's stages timed into the results files, from the
manifest's export_seconds. Times are only checked to exist and add up; no limit is asserted."""

from __future__ import annotations

import json

import pytest
from conftest import SHIPPED_CHECKPOINT

from benchmarks import export_time

pytestmark = pytest.mark.slow  # a whole export with parity (about a minute)


def test_export_time_writes_every_stage(tmp_path, capsys):
    results = export_time.main([
        "--checkpoint", str(SHIPPED_CHECKPOINT), "--size", "64x96", "--frames", "1:3:6",
        "--expressions", "1:1:4", "--precision", "fp16", "--out", str(tmp_path), "--tag", "t",
        "--keep", str(tmp_path / "bundle"),
    ])  # fmt: skip
    data = json.loads((tmp_path / "export-t.json").read_text())
    assert data == json.loads(json.dumps(results))
    seconds = data["seconds"]
    for stage in ("load model", "torch.onnx.export video", "parity fp32", "parity fp16"):
        assert seconds[stage] >= 0, stage
    assert seconds["total"] >= sum(v for k, v in seconds.items() if k != "total") - 1.0
    assert data["peak_rss_mb"] > 0 and data["nodes"]["video.fp16"] > 0
    assert data["setting"]["precisions"] == ["fp32", "fp16"]
    assert data["machine"]["cpu_flags"]  # the ISA flags beside the figure
    printed = capsys.readouterr().out
    assert "| parity fp32 |" in printed and "FP32 + FP16 with parity" in printed
    assert (tmp_path / "bundle" / "manifest.json").is_file()  # --keep keeps it
