"""Latency benchmark on a tiny bundle: rows timed or skipped with a reason, E sweep, GEMM peaks,
files written. Timings are only checked to exist; no wall-clock limit is asserted."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from benchmarks import latency  # the command line
from benchmarks.machine import cpu_flags, cpu_line, isa_cap, machine_slug
from benchmarks.report import RESULTS_DIR, format_markdown
from benchmarks.runners import SkipBackend, open_runner
from benchmarks.suite import run_benchmark
from benchmarks.targets import evaluate_targets
from benchmarks.timing import summarize_times

BACKENDS = [
    "torch",
    "torch-model",
    "torch-bf16",
    "ort",
    "ort-fp16",
    "ort-int8",
    "ov",
    "ov-bf16",
    "trt-fp16",
]
COMMITTED = sorted(RESULTS_DIR.glob("*/latency-*.json"))


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("latency")


@pytest.fixture(scope="module")
def results(tiny_bundle, out_dir) -> dict:
    return run_benchmark(
        tiny_bundle, BACKENDS, warmup=1, runs=2, torch_device="cpu", gemm_size=256,
        profile=True, out_dir=out_dir, tag="test", command="pytest",
        isolate=False,  # one process for nine rows; processes of their own: test_latency_isolation
    )  # fmt: skip


def _rows(results: dict) -> dict[str, dict]:
    return {row["backend"]: row for row in results["backends"]}


def test_files_written(results, out_dir):
    data = json.loads((out_dir / "latency-test.json").read_text())
    assert data["setting"]["frames"] == 3  # the bundle's T profile opt
    assert data["setting"]["text_length"] == 12  # 20 clipped to the bundle's L max
    assert data["bundle"]["video_onnx_sha256"]
    assert data["command"] == "pytest"
    markdown = (out_dir / "latency-test.md").read_text()
    assert "| backend |" in markdown and "## Targets" in markdown and "109 ms" in markdown
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out_dir / "latency-test.png").stat().st_size > 0


def test_unavailable_rows_skipped_with_reason(results):
    rows = _rows(results)
    assert rows["trt-fp16"]["status"] == "skipped"
    assert rows["trt-fp16"]["reason"]
    # The bundle has no INT8 variant: skipped, saying how to make one.
    assert rows["ort-int8"]["status"] == "skipped"
    assert "calibrat" in rows["ort-int8"]["reason"]
    assert "ort-int8-trt" not in rows


def test_timed_rows_have_stats_and_ratios(results):
    rows = _rows(results)
    for name in ("torch", "ort", "ort-fp16"):
        row = rows[name]
        assert row["status"] == "timed", row.get("reason")
        total = row["latency"]["total"]
        assert total["runs"] == 2
        assert 0 < total["min"] <= total["p50"] <= total["p90"] <= total["p99"] <= total["max"]
        assert row["latency"]["text"]["p50"] > 0 and row["latency"]["video"]["p50"] > 0
        assert row["speedup_vs_torch"] > 0 and row["time_ratio_vs_torch"] > 0
        assert row["gflops"] > 0 and row["gflops_per_s"] > 0 and row["fraction_of_peak"] > 0
    assert rows["torch"]["speedup_vs_torch"] == pytest.approx(1.0)
    assert rows["ort-fp16"]["peak"] == "cpu bf16"


def test_openvino_rows(results):
    """OpenVINO FP32 and BF16 rows in the same run, or skipped saying why (not installed, a CPU
    without BF16); BF16 is held against the BF16 GEMM peak and runs both graphs in BF16."""
    from runtime.backends import (
        AVAILABLE,
        BackendUnavailable,
        available_backends,
        check_capabilities,
    )

    rows = _rows(results)
    status = available_backends()["openvino-cpu"]
    if status != AVAILABLE:
        assert rows["ov"]["status"] == rows["ov-bf16"]["status"] == "skipped"
        assert "openvino" in rows["ov"]["reason"]
        return
    ov, bf16 = rows["ov"], rows["ov-bf16"]
    assert ov["status"] == "timed", ov.get("reason")
    assert ov["runtime"] == "openvino" and ov["device"] == "cpu" and ov["peak"] == "cpu fp32"
    assert (ov["text_precision"], ov["video_precision"]) == ("fp32", "fp32")
    assert ov["latency"]["total"]["p50"] > 0 and ov["fraction_of_peak"] > 0

    from runtime.backends.openvino import cpu_capabilities, shared_core

    try:
        check_capabilities("bf16", cpu_capabilities(shared_core()))
    except BackendUnavailable as error:  # a CPU without BF16: skipped, naming its capabilities
        assert bf16["status"] == "skipped" and str(error) in bf16["reason"]
        return
    assert bf16["status"] == "timed", bf16.get("reason")
    assert (bf16["text_precision"], bf16["video_precision"]) == ("bf16", "bf16")
    assert bf16["peak"] == "cpu bf16"
    # The files timed are the fp32 graphs (bf16 is a way of running them).
    assert bf16["sha256"] == ov["sha256"] == rows["ort"]["sha256"]


def test_e_sweep(results):
    assert results["setting"]["e_sweep"] == [1, 2, 4]
    for name in ("torch", "ort", "ort-fp16"):
        entries = results["e_sweep"][name]
        assert [entry["expressions"] for entry in entries] == [1, 2, 4]
        assert all(entry["p50"] > 0 for entry in entries)
        assert entries[0]["ratio_to_first"] == pytest.approx(1.0)
    # More expressions, more work: the text-dependent part runs once per expression.
    gflops = results["gflops"]
    assert gflops["1"]["total"] < gflops["2"]["total"] < gflops["4"]["total"]


def test_gemm_peaks_and_targets(results):
    cpu = results["peaks"]["cpu"]
    for key in ("fp32", "fp32_numpy", "bf16", "int8"):
        assert cpu[key]["gflops"] > 0, cpu[key]
    names = [target["name"] for target in results["targets"]["targets"]]
    amx = ["best_cpu_vs_best_torch", "best_cpu_fraction_of_bf16_peak"]
    assert names == ["ort_fp32_vs_torch", "int8_vs_ort_fp32", "e4_vs_e1", "best_cpu_vs_ort_fp32",
                     *(amx if results["peaks"]["cpu_flags"]["amx_bf16"] else []),
                     "best_cpu_rss_vs_ort_fp32"]  # fmt: skip
    by_name = dict(zip(names, results["targets"]["targets"]))
    assert isinstance(by_name["ort_fp32_vs_torch"]["passed"], bool)
    assert by_name["int8_vs_ort_fp32"]["passed"] is None  # no INT8 row timed: says why
    assert by_name["int8_vs_ort_fp32"]["reason"]
    assert not results["targets"]["at_paper_setting"]


def test_ort_profile_tables(results):
    table = results["profiles"]["ort"]
    assert table["op_types"] and table["total_ms"] > 0
    assert sum(row["percent"] for row in table["op_types"]) <= 100.0 + 1e-6
    assert {"text_encoder", "video"} == set(table["files"])
    assert all(Path(path).is_file() for path in table["files"].values())


def test_openvino_profile_tables(results):
    if "ov" not in results["profiles"]:
        pytest.skip("OpenVINO is not installed here")
    table = results["profiles"]["ov"]
    # Op types carry the kernel that ran them: the f32 row's GEMMs are f32 kernels.
    gemms = [r["op_type"] for r in table["op_types"] if r["op_type"].startswith("FullyConnected")]
    assert gemms and all("f32" in op for op in gemms), table["op_types"]
    assert set(table["graph_ms"]) == {"text_encoder", "video"} and table["total_ms"] > 0
    nodes = json.loads(Path(table["files"]["nodes"]).read_text())
    assert sum(n["ms"] for g in nodes.values() for n in g) == pytest.approx(table["total_ms"])


def test_summarize_times():
    stats = summarize_times([0.001, 0.002, 0.003, 0.004, 0.010])
    assert stats["p50"] == pytest.approx(3.0)
    assert stats["min"] == pytest.approx(1.0) and stats["max"] == pytest.approx(10.0)
    assert stats["spread"] == pytest.approx((stats["p90"] - stats["p50"]) / stats["p50"])


def test_machine_slug():
    slug = machine_slug("Intel(R) Xeon(R) Processor @ 2.50GHz", 2)
    assert slug == "cpu-xeon-2.50ghz-2c"
    assert machine_slug("x", 2, gpu="NVIDIA H100 80GB HBM3") == "gpu-h100-80gb-hbm3"


def test_isa_cap_masks_the_flags_it_forbids(monkeypatch):
    """ONEDNN_MAX_CPU_ISA emulates an older CPU: the reported flags drop what lies above it, and
    every report names the cap."""
    real = cpu_flags()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_vnni")
    assert isa_cap() == "AVX512_CORE_VNNI"
    capped = cpu_flags()
    assert not any(capped[f] for f in ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16"))
    assert capped["avx512_vnni"] == real["avx512_vnni"]  # below the cap: as the CPU has it
    line = cpu_line({"cpu": "x", "cores": 2, "cpu_flags": capped, "isa_cap": isa_cap()})
    assert "ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI" in line
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")
    assert isa_cap() is None and cpu_flags() == real
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX9000")
    with pytest.raises(ValueError, match="ONEDNN_MAX_CPU_ISA='AVX9000' is not one of"):
        cpu_flags()


def test_frames_outside_profile(tiny_bundle):
    with pytest.raises(ValueError, match="outside the bundle's T profile"):
        run_benchmark(tiny_bundle, ["ort"], frames=9, write=False)


def test_command_line(tiny_bundle, tmp_path, capsys):
    latency.main([
        "--bundle", str(tiny_bundle), "--backends", "ort", "--e-sweep", "1", "--runs", "1",
        "--warmup", "0", "--gemm-size", "256", "--out", str(tmp_path), "--tag", "cli",
        "--in-process",
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert "| ort |" in printed and "E=4 / E=1" not in printed
    # In this process: no per-row memory, and the report says so.
    assert "peak RSS GB |" not in printed and "every row ran in this one process" in printed
    data = json.loads((tmp_path / "latency-cli.json").read_text())
    assert data["setting"]["isolated"] is False and "memory" not in data["backends"][0]


def test_tensorrt_row_needs_engines(tiny_bundle):
    from runtime.manifest import Manifest

    # Even where TensorRT runs, a bundle without engines is skipped, saying how to build them.
    status = {"onnxruntime-cpu": "available", "tensorrt": "available"}
    with pytest.raises(SkipBackend, match="build_engine.py"):
        open_runner("trt-int8", Manifest.load(tiny_bundle), None, "cpu", 1, status)


@pytest.mark.parametrize("path", COMMITTED, ids=lambda path: path.stem)
def test_committed_results_render_as_committed(path):
    # The committed results are data: the report code must still read them and write the same
    # markdown that was committed beside them.
    results = json.loads(path.read_text())
    assert format_markdown(results) == path.with_suffix(".md").read_text()


def test_committed_results_exist():
    assert COMMITTED, f"no latency-*.json under {RESULTS_DIR}"


def test_committed_results_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks.plot import write_plot

    results = json.loads(COMMITTED[0].read_text())
    assert write_plot(results, tmp_path / "plot.png").stat().st_size > 0


def _row(name: str, p50: float, device: str = "cpu") -> dict:
    return {"backend": name, "status": "timed", "device": device,
            "latency": {"total": {"p50": p50}}}  # fmt: skip


def test_targets_pass_miss_and_not_evaluated():
    setting = {"preset": "paper-swin-t", "frames": 19, "size": [360, 640]}
    rows = [_row("torch", 30.0), _row("ort", 10.0), _row("ort-int8", 6.0)]
    sweep = {"ort": [{"expressions": 1, "p50": 10.0}, {"expressions": 4, "p50": 20.0}]}
    report = evaluate_targets(rows, sweep, setting)
    by_name = {target["name"]: target for target in report["targets"]}
    assert report["at_paper_setting"] and report["note"] is None
    assert by_name["ort_fp32_vs_torch"]["value"] == pytest.approx(3.0)
    assert by_name["ort_fp32_vs_torch"]["passed"] is True
    assert by_name["int8_vs_ort_fp32"]["passed"] is False  # 1.67x < 2x
    assert by_name["int8_vs_ort_fp32"]["backend"] == "ort-int8"
    assert by_name["e4_vs_e1"]["passed"] is False  # 2x > 1.6x
    gpu = evaluate_targets([_row("torch", 3.0, "cuda"), _row("ort", 10.0)], {}, setting)
    first = gpu["targets"][0]
    assert first["passed"] is None and "cuda" in first["reason"]


def test_torch_rows_and_best_torch_ratio(results):
    """torch-bf16 is held against the BF16 peak; every row's "× vs best torch" is against the
    fastest timed PyTorch row of the run."""
    rows = _rows(results)
    bf16 = rows["torch-bf16"]
    assert bf16["status"] == "timed", bf16.get("reason")
    assert bf16["runtime"] == "torch" and bf16["arithmetic"] == "bf16"
    assert bf16["peak"] == "cpu bf16" and bf16["text_precision"] == "bf16"
    assert rows["torch"]["peak"] == "cpu fp32"
    assert "export wrappers" in rows["torch"]["callable"]
    model = rows["torch-model"]
    assert model["status"] == "timed", model.get("reason")
    assert model["callable"].startswith("model(frames, ids, mask)") and model["peak"] == "cpu fp32"
    assert model["latency"]["video"]["p50"] > 0
    torch_rows = [rows["torch"], model, bf16]
    best = min(torch_rows, key=lambda row: row["latency"]["total"]["p50"])
    assert results["best_torch"] == best["backend"]
    best_p50 = best["latency"]["total"]["p50"]
    for row in results["backends"]:
        if row["status"] == "timed":
            expected = best_p50 / row["latency"]["total"]["p50"]
            assert row["speedup_vs_best_torch"] == pytest.approx(expected)
    assert best["speedup_vs_best_torch"] == pytest.approx(1.0)
    markdown = format_markdown(results)
    assert (
        "× vs best torch |" in markdown and f"fastest PyTorch row ({best['backend']})" in markdown
    )


def test_add_speedups_picks_the_fastest_torch_row():
    from benchmarks.suite import add_speedups

    rows = [
        _row("torch", 30.0) | {"runtime": "torch"},
        _row("torch-bf16", 20.0) | {"runtime": "torch"},
        _row("torch-compile", 15.0) | {"runtime": "torch"},
        _row("ort", 10.0) | {"runtime": "onnxruntime"},
        {"backend": "ov", "status": "skipped", "reason": "x"},
    ]
    assert add_speedups(rows) == "torch-compile"
    by_name = {row["backend"]: row for row in rows}
    assert by_name["ort"]["speedup_vs_torch"] == pytest.approx(3.0)
    assert by_name["ort"]["speedup_vs_best_torch"] == pytest.approx(1.5)
    assert by_name["torch"]["speedup_vs_best_torch"] == pytest.approx(0.5)


def test_peak_for_bf16():
    from benchmarks.gemm import peak_for
    from benchmarks.runners import BACKENDS as SPECS

    peaks = {"cpu": {"fp32": {"gflops": 1.0}, "bf16": {"gflops": 6.0}, "int8": {"gflops": 9.0}},
             "cuda": {"bf16": {"gflops": 100.0}}}  # fmt: skip
    assert peak_for(peaks, "cpu", "bf16") == (6.0, "cpu bf16")
    assert peak_for(peaks, "cpu", "fp16") == (6.0, "cpu bf16")
    assert peak_for(peaks, "cuda", "bf16") == (100.0, "cuda bf16")
    assert SPECS["ov-bf16"].arithmetic == SPECS["torch-bf16"].arithmetic == "bf16"


def test_torch_bf16_agrees_with_fp32(tiny_bundle):
    """BF16 autocast picks the same query as FP32 and its outputs stay close (loosely)."""
    import numpy as np
    import torch

    from benchmarks.runners import TorchRunner
    from benchmarks.workload import load_baseline_model, make_feeds
    from runtime.manifest import Manifest

    manifest = Manifest.load(tiny_bundle)
    model = load_baseline_model(manifest, "cpu")
    feeds = make_feeds(manifest, 3, 1, 12)
    frame_format = manifest.preprocessing["frame_format"]
    fp32 = TorchRunner(model, frame_format, "cpu").outputs(feeds)
    bf16 = TorchRunner(model, frame_format, "cpu", autocast=torch.bfloat16).outputs(feeds)
    for reference, value in zip(fp32, bf16):
        assert value.shape == reference.shape and np.isfinite(value).all()
    logits_32, logits_16 = fp32[0], bf16[0]  # (E, T, N)
    chosen = logits_32.mean(axis=1).argmax(axis=-1)
    assert (logits_16.mean(axis=1).argmax(axis=-1) == chosen).all()
    scale = np.abs(logits_32).max() + 1e-6
    assert np.abs(logits_16 - logits_32).max() / scale < 0.1
    masks_32, masks_16 = fp32[2], bf16[2]
    assert np.abs(masks_16 - masks_32).max() / (np.abs(masks_32).max() + 1e-6) < 0.1


def test_torch_compile_listed_and_skipped_with_reason(tiny_bundle, monkeypatch):
    """torch-compile is a row by name (not a default one: compiling takes minutes); where
    inductor cannot compile it is skipped, saying why (the real compile runs in the slow
    test)."""
    import torch

    from benchmarks.runners import BACKENDS as SPECS
    from benchmarks.runners import DEFAULT_BACKENDS
    from runtime.manifest import Manifest

    assert "torch-compile" in SPECS and "torch-compile" not in DEFAULT_BACKENDS
    assert "torch-bf16" in DEFAULT_BACKENDS
    assert SPECS["torch-compile"].mode == "compile" and SPECS["torch-compile"].arithmetic == "fp32"

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(SkipBackend, match="torch.compile cannot compile here.*no C\\+\\+"):
        open_runner("torch-compile", Manifest.load(tiny_bundle), None, "cpu", 1)


@pytest.mark.slow
def test_torch_compile_row(tiny_bundle):
    """The compiled row is timed (or skipped with the reason), its compile time reported apart."""
    results = run_benchmark(
        tiny_bundle, ["torch", "torch-compile"], e_sweep=(1,), warmup=0, runs=1,
        torch_device="cpu", gemm_size=256, write=False, command="pytest",
    )  # fmt: skip
    row = _rows(results)["torch-compile"]
    if row["status"] == "skipped":
        assert "torch.compile" in row["reason"]
        return
    assert row["status"] == "timed", row.get("reason")
    assert row["peak"] == "cpu fp32" and "compiled" in row["video_precision"]
    assert row["compile_s"] and all(s > 0 for s in row["compile_s"].values())
    assert "compiling took" in format_markdown(results)
