"""onnxruntime's allocation under a memory budget (``OnnxRuntimeBackend(cpu_arena=...)``): its
settings, the shared arena's sessions, and a budget that runs onnxruntime as its memory was
measured (``benchmarks/memory.py --ort-arena``, ``runtime.budget.measured_arena``)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import video_feeds

from runtime.backends.ort import ARENA_SETTINGS, check_arena
from runtime.budget import measured_arena
from runtime.manifest import Manifest


def test_arena_settings_are_read_in_both_forms_and_anything_else_is_refused():
    assert [check_arena(name) for name in ARENA_SETTINGS] == [True, False, "shared"]
    assert [check_arena(value) for value in (True, False, "shared")] == [True, False, "shared"]
    for bad in ("bogus", 1, 0, None, "Shared"):
        with pytest.raises(ValueError, match=r"cpu_arena .* is not one of True, False, 'shared'"):
            check_arena(bad)


def test_the_shared_arena_serves_each_bounded_session_and_shrinks_after_each_run(paper_bundle):
    """With cpu_arena="shared" every session takes its tensors from the process's arena
    (``session.use_env_allocators``) without buffer reuse or a memory pattern, each run ends
    with the arena shrunk, and two runs in a row give the default arena's outputs."""
    from runtime.backends import load_backend

    manifest = Manifest.load(paper_bundle)
    frames, words = video_feeds(manifest, 2)
    reference = load_backend(manifest, "video", "onnxruntime").infer({"frames": frames} | words)
    parts = {}
    for graph in ("video_encoder", "video_decoder", "video"):
        parts[graph] = backend = load_backend(manifest, graph, "onnxruntime", cpu_arena="shared")
        options = backend._session.get_session_options()
        assert (options.enable_mem_reuse, options.enable_mem_pattern) == (False, False), graph
        assert options.get_session_config_entry("session.use_env_allocators") == "1", graph
        assert backend._run_options is not None and backend.cpu_arena == "shared", graph
    for _ in range(2):  # the second run allocates from an arena the first shrank
        levels = parts["video_encoder"].infer({"frames": frames})
        split = parts["video_decoder"].infer(levels | words)
        whole = parts["video"].infer({"frames": frames} | words)
        for outputs in (split, whole):
            np.testing.assert_allclose(outputs["pred_masks"], reference["pred_masks"], atol=1e-5)
    default = load_backend(manifest, "video", "onnxruntime")  # not opted in: its own arena
    with pytest.raises(Exception, match="does not have configuration"):
        default._session.get_session_options().get_session_config_entry(
            "session.use_env_allocators")  # fmt: skip
    assert default.cpu_arena is True and default._run_options is None


@pytest.mark.slow
def test_a_budget_runs_onnxruntime_as_its_memory_was_measured(paper_bundle, clip, tmp_path):
    """``benchmarks/memory.py --ort-arena shared --record`` keeps the setting with the models;
    a budgeted predictor then loads its video graphs in the shared arena (its text graph
    without an arena), a record without the setting runs without an arena, a setting the
    caller gives wins, and the masks are those without a budget."""
    from benchmarks.memory import main
    from runtime.predictor import RVOSPredictor

    bundle = tmp_path / "bundle"
    shutil.copytree(paper_bundle, bundle)
    results = main(["--bundle", str(bundle), "--backends", "ort", "--frames", "2", "5",
                    "--expressions", "1", "2", "--modes", "video", "--ort-arena", "shared",
                    "--record", "--out", str(tmp_path / "results")])  # fmt: skip
    assert all(p["status"] == "measured" for p in results["points"]), results["points"]
    manifest = Manifest.load(bundle)
    assert manifest.data["memory"]["onnxruntime/fp32"]["measured"]["setting"]["ort_arena"] == (
        "shared")  # fmt: skip
    assert measured_arena(manifest, "fp32") == "shared"
    assert measured_arena(manifest, "fp16") is False  # nothing recorded: the bounded default

    texts = ["the small red circle moving left", "the square above the green triangle"]
    reference = RVOSPredictor(bundle, backend="onnxruntime", memory_budget=None).segment(
        clip, texts, window=5)  # fmt: skip
    budgeted = RVOSPredictor(bundle, backend="onnxruntime", memory_budget="100GB")
    result = budgeted.segment(clip, texts, window=5)
    assert result.plan is not None and budgeted.video_backend.cpu_arena == "shared"
    assert budgeted.text_backend.cpu_arena is False
    assert (result.masks == reference.masks).mean() > 0.999
    np.testing.assert_array_equal(result.queries, reference.queries)
    given = RVOSPredictor(bundle, backend="onnxruntime", memory_budget="100GB", cpu_arena=True)
    given.prepare(given.plan(5, 2))
    assert given.video_backend.cpu_arena is True

    data = json.loads((bundle / "manifest.json").read_text())
    del data["memory"]["onnxruntime/fp32"]["measured"]["setting"]["ort_arena"]
    (bundle / "manifest.json").write_text(json.dumps(data))
    older = RVOSPredictor(bundle, backend="onnxruntime", memory_budget="100GB", verify=False)
    older.prepare(older.plan(5, 2))
    assert older.video_backend.cpu_arena is False
