"""export/to_triton.py: the Triton model repository written from a real tiny bundle.

Every config.pbtxt is parsed with Triton's own model-configuration protobuf as ``tritonclient``
ships it (``text_format.Parse`` fails on any field Triton does not know). tritonserver itself
is not installed on the test machines, so the Python model's BLS calls cannot run here:
``test_python_model_request_logic`` runs the model's own request logic
(``runtime.triton_bls.build_handler`` and ``RequestHandler``, which model.py calls) with the
repository's ONNX graphs in onnxruntime standing in for the two BLS calls, and with the model
config as Triton hands it to ``initialize`` (the protobuf as JSON). ``BLSBackend`` and
model.py's ``execute`` themselves are not run by any test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from export.to_triton import MODEL_PY, RepositoryError, main, write_repository
from runtime.backends.base import BaseBackend
from runtime.manifest import BundleError
from runtime.predictor import RVOSPredictor
from runtime.serving import Limits, RequestError
from runtime.triton_bls import build_handler

TEXTS = ["the small red circle moving left", "the square above the green triangle"]


def parse_all(repository: Path) -> dict[str, model_config_pb2.ModelConfig]:
    configs = {}
    for path in sorted(repository.glob("*/config.pbtxt")):
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        assert config.name == path.parent.name, path  # Triton requires name == directory
        configs[config.name] = config
    return configs


def test_configs_parse_with_tritons_protobuf(tiny_bundle, tmp_path):
    from runtime.manifest import Manifest

    out = write_repository(tiny_bundle, tmp_path / "repo", kind="gpu", count=2,
                           limits=Limits(max_frames=40))  # fmt: skip
    configs = parse_all(out)
    assert sorted(configs) == ["proxyformer", "proxyformer_text_encoder", "proxyformer_video"]
    manifest = Manifest.load(tiny_bundle)
    dtypes = {"float32": model_config_pb2.TYPE_FP32, "int64": model_config_pb2.TYPE_INT64,
              "uint8": model_config_pb2.TYPE_UINT8}  # fmt: skip
    for graph in ("text_encoder", "video"):
        config = configs[f"proxyformer_{graph}"]
        assert config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 0
        for specs, tensors in ((manifest.inputs(graph), config.input),
                               (manifest.outputs(graph), config.output)):  # fmt: skip
            assert [t.name for t in tensors] == [s.name for s in specs]
            for spec, tensor in zip(specs, tensors):
                assert tensor.data_type == dtypes[spec.dtype]
                assert list(tensor.dims) == [-1 if isinstance(d, str) else d for d in spec.shape]
        assert [(g.kind, g.count) for g in config.instance_group] == [
            (model_config_pb2.ModelInstanceGroup.KIND_GPU, 2)]  # fmt: skip
        copied = out / config.name / "1" / "model.onnx"
        assert copied.read_bytes() == manifest.variant_path(graph, "fp32").read_bytes()
    python = configs["proxyformer"]
    assert python.backend == "python"
    assert python.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert python.parameters["max_frames"].string_value == "40"
    assert python.parameters["video_model"].string_value == "proxyformer_video"
    assert [t.name for t in python.input] == ["FRAMES", "EXPRESSIONS"]
    assert python.input[1].data_type == model_config_pb2.TYPE_STRING
    assert (out / "proxyformer/1/model.py").read_text() == MODEL_PY.read_text()
    # The parser is strict: a field Triton does not know is an error, so the checks above
    # would catch one in the generated files.
    with pytest.raises(text_format.ParseError, match="no_such_field"):
        text_format.Parse('name: "x"\nno_such_field: 1\n', model_config_pb2.ModelConfig())


def test_plan_format_takes_trtexec_plans(tiny_bundle, tmp_path):
    plans = tmp_path / "engines"
    plans.mkdir()
    # trtexec's output is opaque to the writer, which copies it: any bytes stand for it.
    (plans / "text_encoder.fp16.plan").write_bytes(b"text-plan")
    with pytest.raises(RepositoryError, match=r"video\.fp16\.plan is missing"):
        write_repository(tiny_bundle, tmp_path / "repo", precision="fp16", plans=plans)
    assert not (tmp_path / "repo").exists()
    (plans / "video.fp16.plan").write_bytes(b"video-plan")
    out = write_repository(tiny_bundle, tmp_path / "repo", precision="fp16", plans=plans,
                           kind="cpu")  # fmt: skip
    configs = parse_all(out)
    assert configs["proxyformer_video"].platform == "tensorrt_plan"
    assert (out / "proxyformer_video/1/model.plan").read_bytes() == b"video-plan"
    # A bundle without engines and no --plans: --format plan names the missing engine.
    with pytest.raises(BundleError, match="no fp16 TensorRT engine"):
        write_repository(tiny_bundle, tmp_path / "repo2", precision="fp16", fmt="plan")


def test_ort_tensorrt_accelerator_carries_the_profiles(tiny_bundle, tmp_path):
    from runtime.manifest import Manifest
    from runtime.profiles import profile_shapes, shape_list

    out = write_repository(tiny_bundle, tmp_path / "repo", precision="fp16", fmt="onnx",
                           ort_tensorrt=True, trt_cache_dir="/cache")  # fmt: skip
    manifest = Manifest.load(tiny_bundle)
    for graph in ("text_encoder", "video"):
        config = parse_all(out)[f"proxyformer_{graph}"]
        [accelerator] = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert accelerator.name == "tensorrt"
        parameters = dict(accelerator.parameters)
        assert parameters["precision_mode"] == "FP16"
        assert parameters["trt_engine_cache_path"] == "/cache"
        for which in ("min", "opt", "max"):
            expected = shape_list(profile_shapes(manifest, graph), which)
            assert parameters[f"trt_profile_{which}_shapes"] == expected
        fp16 = manifest.variant_path(graph, "fp16").read_bytes()
        assert (out / config.name / "1/model.onnx").read_bytes() == fp16
    assert "frames:6x64x96x3" in dict(accelerator.parameters)["trt_profile_max_shapes"]
    with pytest.raises(RepositoryError, match="needs --format onnx and --kind gpu"):
        write_repository(tiny_bundle, tmp_path / "cpu", fmt="onnx", kind="cpu", ort_tensorrt=True)


def test_refuses_existing_out_and_a_bad_bundle(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["--bundle", str(tiny_bundle), "--out", str(out)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert main(["--bundle", str(tiny_bundle), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "proxyformer/config.pbtxt").is_file()

    bad = tmp_path / "bad-bundle"
    shutil.copytree(tiny_bundle, bad)
    tokenizer = bad / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace("<pad>", "<PAD>"))
    with pytest.raises(BundleError, match="tokenizer.json"):
        write_repository(bad, tmp_path / "from-bad")
    assert not (tmp_path / "from-bad").exists()
    with pytest.raises(RepositoryError, match="runtime setting"):
        write_repository(tiny_bundle, tmp_path / "bf16", precision="bf16")
    with pytest.raises(RepositoryError, match="'a/b' is not a model name"):
        write_repository(tiny_bundle, tmp_path / "named", name="a/b")


class RepositoryGraph(BaseBackend):
    """A model of the repository run by onnxruntime from its own model.onnx: what Triton's
    onnxruntime backend would run behind the BLS call (see the module's docstring)."""

    def __init__(self, manifest, graph: str, model_dir: Path) -> None:
        import onnxruntime as ort

        super().__init__(manifest, graph, "fp32")
        self.name = f"repository {model_dir.name}"
        self._session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"),
                                             providers=["CPUExecutionProvider"])  # fmt: skip

    def _infer(self, feeds):
        outputs = self._session.run(list(self.output_names), dict(feeds))
        return dict(zip(self.output_names, outputs))


def test_python_model_request_logic(tiny_bundle, tmp_path, clip):
    out = write_repository(tiny_bundle, tmp_path / "repo", kind="cpu",
                           limits=Limits(max_frames=5, max_expressions=3))  # fmt: skip
    config = parse_all(out)["proxyformer"]
    # What Triton passes to initialize(): the model config as JSON.
    as_triton_gives = json.loads(
        json_format.MessageToJson(config, preserving_proto_field_name=True)
    )
    handler = build_handler(out / "proxyformer" / "1", as_triton_gives,
                            lambda manifest, graph, model: RepositoryGraph(manifest, graph,
                                                                           out / model))  # fmt: skip
    texts = np.array([t.encode() for t in TEXTS], dtype=object)
    answer = handler(clip, texts)
    expected = RVOSPredictor(tiny_bundle, backend="onnxruntime").segment(clip, TEXTS)
    assert answer["MASKS"].shape == expected.masks.shape == (2, *clip.shape[:3])
    assert answer["MASKS"].any()
    np.testing.assert_array_equal(answer["MASKS"], expected.masks)
    np.testing.assert_allclose(answer["SCORES"], expected.scores, rtol=1e-5)
    np.testing.assert_array_equal(answer["QUERIES"], expected.queries)

    bad_requests = [
        (clip.astype(np.float32), texts, "frames dtype must be uint8, got float32"),
        (clip, np.array([b"the circle", b"  "], dtype=object), "expression 1 is empty"),
        (np.concatenate([clip, clip[:1]]), texts, r"6 frames exceed max_frames \(5\)"),
        (clip, np.array([b"a"] * 4, dtype=object), r"4 expressions exceed max_expressions \(3\)"),
        (clip, np.array([b"\xff\xfe"], dtype=object), r"EXPRESSIONS\[0\] is not UTF-8"),
    ]
    for frames, expressions, message in bad_requests:
        with pytest.raises(RequestError, match=message):
            handler(frames, expressions)
