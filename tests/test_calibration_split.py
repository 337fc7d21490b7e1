"""INT8 of the split video graph (``video_encoder``, ``video_decoder``) from the video graph's
ranges: every tensor of the parts is matched to the video graph's tensor of the same value
(``calibration.correspond``), the translated ranges are those the parts give when calibrated
themselves, and the INT8 parts compute what the INT8 video graph computes (and get TensorRT
INT8 engines)."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from conftest import video_feeds
from onnxruntime.quantization.calibrate import load_tensors_data

from calibration.correspond import split_correspondence, translate_ranges
from calibration.data import CalibrationSet, build_calibration_set
from calibration.quantize import QUANTIZED_OPS, range_cache
from calibration.ranges import collect_minmax
from runtime.backends import load_backend
from runtime.manifest import SPLIT_GRAPHS, Manifest


def load_graphs(manifest: Manifest) -> list[onnx.ModelProto]:
    return [onnx.load(str(manifest.variant_path(name, "fp32")), load_external_data=False)
            for name in ("video", *SPLIT_GRAPHS)]  # fmt: skip


def test_every_tensor_of_the_split_graph_is_a_video_graph_tensor(paper_bundle):
    manifest = Manifest.load(paper_bundle)
    whole, encoder, decoder = load_graphs(manifest)
    found = split_correspondence(whole, encoder, decoder, manifest.root)
    names = {tensor for node in whole.graph.node for tensor in node.output}
    for graph, part in zip(SPLIT_GRAPHS, (encoder, decoder)):
        tensors = [t for node in part.graph.node for t in node.output]
        assert set(tensors) <= set(found[graph]), graph
        assert {found[graph][t] for t in tensors} <= names | {i.name for i in whole.graph.input}
    # The boundary: the decoder's levels are the encoder's outputs, the video graph's
    # text inputs are the decoder's.
    assert [found["video_decoder"][f"level{i}"] for i in range(4)] == [
        found["video_encoder"][f"level{i}"] for i in range(4)]  # fmt: skip
    assert found["video_decoder"]["text_features"] == "text_features"
    # A mismatched pair is refused by name, not given another tensor's range.
    renamed = onnx.load(str(manifest.variant_path("video_decoder", "fp32")),
                        load_external_data=False)  # fmt: skip
    mul = next(node for node in renamed.graph.node if node.op_type == "Mul")
    mul.op_type = "Add"  # another computation from here on
    broken = split_correspondence(whole, encoder, renamed, manifest.root)["video_decoder"]
    assert mul.output[0] not in broken and len(broken) < len(found["video_decoder"])


def test_translated_ranges_are_the_split_graphs_own(paper_bundle, synth_data, tmp_path):
    """Ranges collected on the video graph, translated to each part, equal the ranges
    collected on the part itself from the same clips; a tensor without one is named."""
    copy = tmp_path / "bundle"
    shutil.copytree(paper_bundle, copy)
    manifest = Manifest.load(copy)
    clips = build_calibration_set(manifest, synth_data, "train", 3, seed=0)
    collect_minmax(manifest, clips, range_cache(manifest, "minmax"), list(QUANTIZED_OPS),
                   threads=1)  # fmt: skip
    encoder = load_backend(manifest, "video_encoder", "onnxruntime", threads=1)
    feeds = {
        "video_encoder": [{"frames": clip["frames"]} for clip in clips.samples],
        "video_decoder": [
            encoder.infer({"frames": clip["frames"]})
            | {k: clip[k] for k in ("text_features", "attention_mask")}
            for clip in clips.samples
        ],
    }  # fmt: skip
    whole, *parts = load_graphs(manifest)
    found = split_correspondence(whole, *parts, manifest.root)
    for graph in SPLIT_GRAPHS:
        own = tmp_path / f"own-{graph}.json"
        collect_minmax(manifest, CalibrationSet(feeds[graph]), own, list(QUANTIZED_OPS),
                       threads=1, graph=graph)  # fmt: skip
        expected = load_tensors_data(own).data
        translated = tmp_path / f"translated-{graph}.json"
        count = translate_ranges(range_cache(manifest, "minmax"), translated, found[graph],
                                 expected, graph)  # fmt: skip
        ranges = load_tensors_data(translated).data
        assert count == len(expected) > 10 and set(ranges) == set(expected)
        for name, want in expected.items():
            got = [np.asarray(v, np.float64) for v in ranges[name].range_value]
            wanted = [np.asarray(v, np.float64) for v in want.range_value]
            scale = max(float(np.abs(wanted[0]).max()), float(np.abs(wanted[1]).max()), 1e-6)
            for a, b in zip(got, wanted):
                np.testing.assert_allclose(a, b, atol=1e-4 * scale, err_msg=f"{graph} {name}")
        with pytest.raises(ValueError, match=f"{graph}: tensor.*no tensor of the same value"):
            translate_ranges(range_cache(manifest, "minmax"), tmp_path / "x.json", {},
                             expected, graph)  # fmt: skip


def test_int8_split_graph_computes_the_int8_video_graph(paper_int8):
    """Calibration quantized both parts (for both targets) with the video graph's scales, so
    encoder then decoder give the INT8 video graph's outputs; the manifest says where their
    ranges came from and how they agree with FP32."""

    manifest = Manifest.load(paper_int8)
    assert set(manifest.split_precisions()) >= {"int8-tensorrt", "int8-cpu"}
    frames, words = video_feeds(manifest, 2)
    for precision in ("int8-cpu", "int8-tensorrt"):
        entry = manifest.variant("video_decoder", precision)
        assert entry["calibration"]["ranges_from"] == "video"
        assert entry["quantization"]["quantized_ops"] > 0
        assert manifest.variant("video_encoder", precision)["quantization"]["quantized_ops"] > 0
        assert 0.0 <= entry["agreement_vs_fp32"]["mask_iou"] <= 1.0
        assert entry["agreement_vs_fp32"]["graphs"] == list(SPLIT_GRAPHS)
        video = load_backend(manifest, "video", "onnxruntime", precision).infer(
            {"frames": frames} | words)  # fmt: skip
        levels = load_backend(manifest, "video_encoder", "onnxruntime", precision).infer(
            {"frames": frames})  # fmt: skip
        split = load_backend(manifest, "video_decoder", "onnxruntime", precision).infer(
            levels | words)  # fmt: skip
        np.testing.assert_allclose(split["pred_logits"], video["pred_logits"], atol=0.05)
        agree = np.mean((split["pred_masks"] > 0) == (video["pred_masks"] > 0))
        assert agree > 0.99, (precision, agree)
    # TensorRT's INT8 engine set now has the parts, built from their own Q/DQ graphs.
    from export.trtexec import trtexec_commands

    commands = trtexec_commands(paper_int8, "int8-tensorrt", tensorrt_major=10)
    engines = [c.split("--saveEngine=")[1].split()[0].rsplit("/", 1)[1] for c in commands]
    assert engines[-2:] == ["video_encoder.int8-tensorrt.plan", "video_decoder.int8-tensorrt.plan"]
    assert "video_decoder.int8-tensorrt.onnx" in commands[-1]
