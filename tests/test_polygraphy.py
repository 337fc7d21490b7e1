"""Polygraphy on a bundle: the data loader's feeds, the FP16 and INT8 graphs compared with the
FP32 graph through Polygraphy's onnxruntime runner and Comparator, and docs/polygraphy.md's
recipes run as written (the GPU ones only where TensorRT and a GPU are)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export.parity import FP16_TOLERANCE, INT8_QDQ_TOLERANCE, Tolerance
from export.polygraphy_data import graph_feeds, parse_sizes, resolve_sizes, trt_shape_args
from runtime.backends import OnnxRuntimeBackend, check_feeds
from runtime.manifest import BundleError, Manifest

pytest.importorskip("polygraphy", reason="polygraphy is not installed (the export extra)")

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "polygraphy.md"
POLYGRAPHY = Path(sys.executable).with_name("polygraphy")


# -- the data loader -----------------------------------------------------------------------


def test_feeds_are_the_graphs_inputs_at_the_opt_or_named_sizes(tiny_bundle):
    manifest = Manifest.load(tiny_bundle)
    opt = {axis: bounds["opt"] for axis, bounds in manifest.profiles.items()}
    for graph in ("text_encoder", "video"):
        feeds = graph_feeds(manifest, graph)
        axes = check_feeds(graph, manifest.inputs(graph), manifest.profiles, feeds)
        assert axes == {axis: opt[axis] for axis in axes} and axes
    named = graph_feeds(manifest, "video", {"T": 5, "E": 2, "L": 7})
    assert check_feeds("video", manifest.inputs("video"), manifest.profiles, named) == {
        "T": 5, "E": 2, "L": 7,
    }  # fmt: skip
    # A real clip (textured background and shapes), not a constant or uniform noise.
    frames = named["frames"]
    assert frames.dtype == np.uint8 and frames.std() > 10 and len(np.unique(frames)) > 50
    assert not np.array_equal(frames[0], frames[-1])  # the objects move


def test_text_features_come_from_the_text_graph(tiny_bundle):
    manifest = Manifest.load(tiny_bundle)
    sizes = {"E": 3, "L": 9}
    tokens = graph_feeds(manifest, "text_encoder", sizes)
    video = graph_feeds(manifest, "video", sizes)
    np.testing.assert_array_equal(video["attention_mask"], tokens["attention_mask"])
    with OnnxRuntimeBackend(manifest, "text_encoder", "fp32", threads=1) as text:
        expected = text.infer(tokens)["text_features"]
    np.testing.assert_array_equal(video["text_features"], expected)
    # Tokens are words of the expressions (not pad) where the mask says so, pad after.
    pad = manifest.preprocessing["pad_token_id"]
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    assert (ids[mask == 0] == pad).all() and mask[:, 0].all()


def test_sizes_are_checked_before_any_work(tiny_bundle):
    manifest = Manifest.load(tiny_bundle)
    assert parse_sizes(" T=5, E=2 ") == {"T": 5, "E": 2} and parse_sizes(None) == {}
    with pytest.raises(ValueError, match=r"'T=0' is not AXIS=N"):
        parse_sizes("T=0")
    with pytest.raises(ValueError, match=r"T=99 is outside .* profile 1..6"):
        resolve_sizes(manifest, {"T": 99})
    with pytest.raises(ValueError, match=r"axes \['X'\] are not in the manifest's profiles"):
        resolve_sizes(manifest, {"X": 1})
    with pytest.raises(BundleError, match="no graph 'audio'"):
        graph_feeds(manifest, "audio")


def test_trt_shape_arguments_follow_the_profile(tiny_bundle):
    args = trt_shape_args(tiny_bundle, "video")
    assert args[0] == "--trt-min-shapes" and "frames:[1,64,96,3]" in args
    assert args[args.index("--trt-max-shapes") + 1] == "frames:[6,64,96,3]"


# -- the CI comparison: Polygraphy's onnxruntime runner and Comparator -------------------------


def test_fp16_and_int8_graphs_against_fp32_through_polygraphy(tiny_int8):
    from export.polygraphy_compare import compare_variants

    candidates = {"fp16": FP16_TOLERANCE, "int8-tensorrt": INT8_QDQ_TOLERANCE}
    report = compare_variants(tiny_int8, "video", candidates)
    for precision, entry in report.items():
        assert entry["passed"], (precision, entry)
        assert set(entry["outputs"]) == {"pred_logits", "pred_boxes", "pred_masks"}
        for name, output in entry["outputs"].items():
            assert output["passed"], (precision, name, output)
            measured = output.get("quantile_abs_error", output["max_abs_error"])
            assert 0 < measured <= output["atol"], (precision, name, output)
    text = compare_variants(tiny_int8, "text_encoder", {"fp16": FP16_TOLERANCE})
    assert text["fp16"]["passed"], text


def test_polygraphy_verdict_is_the_parity_rule(tiny_bundle):
    """Held to 1e-4 of each output's range, the FP16 graph fails in Polygraphy exactly where
    the parity rule (max |error| <= atol + rtol * max|FP32|) says it does."""
    from export.polygraphy_compare import compare_variants

    report = compare_variants(tiny_bundle, "video", {"fp16": Tolerance(0.0, 1e-4)})["fp16"]
    assert not report["passed"]
    for output in report["outputs"].values():
        assert output["passed"] == (output["max_abs_error"] <= output["atol"])
    with pytest.raises(BundleError, match="int8-tensorrt"):
        compare_variants(tiny_bundle, "video", {"int8-tensorrt": INT8_QDQ_TOLERANCE})


# -- docs/polygraphy.md's recipes, as written ----------------------------------------------


def recipes() -> dict[str, tuple[str, bool]]:
    """name -> (the bash block after ``<!-- recipe: name [gpu] -->``, needs a GPU)."""
    pattern = re.compile(r"<!-- recipe: ([\w-]+)( gpu)? -->\n```bash\n(.*?)```", re.DOTALL)
    found = {m.group(1): (m.group(3), bool(m.group(2))) for m in pattern.finditer(DOC.read_text())}
    assert found, f"no recipes in {DOC}"
    return found


def run_recipe(name: str, bundle: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    script, _ = recipes()[name]
    script = script.replace("bundles/tiny", str(bundle))
    script = script.replace("export/polygraphy_data.py", str(REPO / "export/polygraphy_data.py"))
    env = os.environ | {
        "PATH": f"{POLYGRAPHY.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip


def test_every_recipe_has_a_test():
    assert set(recipes()) == {"inspect", "onnxrt-fp16", "trt-vs-onnxrt", "debug-precision",
                              "sanitize"}  # fmt: skip
    assert [name for name, (_, gpu) in recipes().items() if gpu] == [
        "trt-vs-onnxrt", "debug-precision",
    ]  # fmt: skip


def test_recipe_inspect(tiny_bundle, tmp_path):
    run = run_recipe("inspect", tiny_bundle, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "frames [dtype=uint8, shape=('T', 64, 96, 3)]" in run.stdout
    assert "pred_masks [dtype=float32" in run.stdout


def test_recipe_onnxrt_fp16(tiny_bundle, tmp_path):
    run = run_recipe("onnxrt-fp16", tiny_bundle, tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (tmp_path / "fp32.json").is_file()
    assert "Passed: 2/2 iterations" in run.stdout, run.stdout[-3000:]


def test_recipe_sanitize_folds_nothing(tiny_bundle, tmp_path):
    pytest.importorskip("onnx_graphsurgeon", reason="onnx-graphsurgeon (the export extra)")
    run = run_recipe("sanitize", tiny_bundle, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"Original:\s+(\d+), After Folding:\s+\1 \|\s+0 Nodes Folded", run.stdout)


def _tensorrt_status() -> str:
    from runtime.backends import available_backends

    return available_backends()["tensorrt"]


# Decided at collection, so that the session's bundle is not exported only to be skipped.
needs_tensorrt = pytest.mark.skipif(_tensorrt_status() != "available", reason=_tensorrt_status())


@pytest.mark.gpu
@needs_tensorrt
def test_recipe_trt_vs_onnxrt(tiny_bundle, tmp_path):
    run = run_recipe("trt-vs-onnxrt", tiny_bundle, tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "PASSED" in run.stdout


@pytest.mark.gpu
@needs_tensorrt
def test_recipe_debug_precision(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    run = run_recipe("debug-precision", copy, tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
