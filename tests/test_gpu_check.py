"""``make gpu-check`` (benchmarks/gpu_check.py): on a machine without a GPU it ends cleanly and
reports every GPU part as skipped with its reason; its PyTorch parts' code runs on the CPU with
a small model (the same functions, host clock), and its report renders their figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.gpu_engines import agreement
from benchmarks.gpu_report import format_report
from benchmarks.gpu_torch import time_paper_setting, train_step
from export.parity import FP32_TOLERANCE, INT8_QDQ_TOLERANCE

REPO = Path(__file__).resolve().parents[1]
GPU_PARTS = ["torch", "train", "onnxruntime-gpu", "engines"]


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the parts run, not skip")
def test_without_a_gpu_every_gpu_part_is_skipped_with_its_reason(tmp_path):
    # The tests part is left out here: it runs this suite's gpu tests (tests/test_*.py -m gpu).
    run = run_check("--parts", "environment", *GPU_PARTS, "--out", str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    parts = report["parts"]
    assert list(parts) == ["environment", *GPU_PARTS]
    assert parts["environment"]["status"] == "ran"
    assert parts["environment"]["results"]["cuda_available"] is False
    for name in GPU_PARTS:
        assert parts[name]["status"] == "skipped", (name, parts[name])
    assert "sees no CUDA GPU" in parts["torch"]["reason"]
    assert "sees no CUDA GPU" in parts["train"]["reason"]
    assert "CUDAExecutionProvider" in parts["onnxruntime-gpu"]["reason"]
    assert parts["engines"]["reason"].startswith("TensorRT: ")
    markdown = (tmp_path / "gpu-check.md").read_text()
    assert markdown == run.stdout
    for name in GPU_PARTS:
        assert f"| {name} | skipped |" in markdown
    # Nothing is overwritten without --overwrite, and that is found before any work.
    again = run_check("--parts", "environment", "--out", str(tmp_path))
    assert again.returncode == 2 and "pass --overwrite" in again.stderr
    replaced = run_check("--parts", "environment", "--out", str(tmp_path), "--overwrite")
    assert replaced.returncode == 0


# What the lent GPU machine lacks (it has torch with CUDA, onnxruntime, timm, transformers,
# einops, safetensors, tokenizers and numpy): importing any of these there fails.
ABSENT_THERE = ("tqdm", "onnx", "onnxscript", "onnxslim", "openvino", "polygraphy", "pytest",
                "PIL", "cv2", "scipy", "matplotlib", "torchvision", "onnx_graphsurgeon", "h5py",
                "pycocotools", "tensorrt", "cuda", "pycuda")  # fmt: skip


def test_runs_with_only_the_gpu_machines_packages(tmp_path):
    """In a Python where those packages do not import (a ``None`` entry in ``sys.modules`` is
    what Python does for a package that is not there), the check still ends cleanly: the code
    each GPU part runs imports, and the parts that need a missing package say which."""
    code = (
        "import runpy, sys\n"
        f"for name in {ABSENT_THERE!r}: sys.modules[name] = None\n"
        "import benchmarks.gpu_torch, benchmarks.gpu_engines, benchmarks.runners, "
        "benchmarks.workload, export.engine, export.graphs, proxyformer.model\n"
        f"sys.argv = ['gpu_check', '--parts', 'environment', 'tests', *{GPU_PARTS!r}, "
        f"'--out', {str(tmp_path)!r}]\n"
        "runpy.run_module('benchmarks.gpu_check', run_name='__main__')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=300, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    parts = json.loads((tmp_path / "gpu-check.json").read_text())["parts"]
    environment = parts["environment"]["results"]
    assert not any(environment["packages"][name] for name in ("tqdm", "onnx", "pytest", "PIL"))
    assert parts["tests"] == parts["tests"] | {
        "status": "skipped",
        "reason": "pytest is not installed (the dev extra); the gpu tests cannot run",
    }
    assert "tensorrt is not installed" in parts["engines"]["reason"]
    if not torch.cuda.is_available():
        assert all(parts[name]["status"] == "skipped" for name in GPU_PARTS)


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    run = run_check("--tiny-bundle", str(tmp_path), "--out", str(tmp_path))
    assert run.returncode == 2 and "--tiny-bundle" in run.stderr
    assert "no manifest.json" in run.stderr
    assert not (tmp_path / "gpu-check.json").exists()


def test_torch_parts_run_on_a_cpu_with_a_small_model():
    """The paper-setting timing and the AMP training step, on the CPU with the tiny preset (the
    paper's architecture shrunk): every row of the report is produced by the code the GPU runs
    (the export wrappers under autocast, the model's forward, the paper's losses, AdamW)."""
    deadline = time.monotonic() + 300
    timing = time_paper_setting(deadline, frames=2, size=(64, 96), expressions=(1, 2), warmup=0,
                                runs=1, preset="tiny", device="cpu",
                                modes=("fp32", "bf16-autocast", "cuda-graph-fp16"))  # fmt: skip
    rows = {(row["mode"], row["expressions"]): row for row in timing["rows"]}
    assert set(rows) == {(m, e) for m in ("fp32", "bf16-autocast", "cuda-graph-fp16")
                         for e in (1, 2)}  # fmt: skip
    for expressions in (1, 2):
        for mode in ("fp32", "bf16-autocast"):
            row = rows[mode, expressions]
            assert 0 < row["p50_ms"] <= row["p90_ms"], row
        assert rows["cuda-graph-fp16", expressions]["skipped"] == "CUDA graphs need a CUDA device"
    step = train_step(deadline, frames=2, size=(64, 96), batch=2, warmup=0, steps=2,
                      preset="tiny", device="cpu")  # fmt: skip
    assert step["amp"] == "bfloat16" and not step["grad_scaler"] and step["finite"]
    assert len(step["losses"]) == 2 and step["step_p50_ms"] > 0
    report = {
        "started_utc": "2026-01-01T00:00:00Z", "seconds": 1.0, "budget_s": 480.0,
        "command": "python -m benchmarks.gpu_check",
        "machine": {"cpu": "test CPU", "cores": 2, "gpu": None},
        "parts": {"torch": {"status": "ran", "seconds": 1.0, "results": timing},
                  "train": {"status": "ran", "seconds": 1.0, "results": step}},
    }  # fmt: skip
    text = format_report(report)
    assert "× paper's 109 ms" in text and "| fp32 | 2 |" in text
    assert "CUDA graphs need a CUDA device" in text and "Training step with AMP" in text


def test_agreement_uses_the_parity_rule_per_output():
    rng = np.random.default_rng(0)
    reference = {"pred_masks": rng.standard_normal((2, 3, 5, 4, 6)).astype(np.float32) * 20,
                 "pred_boxes": rng.random((2, 3, 5, 4)).astype(np.float32),
                 "pred_logits": rng.standard_normal((2, 3, 5)).astype(np.float32)}  # fmt: skip
    same = agreement(reference, reference, FP32_TOLERANCE)
    assert same["passed"] and set(same["outputs"]) == set(reference)
    noisy = {name: value + 0.01 * np.abs(value).max() for name, value in reference.items()}
    assert agreement(noisy, reference, INT8_QDQ_TOLERANCE)["passed"]
    strict = agreement(noisy, reference, FP32_TOLERANCE)
    assert not strict["passed"] and not strict["outputs"]["pred_masks"]["ok"]


def test_bundle_rows_on_the_cpu(tiny_bundle, tmp_path):
    """The engines and onnxruntime-gpu parts' plumbing with onnxruntime on the CPU in place of
    the GPU backends: the given bundle is copied (never written), the call's feeds fit its
    profile, INT8 is calibrated when missing, and each row is checked against FP32 and timed."""
    from benchmarks.gpu_engines import (
        _feeds,
        _reference,
        _row,
        _tolerance,
        ensure_int8,
        obtain_bundle,
    )
    from benchmarks.runners import BundleRunner
    from runtime.backends import load_backend
    from runtime.manifest import Manifest

    before = sorted(p.name for p in tiny_bundle.iterdir())
    bundle = obtain_bundle("tiny", tiny_bundle, tmp_path, time.monotonic() + 300)
    assert bundle != tiny_bundle and (bundle / "manifest.json").is_file()
    ensure_int8(bundle, tmp_path, frames=3)
    assert sorted(p.name for p in tiny_bundle.iterdir()) == before  # the given one untouched
    manifest = Manifest.load(bundle)
    assert "int8-tensorrt" in manifest.precisions("video")
    feeds = _feeds(manifest, "tiny")
    assert feeds["frames"].shape[0] == 6 and feeds["input_ids"].shape == (2, 12)  # clamped
    reference, _ = _reference(manifest, feeds)
    for precision in ("fp16", "int8-tensorrt"):
        text = "fp16" if precision == "fp16" else "fp32"
        runner = BundleRunner(load_backend(manifest, "text_encoder", "onnxruntime", text),
                              load_backend(manifest, "video", "onnxruntime", precision))  # fmt: skip
        row = _row(runner, feeds, reference, _tolerance(manifest, precision), warmup=0, runs=2)
        runner.close()
        assert row["vs_onnxruntime_fp32"]["passed"], (precision, row)
        assert 0 < row["p50_ms"] <= row["p90_ms"]


def test_a_pytest_that_cannot_start_is_a_skip_with_its_reason(tmp_path):
    """On a machine without torch, tests/conftest.py cannot import and pytest exits before
    collecting (exit code 4): the tests part says so instead of reporting an empty run."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    run = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--parts", "tests",
                          "--out", str(tmp_path / "out")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    tests = json.loads((tmp_path / "out" / "gpu-check.json").read_text())["parts"]["tests"]
    assert tests["status"] == "skipped", tests
    assert "pytest could not start here" in tests["reason"] and "torch" in tests["reason"]
