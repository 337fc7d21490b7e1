"""MinMax ranges in bounded memory (calibration.ranges), run by onnxruntime or OpenVINO on the
graph cut into pieces: the same tensors and the same ranges as ONNX Runtime's own MinMax
calibrator, read back by quantize_static from the range cache, and a whole calibration."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from onnxruntime.quantization.calibrate import load_tensors_data

from calibration.data import build_calibration_set
from calibration.int8 import calibrate_bundle
from calibration.quantize import QUANTIZED_OPS, quantize_video, range_cache
from calibration.ranges import _schedule, _spans, collect_minmax
from runtime.manifest import Manifest


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    return copy


@pytest.mark.parametrize(("engine", "pieces"), [("onnxruntime", 1), ("onnxruntime", 7),
                                                ("openvino", 3)])  # fmt: skip
def test_ranges_equal_onnxruntime_calibrator(bundle, synth_data, engine, pieces):
    """The same ranges whether the graph runs whole or cut into pieces."""
    if engine == "openvino":
        pytest.importorskip("openvino")
    manifest = Manifest.load(bundle)
    clips = build_calibration_set(manifest, synth_data, "train", 3, seed=0)
    cache = range_cache(manifest, "minmax")
    # ONNX Runtime's calibrator, through the quantizer as calibration runs it.
    quantize_video(manifest, clips, "int8-cpu", "minmax", range_backend="calibrator")
    reference = load_tensors_data(cache).data
    cache.unlink()
    info = collect_minmax(manifest, clips, cache, list(QUANTIZED_OPS), engine, threads=1,
                          pieces=pieces)  # fmt: skip
    ranges = load_tensors_data(cache).data
    assert info["clips"] == 3 and info["tensors"] == len(ranges) > 20
    assert info["pieces"] == len(info["piece_nodes"]) <= pieces
    assert pieces == 1 or info["pieces"] > 1
    assert set(ranges) == set(reference)  # the quantizer's own tensors, by the same names
    for name, expected in reference.items():
        low, high = (np.asarray(v, dtype=np.float64) for v in ranges[name].range_value)
        want_low, want_high = (np.asarray(v, dtype=np.float64) for v in expected.range_value)
        scale = max(abs(float(want_low.min())), abs(float(want_high.max())), 1e-6)
        assert np.allclose(low, want_low, atol=1e-3 * scale), name
        assert np.allclose(high, want_high, atol=1e-3 * scale), name


def test_cuts_fall_before_layer_norms():
    """Pieces start at a LayerNorm where they can (little crosses there), stretches without
    one are cut by node count, and together the pieces are every node once, in order."""
    from onnx import helper

    ops = ["Conv"] * 5 + (["LayerNormalization"] + ["MatMul"] * 9) * 4 + ["Add"] * 40
    nodes = [helper.make_node(op, [f"x{i}"], [f"x{i + 1}"]) for i, op in enumerate(ops)]
    spans = _spans(nodes, 8)
    assert np.array_equal(np.concatenate(spans), np.arange(len(nodes)))
    starts = [int(span[0]) for span in spans[1:]]
    norms = [s for s in starts if ops[s] == "LayerNormalization"]
    assert norms == [15, 25, 35]  # the LayerNorms nearest the equal-count targets
    assert max(len(span) for span in spans) <= 2 * -(-len(nodes) // 8)  # the Add tail is cut
    plain = [helper.make_node("Add", [f"x{i}"], [f"x{i + 1}"]) for i in range(10)]
    assert [len(span) for span in _spans(plain, 3)] == [4, 3, 3]


def test_shape_only_work_moves_before_the_block_that_uses_it():
    """A window mask built from a block's input shape, emitted by the exporter between the
    attention scores and their use, moves to just before the block's LayerNorm (so no cut
    carries the scores across it); data nodes and the Shape that reads data keep their order,
    and the result is topological."""
    from onnx import helper

    make = helper.make_node
    nodes = [
        make("MatMul", ["x", "w0"], ["h"], name="stem"),
        make("Shape", ["h"], ["shape"], name="shape"),  # reads data: stays put
        make("Add", ["h", "b0"], ["r"], name="residual"),
        make("LayerNormalization", ["r", "g", "b"], ["n"], name="norm"),
        make("MatMul", ["n", "w1"], ["scores"], name="scores"),
        make("ConstantOfShape", ["shape"], ["zeros"], name="mask0"),  # shape-only chain
        make("Slice", ["zeros", "s0", "s1"], ["part"], name="mask1"),
        make("Cast", ["part"], ["mask"], name="mask2"),
        make("Add", ["scores", "mask"], ["masked"], name="masked"),
        make("Softmax", ["masked"], ["attention"], name="softmax"),
    ]
    order = [node.name for node in _schedule(nodes, {"w0", "b0", "g", "b", "w1", "s0", "s1"})]
    assert order == ["stem", "shape", "residual", "mask0", "mask1", "mask2", "norm", "scores",
                     "masked", "softmax"]  # fmt: skip
    plain = nodes[:5]  # nothing shape-only to move: the same list
    assert _schedule(plain, {"w0", "b0", "g", "b", "w1"}) == plain


def test_calibration_with_bounded_ranges(bundle, synth_data):
    manifest = calibrate_bundle(
        bundle, synth_data, ("int8-cpu",), method="minmax", samples=4, check_samples=2,
        threads=1, range_backend="onnxruntime",
    )  # fmt: skip
    entry = Manifest.load(bundle).variant("video", "int8-cpu")  # every sha256 checked
    assert entry["calibration"]["range_backend"] == "onnxruntime"
    assert entry["calibration"]["method"] == "minmax"
    assert entry["quantization"]["quantized_ops"] > 20
    assert entry["agreement_vs_fp32"]["tracks"] > 0
    assert range_cache(manifest, "minmax").is_file()


def test_openvino_ranges_in_pieces_and_agreement_in_openvino(bundle, synth_data):
    """The bounded path for paper-size graphs: OpenVINO ranges piece by piece, and the
    agreement with FP32 measured in OpenVINO too (onnxruntime's FP32 graph is the larger
    peak)."""
    pytest.importorskip("openvino")
    calibrate_bundle(bundle, synth_data, ("int8-cpu",), method="minmax", samples=3,
                     check_samples=2, threads=1, range_backend="openvino", range_pieces=2)  # fmt: skip
    entry = Manifest.load(bundle).variant("video", "int8-cpu")
    assert entry["calibration"]["range_pieces"] == 2
    assert entry["agreement_vs_fp32"]["engine"] == "openvino"
    assert entry["agreement_vs_fp32"]["mask_iou"] > 0.5
    with pytest.raises(ValueError, match="pieces must be a positive int"):
        collect_minmax(Manifest.load(bundle), build_calibration_set(
            Manifest.load(bundle), synth_data, "train", 1), bundle / "x.json",
            list(QUANTIZED_OPS), "openvino", pieces=0)  # fmt: skip


def test_bounded_range_backends_are_minmax_only(bundle, synth_data):
    for method, engine in (("entropy", "openvino"), ("percentile", "onnxruntime")):
        with pytest.raises(ValueError, match="MinMax ranges only.*--method minmax"):
            calibrate_bundle(bundle, synth_data, ("int8-cpu",), method=method,
                             range_backend=engine)  # fmt: skip
    with pytest.raises(ValueError, match="range backend must be one of"):
        calibrate_bundle(bundle, synth_data, ("int8-cpu",), method="minmax",
                         range_backend="tensorrt")  # fmt: skip
