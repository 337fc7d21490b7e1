"""INT8 calibration of the tiny bundle for both targets, on synthetic clips."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import calibrated_copy
from onnx import numpy_helper

from calibration.data import (
    CalibrationDataError,
    CalibrationSet,
    ShardSamples,
    build_calibration_set,
)
from calibration.int8 import (
    agreement,
    calibrate_bundle,
    float_nodes_from_sensitivity,
    outputs_in_child,
    sensitivity,
)
from calibration.quantize import class_path_nodes, quantize_video, quantized_nodes
from runtime.manifest import Manifest
from runtime.predictor import RVOSPredictor

# Stated agreement of INT8 with FP32: mean IoU of the chosen mask tracks on held-out clips.
# Measured on this bundle (64x96): see the manifest's agreement_vs_fp32 and README.
MIN_MASK_IOU = {"tensorrt": 0.6, "cpu": 0.6}


@pytest.fixture(scope="module")
def calibrated(tiny_bundle, synth_data, tmp_path_factory):
    return calibrated_copy(tiny_bundle, synth_data, tmp_path_factory)


def test_both_targets_written_with_agreement(calibrated):
    manifest = Manifest.load(calibrated)  # every sha256, the new graphs included
    for target in ("tensorrt", "cpu"):
        entry = manifest.variant("video", f"int8-{target}")
        assert (calibrated / entry["file"]).is_file()
        assert entry["calibration"]["samples"] == 6 and entry["calibration"]["method"] == "entropy"
        assert entry["quantization"]["quantized_ops"] > 20
        result = entry["agreement_vs_fp32"]
        assert result["tracks"] > 0
        assert result["mask_iou"] >= MIN_MASK_IOU[target], result


def test_tensorrt_target_is_symmetric_int8_qdq(calibrated):
    model = onnx.load(str(calibrated / "video.int8-tensorrt.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) > 40
    for node in qdq:
        zero_point = inits.get(node.input[2]) if len(node.input) > 2 else None
        if zero_point is not None:
            assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    produced_by_dq = {n.output[0] for n in qdq if n.op_type == "DequantizeLinear"}
    float_ops = [
        n
        for n in model.graph.node
        if n.op_type in ("Softmax", "LayerNormalization", "Resize", "InstanceNormalization")
    ]
    assert float_ops
    for node in float_ops:  # left in float: none reads a dequantized tensor
        assert not any(i in produced_by_dq for i in node.input), node.name
    assert any(
        i in produced_by_dq for n in model.graph.node if n.op_type == "Conv" for i in n.input
    )
    report = json.loads((calibrated / "tensorrt_report.json").read_text())
    assert report["ok"], report["problems"]
    assert any("int8-tensorrt" in name for name in report["graphs"])


def test_cpu_target_uses_uint8_activations(calibrated):
    model = onnx.load(str(calibrated / "video.int8-cpu.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    activation_zero_points = [
        inits[n.input[2]] for n in model.graph.node
        if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits
    ]  # fmt: skip
    assert activation_zero_points and all(z.dtype == np.uint8 for z in activation_zero_points)


def test_class_path_nodes_of_a_hand_made_graph(tmp_path):
    """A MatMul both outputs read is shared; the ones only pred_logits reads are the class path."""
    from onnx import TensorProto, helper

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="shared"),
        helper.make_node("Relu", ["h"], ["pred_masks"], name="mask_act"),
        helper.make_node("MatMul", ["h", "w"], ["c1"], name="cls1"),
        helper.make_node("Gemm", ["c1", "w"], ["c2"], name="cls2"),
        helper.make_node("Sigmoid", ["c2"], ["pred_logits"], name="cls_act"),
    ]
    info = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [4, 4])
    graph = helper.make_graph(nodes, "g", [info("x")], [info("pred_logits"), info("pred_masks")],
                              [weight])  # fmt: skip
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert class_path_nodes(path) == ["cls1", "cls2"]
    assert class_path_nodes(path, "pred_masks") == []
    with pytest.raises(ValueError, match="no output 'scores'"):
        class_path_nodes(path, "scores")


def test_class_path_stays_float_unless_asked(calibrated):
    """The default variants leave the selection/class nodes in float and list them; asked to,
    the quantizer covers them too (from the cached ranges)."""
    manifest = Manifest.load(calibrated)
    class_path = class_path_nodes(manifest.variant_path("video", "fp32"))
    assert len(class_path) >= 4  # tiny: mask pooling, geometry, selection block, class MLP
    for target in ("tensorrt", "cpu"):
        entry = manifest.variant("video", f"int8-{target}")
        assert entry["class_path_float"] == class_path
    quantized = quantized_nodes(calibrated / "video.int8-tensorrt.onnx")
    assert quantized and not set(class_path) & set(quantized)
    everything = calibrated / "calibration" / "all.onnx"
    quantize_video(manifest, None, "tensorrt", "entropy", output=everything, class_path=True)
    assert set(quantized_nodes(everything)) == set(quantized) | set(class_path)
    everything.unlink()


def test_int8_runs_in_the_predictor(calibrated, synth_data):
    video = sorted((synth_data / "valid" / "JPEGImages").iterdir())[1]
    fp32 = RVOSPredictor(calibrated, backend="onnxruntime", threads=2).segment(
        video, ["the circle"]
    )
    for target in ("tensorrt", "cpu"):
        int8 = RVOSPredictor(calibrated, backend="onnxruntime", precision=f"int8-{target}",
                             threads=2).segment(video, ["the circle"])  # fmt: skip
        assert int8.masks.shape == fp32.masks.shape


def test_samples_are_cached_and_checked(calibrated, tiny_bundle, synth_data, caplog):
    directory = calibrated / "calibration" / "samples"
    manifest = Manifest.load(calibrated)
    samples = CalibrationSet.load(directory, manifest)
    assert len(samples) == 6 and samples.info["split"] == "train"
    assert samples.samples[0]["frames"].dtype == np.uint8
    # Read from the shards when used (none held), each the same arrays every time.
    assert isinstance(samples.samples, ShardSamples)
    pair = samples.samples[1:3]
    assert len(pair) == 2 and samples.samples[-1:][0].keys() == pair[0].keys()
    np.testing.assert_array_equal(pair[1]["frames"], samples.samples[2]["frames"])
    # Data made for another resolution or dtype is refused, naming the tensor.
    bad = CalibrationSet([dict(samples.samples[0], frames=samples.samples[0]["frames"][:, :32])])
    with pytest.raises(CalibrationDataError, match="sample 0.*'frames' expects uint8"):
        bad.check(manifest)
    bad = CalibrationSet(
        [
            dict(
                samples.samples[0],
                text_features=samples.samples[0]["text_features"].astype(np.float64),
            )
        ]
    )
    with pytest.raises(CalibrationDataError, match="'text_features'.*float64"):
        bad.check(manifest)
    # Fewer videos than samples asked for: a warning, and what there is.
    with caplog.at_level(logging.WARNING, logger="calibration.data"):
        few = build_calibration_set(manifest, synth_data, "valid", samples=1000, seed=0)
    assert "1000 calibration samples were asked for" in caplog.text
    assert 0 < len(few) < 1000
    # Deterministic by seed.
    again = build_calibration_set(manifest, synth_data, "train", samples=3, seed=5)
    other = build_calibration_set(manifest, synth_data, "train", samples=3, seed=5)
    assert again.info["videos"] == other.info["videos"]
    np.testing.assert_array_equal(again.samples[0]["frames"], other.samples[0]["frames"])


def test_agreement_measure():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 3, 5)).astype(np.float32)
    masks = rng.standard_normal((2, 3, 5, 8, 8)).astype(np.float32)
    same = agreement([{"pred_logits": logits, "pred_masks": masks}],
                     [{"pred_logits": logits, "pred_masks": masks}])  # fmt: skip
    assert same["mask_iou"] == 1.0 and same["same_query"] == 1.0
    flipped = agreement([{"pred_logits": logits, "pred_masks": masks}],
                        [{"pred_logits": logits, "pred_masks": -masks}])  # fmt: skip
    assert flipped["mask_iou"] == 0.0


def test_sensitivity_pass_and_keep_float(calibrated, synth_data):
    """Rank nodes by the agreement regained in float, then leave the top ones unquantized."""
    rows = sensitivity(calibrated, "tensorrt", "entropy", synth_data, check_samples=2,
                       threads=2, max_nodes=3)  # fmt: skip
    assert len(rows) == 3
    assert rows == sorted(rows, key=lambda r: (-r["mask_iou"], r["mask_logit_mse"]))
    keep = float_nodes_from_sensitivity(calibrated, "tensorrt", 2)
    assert keep == [rows[0]["node"], rows[1]["node"]]
    before = quantized_nodes(calibrated / "video.int8-tensorrt.onnx")
    calibrate_bundle(calibrated, synth_data, ("tensorrt",), "entropy", samples=6,
                     check_samples=2, exclude=keep, threads=2)  # fmt: skip
    after = quantized_nodes(calibrated / "video.int8-tensorrt.onnx")
    assert set(before) - set(after) == set(keep)
    entry = Manifest.load(calibrated).variant("video", "int8-tensorrt")
    assert entry["float_nodes"] == keep


def test_command_line(calibrated, synth_data, capsys):
    from calibration.calibrate import main

    args = ["--bundle", str(calibrated), "--data", str(synth_data), "--samples", "3",
            "--target", "cpu", "--check-samples", "0", "--frames", "2", "--threads", "2"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "video.int8-cpu.onnx" in out and "not checked against FP32 (--check-samples 0)" in out
    entry = Manifest.load(calibrated).variant("video", "int8-cpu")
    assert entry["calibration"]["samples"] == 3
    assert entry["agreement_vs_fp32"] is None  # --check-samples 0: no check, none recorded
    samples = CalibrationSet.load(calibrated / "calibration" / "samples")
    assert samples.samples[0]["frames"].shape[0] == 2


def test_a_check_that_cannot_run_names_the_graph(tiny_bundle, synth_data, tmp_path):
    """The agreement's graphs run in child processes; one that fails is an error naming the
    runtime, the precision and the clips, with the child's reason."""
    manifest = Manifest.load(tiny_bundle)
    build_calibration_set(manifest, synth_data, "valid", 1, seed=1000).save(tmp_path / "clips")
    with pytest.raises(RuntimeError, match=r"onnxruntime int8-cpu video graph on .*clips: .*"):
        outputs_in_child(Path(tiny_bundle), tmp_path / "clips", "onnxruntime", "int8-cpu", 1,
                         tmp_path / "out.npz")  # fmt: skip
