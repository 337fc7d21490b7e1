"""The memory budget (``runtime.budget``) and the split video graph it runs.

The planning rules are checked on models fitted to given points; the split graph against the
one video graph on the paper architecture (``paper_bundle``, exported with ``split=True``); and
the whole path on real measurements: ``benchmarks/memory.py --record`` measures the bundle in
child processes and keeps the models in its manifest, then the predictor and the segment
command plan with them.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from conftest import video_feeds

from runtime.budget import (
    MemoryBudgetError,
    MemoryModel,
    faster_mode,
    format_memory,
    padded_frames,
    parse_memory,
    plan_calls,
)
from runtime.manifest import BundleError, Manifest

GB = 10**9


@pytest.mark.parametrize(
    ("text", "size"),
    [("8GB", 8 * GB), ("8GiB", 8 * 2**30), ("512MiB", 512 * 2**20), ("1.5g", int(1.5 * GB)),
     (" 2 gb ", 2 * GB), (4096, 4096), ("123", 123)],
)  # fmt: skip
def test_parse_memory_reads_sizes(text, size):
    assert parse_memory(text) == size
    if size >= GB:  # what a plan's message shows reads back
        assert parse_memory(format_memory(size)) == pytest.approx(size, rel=1e-2)


@pytest.mark.parametrize("text", ["8 apples", "GB", "-1GB", "0", "", "1e9", "8 GBs"])
def test_parse_memory_refuses_what_it_cannot_read(text):
    with pytest.raises(ValueError, match="memory size"):
        parse_memory(text)
    with pytest.raises(TypeError):
        parse_memory(True)


def points(base, per_frame, per_expression, frames=(2, 6), groups=(1, 4), noise=0.0):
    rng = np.random.default_rng(0)
    return [{"T": t, "E": e, "peak_bytes": int(base + per_frame * t + per_expression * t * e
                                               + noise * rng.standard_normal())}
            for t in frames for e in groups]  # fmt: skip


def test_a_fitted_model_bounds_every_measured_point():
    measured = points(2 * GB, 0.3 * GB, 0.05 * GB, noise=0.02 * GB)
    model = MemoryModel.fit(measured)
    for p in measured:
        assert model.predict(p["T"], p["E"]) >= p["peak_bytes"]
    assert model.per_frame == pytest.approx(0.3 * GB, rel=0.1)
    assert MemoryModel.from_dict(json.loads(json.dumps(model.to_dict()))) == model
    with pytest.raises(ValueError, match="two or more T"):
        MemoryModel.fit(points(GB, GB, GB, frames=(4,)))


def test_a_windowed_backbone_steps_with_its_padded_frames():
    """Video-Swin pads T to a multiple of its temporal window (8): the peak is a step
    function of T, and a window of 16 frames costs what one of 9 does."""
    assert [padded_frames(t, 8) for t in (1, 5, 8, 9, 16, 17, 19, 24, 25)] == [
        1, 5, 8, 16, 16, 24, 24, 24, 32]  # fmt: skip
    assert [padded_frames(t, 1) for t in (1, 9, 19)] == [1, 9, 19]
    truth = [{"T": t, "E": 1, "peak_bytes": int(3 * GB + 0.4 * GB * padded_frames(t, 8))}
             for t in (9, 19)]  # fmt: skip
    model = MemoryModel.fit(truth, frame_step=8)
    assert model.predict(12, 1) == model.predict(16, 1) == model.predict(9, 1)
    assert model.predict(17, 1) == model.predict(19, 1) > model.predict(16, 1)
    assert MemoryModel.from_dict(json.loads(json.dumps(model.to_dict()))) == model
    # A budget between the two steps runs windows of 16, where a model linear in T (the
    # same points, step 1) would cut them to 14.
    budget = int(3 * GB + 0.4 * GB * 20)
    assert plan_calls({"video": model}, budget, 19, 1, 9, 8).window == 16
    linear = MemoryModel.fit(truth)
    assert plan_calls({"video": linear}, budget, 19, 1, 9, 8).window == 14
    # Points that pad to one length do not determine the per-frame slope.
    with pytest.raises(ValueError, match="padded to multiples of 8"):
        MemoryModel.fit([dict(p, T=t) for p, t in zip(truth, (9, 16))], frame_step=8)


def test_the_larger_of_two_phases():
    """The backbone's phase grows with P(T), the expressions' phase with T x G once the
    backbone's memory is freed; the peak is the larger (onnxruntime on paper-swin-t). The fit
    finds the second phase from the point the first underestimates, bounds every point and
    still lets a window fit where the truth does."""

    def truth(t, e):
        return max(2.0 * GB + 0.4 * GB * padded_frames(t, 8), 2.5 * GB + 0.12 * GB * t * e)

    measured = [{"T": t, "E": e, "peak_bytes": int(truth(t, e))}
                for t in (9, 16, 19) for e in (1, 4)]  # fmt: skip
    model = MemoryModel.fit(measured, frame_step=8)
    assert model.expression_phase > 0 and model.per_frame_expression < 0.01 * GB
    for p in measured:
        assert model.predict(p["T"], p["E"]) >= p["peak_bytes"]
    assert MemoryModel.from_dict(json.loads(json.dumps(model.to_dict()))) == model
    # E = 1 costs what the backbone costs; the sum of both phases would refuse 8.5 GB at 16.
    plan = plan_calls({"video": model}, int(8.5 * GB), 19, 4, 9, 8)
    assert truth(plan.window, 4) <= 8.5 * GB and plan.window >= 12
    assert plan_calls({"video": model}, int(8.5 * GB), 19, 1, 9, 8).window == 16
    # One phase only (additive, as OpenVINO's split graph): no second phase is made up.
    additive = MemoryModel.fit(points(2 * GB, 0.3 * GB, 0.05 * GB, frames=(9, 19)), frame_step=8)
    assert additive.expression_phase == 0


def test_freed_tensors_go_back_to_the_system(tmp_path):
    """With glibc's mmap threshold fixed, blocks of a megabyte freed after a run leave the
    process's RSS; by default they stay in the heap once a larger block was freed. Each case in
    a process of its own: the setting is process-wide."""
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's mallopt")
    code = (
        "import ctypes, sys\n"
        "from runtime.allocator import release_freed_memory\n"
        "from runtime.budget import current_rss\n"
        "if sys.argv[1] == 'fixed': assert release_freed_memory()\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.malloc.restype = ctypes.c_void_p; libc.free.argtypes = [ctypes.c_void_p]\n"
        "big = libc.malloc(8 << 20); libc.free(big)  # raises glibc's dynamic threshold\n"
        "before = current_rss()\n"
        "blocks = [libc.malloc(2 << 20) for _ in range(200)]\n"
        "for b in blocks: ctypes.memset(b, 1, 2 << 20)\n"
        "keep = libc.malloc(64 << 10)  # a small block above them pins the heap's top\n"
        "for b in blocks: libc.free(b)\n"
        "print((current_rss() - before) >> 20)\n"
    )
    held = {}
    for case in ("default", "fixed"):
        run = subprocess.run([sys.executable, "-c", code, case], capture_output=True, text=True,
                             check=True, timeout=60)  # fmt: skip
        held[case] = int(run.stdout.split()[-1])
    assert held["default"] > 200 and held["fixed"] < 50, held


def test_the_plan_prefers_the_longest_window_then_the_one_graph_then_large_groups():
    models = {
        "video": MemoryModel.fit(points(2 * GB, 0.3 * GB, 0.1 * GB)),
        "split": MemoryModel.fit(points(2 * GB, 0.3 * GB, 0.02 * GB)),
    }
    # Everything fits: the one graph, every expression, the whole window.
    plan = plan_calls(models, 100 * GB, 19, 4, 1, 8)
    assert (plan.mode, plan.window, plan.group) == ("video", 19, 4)
    # The one graph at T = 19 and E = 4 needs 2 + 5.7 + 7.6 GB; the split graph with all four
    # expressions in one call 2 + 5.7 + 1.52.
    plan = plan_calls(models, 9.5 * GB, 19, 4, 1, 8)
    assert (plan.mode, plan.window, plan.group) == ("split", 19, 4)
    assert plan.predicted_bytes <= 9.5 * GB
    # Tighter: smaller groups of the same window before a shorter window (G = 3 needs
    # 2 + 5.7 + 1.14 = 8.84 GB, G = 2 8.46).
    plan = plan_calls(models, 8.5 * GB, 19, 4, 1, 8)
    assert plan.mode == "split" and plan.predicted_bytes <= 8.5 * GB
    assert (plan.window, plan.group) == (19, 2)
    # A group of 3 fits 8.9 GB, but five expressions run as 3 + 2 and four as 2 + 2.
    assert plan_calls(models, 8.9 * GB, 19, 5, 1, 8).group == 3
    plan = plan_calls(models, 8.9 * GB, 19, 4, 1, 8)
    assert (plan.group, plan.predicted_bytes) == (2, models["split"].predict(19, 2))
    # Without the split graphs the window shrinks instead.
    plan = plan_calls({"video": models["video"]}, 8.5 * GB, 19, 4, 1, 8)
    assert (plan.mode, plan.group) == ("video", 4) and plan.window < 19
    # More expressions than the profile takes: the one graph in groups of the profile's E.
    plan = plan_calls(models, 100 * GB, 19, 12, 1, 8)
    assert (plan.mode, plan.group) == ("video", 8)


def test_the_split_graphs_come_first_where_their_calls_were_faster():
    """Times recorded with the points decide which mode a window tries first (onnxruntime's
    bounded split decoder is faster than its one graph); without them, the one graph."""
    video, split = points(2 * GB, 0.3 * GB, 0.1 * GB), points(2 * GB, 0.3 * GB, 0.02 * GB)
    assert faster_mode({"video": MemoryModel.fit(video), "split": MemoryModel.fit(split)}) is None

    def timed(measured, seconds):
        return MemoryModel.fit([p | {"seconds": seconds * p["T"] * p["E"]} for p in measured])

    models = {"video": timed(video, 2.0), "split": timed(split, 1.0)}
    assert faster_mode(models) == "split"
    plan = plan_calls(models, 100 * GB, 19, 4, 1, 8)
    assert (plan.mode, plan.window, plan.group) == ("split", 19, 4)
    # A shorter window of the faster mode never wins over a longer one of the other.
    plan = plan_calls(models, models["video"].predict(19, 4), 19, 4, 1, 8)
    assert (plan.mode, plan.window) == ("split", 19)
    slower = {"video": timed(video, 1.0), "split": timed(split, 2.0)}
    assert faster_mode(slower) == "video"
    assert plan_calls(slower, 100 * GB, 19, 4, 1, 8).mode == "video"
    # Faster in total but not at the call's size: the point nearest the call decides.
    mixed = {"video": timed(video, 1.0),
             "split": MemoryModel.fit([p | {"seconds": (1.2 if (p["T"], p["E"]) == (6, 4)
                                                        else 0.1) * p["T"] * p["E"]}
                                       for p in split])}  # fmt: skip
    assert faster_mode(mixed) == "split" and faster_mode(mixed, 6, 4) == "video"
    assert faster_mode(mixed, 40, 9) == "video"  # above every point: the largest
    assert faster_mode(mixed, 5, 3) == "split"  # (2, 1), the largest at or below
    assert faster_mode(mixed, 1, 1) == "split"  # below every point: the smallest
    assert plan_calls(mixed, 100 * GB, 19, 4, 1, 8).mode == "video"


def test_a_budget_that_cannot_be_met_names_the_least_that_can():
    models = {"video": MemoryModel.fit(points(2 * GB, 0.3 * GB, 0.1 * GB))}
    need = models["video"].predict(9, 2)
    with pytest.raises(MemoryBudgetError, match=r"cannot be met.*9 frame\(s\).*needs about "
                       + format_memory(need).replace(".", r"\.") + ".*--split"):  # fmt: skip
        plan_calls(models, 2 * GB, 19, 2, 9, 8, "onnxruntime fp32")
    with pytest.raises(MemoryBudgetError, match="no memory measurements.*memory.py --record"):
        plan_calls({}, 8 * GB, 19, 2, 9, 8)


def test_the_split_graph_is_the_video_graph(paper_bundle):
    """video_decoder(video_encoder(frames), text) = video(frames, text) in onnxruntime, and the
    export checked both parts against PyTorch like every graph."""
    from runtime.backends import load_backend

    manifest = Manifest.load(paper_bundle)
    assert manifest.split_precisions() == ["fp32", "fp16"]
    for graph in ("video_encoder", "video_decoder"):
        parity = manifest.variant(graph, "fp32")["parity"]
        assert parity["max_abs_error"]["pred_masks" if graph == "video_decoder" else "level0"] \
            < 1e-3, parity  # fmt: skip
    frames, words = video_feeds(manifest, 3)
    video = load_backend(manifest, "video", "onnxruntime").infer({"frames": frames} | words)
    levels = load_backend(manifest, "video_encoder", "onnxruntime").infer(
        {"frames": frames})  # fmt: skip
    assert list(levels) == ["level0", "level1", "level2", "level3"]
    decoder = load_backend(manifest, "video_decoder", "onnxruntime")
    split = decoder.infer(levels | words)
    for name in ("pred_logits", "pred_masks"):
        np.testing.assert_allclose(split[name], video[name], atol=1e-4, rtol=1e-4)
    # One expression at a time on the same levels: what a budget's groups do.
    one = decoder.infer(levels | {k: v[1:2] for k, v in words.items()})
    np.testing.assert_allclose(one["pred_masks"], video["pred_masks"][1:2], atol=1e-4, rtol=1e-4)


def test_huge_pages_are_asked_for_only_where_they_change_something():
    """glibc's huge-page tunable is added (beside the user's other tunables) on glibc 2.35+
    with the kernel's huge pages in madvise mode, and nowhere else; a tunable the user set and
    PROXYFORMER_HUGE_PAGES=0 are left alone. The restart itself is checked by the CLI test."""
    from runtime.allocator import huge_page_environment, huge_pages_in_children

    glibc, mode = (2, 36), "madvise"
    added = huge_page_environment({"A": "1"}, glibc, mode)
    assert added == {"A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    other = huge_page_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, glibc, mode)
    assert other["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    for environ, version, thp in (
        ({}, (2, 31), mode),  # before the tunable existed
        ({}, None, mode),  # not glibc
        ({}, glibc, "always"),  # every mapping gets huge pages already
        ({}, glibc, "never"),
        ({}, glibc, None),  # no transparent huge pages
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, glibc, mode),  # the user's choice
        ({"PROXYFORMER_HUGE_PAGES": "0"}, glibc, mode),
    ):
        assert huge_page_environment(environ, version, thp) is None, (environ, version, thp)
    before = os.environ.get("GLIBC_TUNABLES")
    with huge_pages_in_children() as set_here:
        assert set_here == ("glibc.malloc.hugetlb=1" in os.environ.get("GLIBC_TUNABLES", "")
                            and before != os.environ.get("GLIBC_TUNABLES"))  # fmt: skip
    assert os.environ.get("GLIBC_TUNABLES") == before


def test_bounded_onnxruntime_keeps_an_arena_only_within_decoder_runs(paper_bundle):
    """With cpu_arena off (a budget's onnxruntime) no session reuses buffers or lays out a
    memory pattern; the per-expression graph alone keeps an arena and gives it back after each
    run, and two runs in a row give the arena's masks."""
    from runtime.backends import load_backend

    manifest = Manifest.load(paper_bundle)
    frames, words = video_feeds(manifest, 2)
    levels = load_backend(manifest, "video_encoder", "onnxruntime", cpu_arena=False).infer(
        {"frames": frames})  # fmt: skip
    reference = load_backend(manifest, "video_decoder", "onnxruntime").infer(levels | words)
    for graph, arena in (("video_encoder", False), ("video_decoder", True), ("video", False)):
        backend = load_backend(manifest, graph, "onnxruntime", cpu_arena=False)
        options = backend._session.get_session_options()
        assert (options.enable_mem_reuse, options.enable_mem_pattern) == (False, False), graph
        assert (options.enable_cpu_mem_arena, backend._run_options is not None) == (arena,) * 2
    decoder = load_backend(manifest, "video_decoder", "onnxruntime", cpu_arena=False)
    for _ in range(2):  # the second run allocates from an arena the first gave back
        bounded = decoder.infer(levels | words)
        np.testing.assert_allclose(bounded["pred_masks"], reference["pred_masks"], atol=1e-5)


def test_a_bundle_with_half_the_split_graph_is_refused(paper_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(paper_bundle, copy)
    data = json.loads((copy / "manifest.json").read_text())
    del data["graphs"]["video_decoder"]
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="video_encoder is there but graphs.video_decoder is "
                       "missing"):  # fmt: skip
        Manifest.load(copy)


@pytest.fixture(scope="module")
def measured_bundle(paper_bundle, tmp_path_factory):
    """A copy of the split paper-mini bundle with OpenVINO FP32 memory models measured here."""
    from benchmarks.memory import main

    copy = tmp_path_factory.mktemp("measured") / "bundle"
    shutil.copytree(paper_bundle, copy)
    results = main(["--bundle", str(copy), "--backends", "ov", "--frames", "2", "5",
                    "--expressions", "1", "3", "--modes", "video", "split", "--record",
                    "--out", str(tmp_path_factory.mktemp("results"))])  # fmt: skip
    assert all(p["status"] == "measured" for p in results["points"]), results["points"]
    return copy, results


@pytest.mark.slow
def test_the_predictor_plans_with_measured_models(measured_bundle, clip, tmp_path):
    """Measured models are kept in the manifest; a budget between the split and the one
    graph's needs runs the split graph with the same masks; a budget below the smallest call
    is refused before anything runs; the segment command records its plan."""
    from runtime.__main__ import main
    from runtime.predictor import RVOSPredictor

    bundle, results = measured_bundle
    manifest = Manifest.load(bundle)
    entry = manifest.data["memory"]["openvino/fp32"]
    assert set(entry) == {"video", "split", "measured"}
    models = {mode: MemoryModel.from_dict(entry[mode]) for mode in ("video", "split")}
    for p in results["points"]:
        model = models[p["mode"]]
        assert model.predict(p["frames"], p["expressions"]) >= p["peak_rss_mb"] * 2**20 - 1

    texts = ["the small red circle moving left", "the square above the green triangle"]
    frames = clip[:5]
    reference = RVOSPredictor(bundle, backend="openvino", memory_budget=None).segment(
        frames, texts, window=5)  # fmt: skip
    assert reference.plan is None
    need_video, need_split = models["video"].predict(5, 2), models["split"].predict(5, 2)
    budget = None
    if need_split < need_video:
        budget = (need_split + need_video) // 2
        predictor = RVOSPredictor(bundle, backend="openvino", memory_budget=budget)
        result = predictor.segment(frames, texts, window=5)
        assert result.plan["mode"] == "split" and result.plan["window"] == 5, result.plan
        assert predictor._video is None  # the one graph is not held beside its parts
        assert (result.masks == reference.masks).mean() > 0.999
        np.testing.assert_array_equal(result.queries, reference.queries)
    # A roomy budget runs every expression in one call of the mode whose calls measured
    # faster at the point nearest the call (the points keep their seconds), and the masks are
    # those without a budget.
    roomy = RVOSPredictor(bundle, backend="openvino", memory_budget="100GB")
    result = roomy.segment(frames, texts, window=5)
    faster = faster_mode(models, 5, 2)
    assert faster is not None and all("seconds" in p for p in entry[faster]["points"])
    assert (result.plan["mode"], result.plan["expression_group"]) == (faster, 2)
    assert (result.masks == reference.masks).mean() > 0.999

    smallest = min(m.predict(1, 1) for m in models.values())
    tight = RVOSPredictor(bundle, backend="openvino", memory_budget=smallest // 2)
    with pytest.raises(MemoryBudgetError, match="give at least"):
        tight.segment(frames, texts)
    with pytest.raises(MemoryBudgetError, match="no memory measurements"):
        RVOSPredictor(bundle, backend="onnxruntime", memory_budget="8GB").plan(5, 2)

    video = tmp_path / "clip"
    video.mkdir()
    import cv2

    for index, frame in enumerate(frames):
        cv2.imwrite(str(video / f"{index:05d}.png"), frame[..., ::-1])
    budget_text = str(budget) if budget else "100GB"
    argv = ["segment", "--bundle", str(bundle), "--video", str(video), "--out",
            str(tmp_path / "out"), "--backend", "openvino", "--window", "5", "--no-overlay",
            "--memory-budget", budget_text] + sum((["--text", t] for t in texts), [])  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((tmp_path / "out" / "clip_result.json").read_text())
    assert summary["memory_plan"]["mode"] == ("split" if budget else "video")
    assert summary["memory_plan"]["budget_gb"] > 0
    argv[argv.index(budget_text)] = "1 apple"
    assert main(argv) == 2  # refused before the bundle is loaded


def test_engines_follow_the_split_graph(paper_bundle):
    """The trtexec commands (and build_engines, which plans the same way) cover the split
    video graph's parts in float precisions, and refuse them at INT8 where the bundle has no
    INT8 parts (not calibrated) rather than building a float engine under an INT8 name
    (calibrated: ``test_calibration_split``)."""
    from export.trtexec import trtexec_commands

    commands = trtexec_commands(paper_bundle, "fp16", tensorrt_major=10)
    engines = [c.split("--saveEngine=")[1].split()[0].rsplit("/", 1)[1] for c in commands]
    assert engines == ["text_encoder.fp16.plan", "video.fp16.plan", "video_encoder.fp16.plan",
                       "video_decoder.fp16.plan"]  # fmt: skip
    decoder = commands[-1]
    assert "--minShapes=level0:1x" in decoder and "text_features:1x1x" in decoder
    with pytest.raises(BundleError, match="video_decoder has no INT8 variant"):
        trtexec_commands(paper_bundle, "int8-tensorrt", graphs=["video_decoder"],
                         tensorrt_major=10)  # fmt: skip


@pytest.mark.slow
def test_the_budget_benchmark_reports_each_run_with_its_compiles(measured_bundle, tmp_path):
    """benchmarks/budget.py runs the segment command three times per backend, each in a process
    of its own, twice over with --repeat 2, and reports each row's median run: peak memory
    (the highest), time, the part of it compiling new shapes (OpenVINO), and the budget's
    plan."""
    from benchmarks.budget import main

    bundle, _ = measured_bundle
    results = main(["--bundle", str(bundle), "--backends", "ov", "--frames", "5",
                    "--expressions", "2", "--budget", "100GB", "--threads", "1",
                    "--repeat", "2", "--out", str(tmp_path)])  # fmt: skip
    rows = results["rows"]
    assert [(r["expressions"], r["budget"]) for r in rows] == [(1, "off"), (2, "off"),
                                                               (2, "100GB")]  # fmt: skip
    for row in rows:
        assert row["exit_code"] == 0, row
        assert row["peak_rss_mb"] > 0 and row["segment_ms"] > row["compile_ms"] > 0
        assert len(row["runs"]) == 2 and row["segment_ms"] in [r["segment_ms"] for r in row["runs"]]
        assert row["peak_rss_mb"] == max(r["peak_rss_mb"] for r in row["runs"])
    assert rows[0]["plan"] is None and rows[2]["plan"]["mode"] == "video"
    markdown = (tmp_path / "budget-bundle.md").read_text()
    assert "| of it compile s |" in markdown and "| ov | 2 | 100GB |" in markdown
    assert "the median of 2 runs" in markdown


def test_a_repeated_row_is_its_median_run_with_the_highest_peak():
    from benchmarks.budget import median_row

    runs = [{"exit_code": 0, "segment_ms": ms, "compile_ms": compiling, "peak_rss_mb": peak,
             "plan": name} for ms, compiling, peak, name in
            ((50e3, 0.0, 100, "a"), (45e3, 10e3, 300, "b"), (40e3, 0.0, 200, "c"))]  # fmt: skip
    row = median_row(runs)  # 50, 35 and 40 s without compiles: the median is c's 40
    assert (row["plan"], row["peak_rss_mb"], len(row["runs"])) == ("c", 300, 3)
    assert median_row(runs[:2])["plan"] == "b"  # an even count: the lower middle
    failed = {"exit_code": 1, "error": "killed"}
    assert median_row([*runs, failed]) is failed
