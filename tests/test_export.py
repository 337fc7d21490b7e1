"""Export: a tiny model to a bundle, parity at unseen shapes, manifest, FP16, TensorRT report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.finish import finish_graph
from export.graphs import TextGraph, VideoGraph, graph_specs
from export.onnx_export import export_bundle, load_model
from export.parity import (
    FP16_TOLERANCE,
    ParityError,
    Tolerance,
    check_parity,
    ort_session,
    run_ort,
)
from export.torch_export import Profile, export_sizes, make_inputs, run_torch
from runtime.manifest import BundleError, Manifest

SIZE = (64, 96)


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Path:
    """The shipped tiny checkpoint's bundle (conftest: 64x96, T 1:3:6, E 1:1:4, L <= 12)."""
    return tiny_bundle


@pytest.fixture(scope="module")
def model_and_tokenizer(bundle):
    entry = Manifest.load(bundle).data["model"]
    checkpoint, seed = entry["checkpoint"], entry.get("random_weights_seed", 0)
    model, tokenizer, _ = load_model(checkpoint, None if checkpoint else entry["name"], 12, seed)
    return model, tokenizer


def test_bundle_files_and_manifest(bundle):
    manifest = Manifest.load(bundle)  # verifies every sha256
    names = {p.name for p in bundle.iterdir()}
    assert {"manifest.json", "tokenizer.json", "text_encoder.onnx", "video.onnx",
            "text_encoder.fp16.onnx", "video.fp16.onnx", "tensorrt_report.json"} <= names  # noqa: E501
    assert set(manifest.data["files"]) == names - {"manifest.json"}
    assert manifest.profiles == {
        "T": {"min": 1, "opt": 3, "max": 6},
        "E": {"min": 1, "opt": 1, "max": 4},
        "L": {"min": 1, "opt": 12, "max": 12},
    }
    assert manifest.preprocessing["size"] == list(SIZE)
    video_out = {s.name: s.shape for s in manifest.outputs("video")}
    assert video_out["pred_masks"] == ("E", "T", 5, 16, 24)
    assert [s.name for s in manifest.inputs("video")] == [
        "frames",
        "text_features",
        "attention_mask",
    ]
    assert manifest.inputs("video")[0].dtype == "uint8"
    assert manifest.precisions("video") == ["fp32", "fp16"]
    for precision in ("fp32", "fp16"):
        parity = manifest.variant("video", precision)["parity"]
        assert len(parity["cases"]) == 2
        assert parity["tolerance"]["atol"] > 0
        assert set(parity["max_abs_error"]) == {"pred_logits", "pred_boxes", "pred_masks"}
    # Round trip: what is loaded saves to the same JSON.
    again = Manifest(bundle, manifest.to_dict())
    assert again.to_dict() == json.loads((bundle / "manifest.json").read_text())


def test_onnx_metadata_props(bundle):
    manifest = Manifest.load(bundle)
    for name in ("text_encoder.onnx", "video.fp16.onnx"):
        model = onnx.load(str(bundle / name), load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
        assert props["proxyformer.graph"] == name.split(".")[0]
        assert props["proxyformer.precision"] == ("fp16" if "fp16" in name else "fp32")
        assert props["proxyformer.preset"] == manifest.data["model"]["name"]
        assert json.loads(props["proxyformer.config"]) == manifest.config
        assert json.loads(props["proxyformer.preprocessing"])["size"] == list(SIZE)
        assert model.opset_import[0].version == 18


def test_tampered_or_missing_file_is_named(bundle, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    data = bytearray((copy / "video.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "video.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="video.onnx.*sha256"):
        Manifest.load(copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="tokenizer.json.*missing"):
        Manifest.load(copy)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["schema_version"] = "2.0"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="schema version '2.0'"):
        Manifest.load(copy)
    with pytest.raises(BundleError, match="no 'int8-tensorrt' variant.*calibrate"):
        Manifest.load(bundle).variant("video", "int8-tensorrt")


def test_parity_at_unseen_shapes(bundle, model_and_tokenizer):
    """ONNX Runtime against PyTorch at a (T, E, L) neither the export nor its check used."""
    model, tokenizer = model_and_tokenizer
    manifest = Manifest.load(bundle)
    specs = graph_specs(model, SIZE, "uint8-nhwc")
    sizes = {"T": 6, "E": 4, "L": 9}
    feeds = make_inputs(specs["text_encoder"][0], sizes, tokenizer, model, seed=7)
    text = run_ort(ort_session(bundle / "text_encoder.onnx"), feeds)["text_features"]
    ref_text = run_torch(TextGraph(model), feeds, ["text_features"])["text_features"]
    np.testing.assert_allclose(text, ref_text, atol=1e-4)
    video_feeds = make_inputs(specs["video"][0], sizes, tokenizer, model, seed=7)
    video_feeds["text_features"] = text  # the runtime's chain: ORT text -> ORT video
    got = run_ort(ort_session(bundle / "video.onnx"), video_feeds)
    ref = run_torch(VideoGraph(model), video_feeds, [s.name for s in manifest.outputs("video")])
    for name, value in ref.items():
        assert got[name].shape == value.shape
        np.testing.assert_allclose(got[name], value, atol=1e-3, rtol=1e-3, err_msg=name)


def test_parity_check_fails_loudly(bundle, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    specs = graph_specs(model, SIZE, "uint8-nhwc")
    with pytest.raises(ParityError, match="video.fp16.onnx disagrees.*pred_"):
        check_parity(
            {"video": VideoGraph(model)}, {"video": bundle / "video.fp16.onnx"}, specs,
            [{"T": 2, "E": 2, "L": 6}], tokenizer, model, Tolerance(0.0, 0.0),
        )  # fmt: skip


def test_fp16_graph_keeps_normalisation_in_fp32(bundle):
    model = onnx.load(str(bundle / "video.fp16.onnx"), load_external_data=False)
    types = {}
    for value in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        types[value.name] = value.type.tensor_type.elem_type
    inits = {t.name: t.data_type for t in model.graph.initializer}
    types |= inits
    fp16 = onnx.TensorProto.FLOAT16
    assert sum(1 for t in inits.values() if t == fp16) > 10  # the weights are half
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax", "ReduceMean"):
            assert types.get(node.input[0], onnx.TensorProto.FLOAT) != fp16, node.name
    # I/O stays float32 so every precision variant is fed alike.
    assert model.graph.output[2].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    parity = Manifest.load(bundle).variant("video", "fp16")["parity"]
    assert parity["tolerance"]["atol"] == FP16_TOLERANCE.atol
    assert parity["reference"] == "onnxruntime fp32"


def test_tensorrt_report_has_no_unsupported_op(bundle):
    report = json.loads((bundle / "tensorrt_report.json").read_text())
    assert report["ok"], report["problems"]
    manifest = Manifest.load(bundle)
    assert manifest.data["tensorrt_compatibility"]["ok"]
    ops = set()
    for name in ("text_encoder.onnx", "video.onnx"):
        ops |= {
            n.op_type for n in onnx.load(str(bundle / name), load_external_data=False).graph.node
        }
    assert "Einsum" not in ops  # the dynamic kernels are a MatMul
    assert all(
        n.domain in ("", "ai.onnx") for n in onnx.load(str(bundle / "video.onnx")).graph.node
    )


def test_external_data_layout(bundle, tmp_path):
    """Graphs above the size threshold keep their weights in one .data file that ORT resolves."""
    entry = finish_graph(bundle / "text_encoder.onnx", tmp_path / "text.onnx", {"k": "v"},
                         external_data="always", slim=False)  # fmt: skip
    assert entry["external_data"] == ["text.onnx.data"]
    assert (tmp_path / "text.onnx.data").stat().st_size > 10_000
    assert (tmp_path / "text.onnx").stat().st_size < (bundle / "text_encoder.onnx").stat().st_size
    feeds = {"input_ids": np.array([[0, 100, 2]]), "attention_mask": np.ones((1, 3), np.int64)}
    a = run_ort(ort_session(tmp_path / "text.onnx"), feeds)["text_features"]
    b = run_ort(ort_session(bundle / "text_encoder.onnx"), feeds)["text_features"]
    np.testing.assert_array_equal(a, b)


def test_frame_formats_agree(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    frames = torch.randint(0, 256, (2, *SIZE, 3), dtype=torch.uint8)
    specs = graph_specs(model, SIZE, "uint8-nhwc")
    feeds = make_inputs(specs["video"][0], {"T": 2, "E": 2, "L": 5}, tokenizer, model, seed=1)
    text, mask = torch.from_numpy(feeds["text_features"]), torch.from_numpy(feeds["attention_mask"])
    with torch.no_grad():
        a = VideoGraph(model, "uint8-nhwc")(frames, text, mask)
        b = VideoGraph(model, "float-nchw")(model.normalize(frames.permute(0, 3, 1, 2)), text, mask)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_bad_arguments(tmp_path, bundle):
    with pytest.raises(FileExistsError, match="overwrite"):
        export_bundle(None, bundle, preset="tiny")
    with pytest.raises(ValueError, match="frames must be MIN:OPT:MAX"):
        export_bundle(None, tmp_path / "b", preset="tiny", frames="8:4:16")
    with pytest.raises(ValueError, match="opset"):
        export_bundle(None, tmp_path / "b", preset="tiny", opset=13)
    with pytest.raises(ValueError, match="INT8 comes from calibration"):
        export_bundle(None, tmp_path / "b", preset="tiny", precisions=("fp32", "int8"))
    with pytest.raises(ValueError, match="max text length"):
        export_bundle(None, tmp_path / "b", preset="tiny", max_text_len=1000)
    with pytest.raises(ValueError, match="external data must be one of.*'sometimes'"):
        export_bundle(None, tmp_path / "b", preset="tiny", external_data="sometimes")
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        export_bundle(tmp_path, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_export_sizes_avoid_specialisation():
    sizes = export_sizes({"T": Profile(1, 1, 8), "E": Profile(1, 1, 4), "L": Profile(1, 16, 32)})
    assert min(sizes.values()) > 1 and len(set(sizes.values())) == 3


def test_tensorrt_table_is_data_and_a_broken_one_is_named(tmp_path):
    from export.tensorrt_ops import SUPPORTED, UNSUPPORTED, load_table, op_support

    table = load_table()
    assert set(table["supported"]) == set(SUPPORTED) and "MatMul" in SUPPORTED
    assert op_support("Unique") == (False, "", UNSUPPORTED["Unique"])
    assert op_support("Relu", "com.microsoft")[2].startswith("custom op")
    broken = dict(table, unsupported={**table["unsupported"], "MatMul": "no"})
    (tmp_path / "ops.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="ops.json: ops listed as supported and unsupported"):
        load_table(tmp_path / "ops.json")
    del broken["resize_modes"]
    (tmp_path / "ops.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"ops.json: missing fields \['resize_modes'\]"):
        load_table(tmp_path / "ops.json")
