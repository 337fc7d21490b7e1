"""TensorRT engines: trtexec commands, the operator report, and real builds where TensorRT is.

The bundle fixture is written by hand: tiny ONNX graphs with the bundle's input names, dtypes
and dynamic axes (T, E, L) in fp32, fp16 and Q/DQ int8 variants, and a manifest. Everything
but the ``gpu`` tests runs without TensorRT; those build real engines (no mocks).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from bundles import VARIANT_FILES as FILES
from bundles import graph_specs, make_model, write_bundle
from onnx import TensorProto, helper, numpy_helper

from export.build_engine import main as build_engine_main
from export.engine import EngineBuildError, build_engines, gpu_info, tensorrt_logger
from export.tensorrt_ops import (
    OPSET_RANGE,
    check_tensorrt_compatible,
    format_tensorrt_report,
    tensorrt_report,
)
from export.trtexec import installed_tensorrt_version, trtexec_commands, trtexec_script
from runtime.manifest import BundleError, Manifest

REPO = Path(__file__).resolve().parents[1]
OPSET = 18
HEIGHT, WIDTH, CHANNELS, QUERIES, VOCAB, MASK_H, MASK_W = 32, 48, 8, 5, 50, 8, 12
PROFILES = {
    "T": {"min": 1, "opt": 2, "max": 4},
    "E": {"min": 1, "opt": 2, "max": 3},
    "L": {"min": 1, "opt": 8, "max": 16},
}
SPECS = graph_specs(HEIGHT, WIDTH, CHANNELS, QUERIES, mask_size=(MASK_H, MASK_W))


# -- the fixture: tiny graphs with the bundle's interface ------------------------------------


class _Graph:
    """Nodes and initializers of one tiny graph, in FP32, FP16 or FP32 with Q/DQ (int8)."""

    def __init__(self, precision: str, seed: int) -> None:
        self.precision = precision
        self.dtype = np.float16 if precision == "fp16" else np.float32
        self.onnx_dtype = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
        self.nodes: list = []
        self.initializers: list = []
        self.rng = np.random.default_rng(seed)

    def const(self, name: str, value) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=f"{op}_{output}", **attrs))
        return output

    def weight(self, name: str, shape: tuple[int, ...]) -> str:
        value = self.rng.standard_normal(shape).astype(np.float32) * 0.5
        if self.precision != "int8-tensorrt":
            return self.const(name, value.astype(self.dtype))
        # Symmetric int8 weights + DequantizeLinear: explicit quantization as calibration writes it.
        scale = np.float32(np.abs(value).max() / 127)
        quantized = np.clip(np.round(value / scale), -127, 127).astype(np.int8)
        return self.node("DequantizeLinear", [self.const(f"{name}_q", quantized),
                                              self.const(f"{name}_scale", scale),
                                              self.const(f"{name}_zero", np.int8(0))], name)

    def activation(self, name: str, amax: float) -> str:
        """Q/DQ of an activation (int8 graphs only)."""
        if self.precision != "int8-tensorrt":
            return name
        scale = self.const(f"{name}_act_scale", np.float32(amax / 127))
        zero = self.const(f"{name}_act_zero", np.int8(0))
        quantized = self.node("QuantizeLinear", [name, scale, zero], f"{name}_q")
        return self.node("DequantizeLinear", [quantized, scale, zero], f"{name}_dq")

    def to_compute(self, name: str) -> str:
        """float32 graph input -> the graph's compute dtype."""
        return name if self.dtype == np.float32 else self.node(
            "Cast", [name], f"{name}_h", to=self.onnx_dtype)

    def output(self, name: str, out: str) -> str:
        return self.node("Cast", [name], out, to=TensorProto.FLOAT)

    def model(self, name: str) -> onnx.ModelProto:
        return make_model(self.nodes, name, SPECS[name], self.initializers, OPSET)


def text_encoder_model(precision: str = "fp32") -> onnx.ModelProto:
    """input_ids, attention_mask [E, L] -> text_features [E, L, C]: projected embeddings * mask."""
    g = _Graph(precision, seed=1)
    table = g.rng.standard_normal((VOCAB, CHANNELS)).astype(g.dtype)
    embedded = g.node("Gather", [g.const("embedding", table), "input_ids"], "embedded")
    projected = g.node("MatMul", [g.activation(embedded, amax=4.0),
                                  g.weight("text_proj", (CHANNELS, CHANNELS))], "projected")
    mask = g.node("Cast", ["attention_mask"], "mask", to=g.onnx_dtype)
    mask = g.node("Unsqueeze", [mask, g.const("axis_2", np.array([2], np.int64))], "mask_3d")
    g.output(g.node("Mul", [projected, mask], "masked"), "text_features")
    return g.model("text_encoder")


def video_model(precision: str = "fp32") -> onnx.ModelProto:
    """frames, text_features, attention_mask -> pred_logits, pred_boxes, pred_masks.

    Per-frame colour means and masked text sums, each projected to N query scores and added:
    logits [E, T, N]; boxes and masks broadcast from them.
    """
    g = _Graph(precision, seed=2)
    frames = g.to_compute(g.node("Cast", ["frames"], "frames_f", to=TensorProto.FLOAT))
    frames = g.node("Div", [frames, g.const("scale_255", np.array(255, g.dtype))], "frames_01")
    colour = g.node("ReduceMean", [frames, g.const("axes_hw", np.array([1, 2], np.int64))],
                    "colour", keepdims=0)  # (T, 3)
    frame_proj = g.weight("frame_proj", (3, QUERIES))
    frame_scores = g.node("MatMul", [g.activation(colour, amax=1.0), frame_proj],
                          "frame_scores")  # (T, N)
    mask = g.node("Cast", ["attention_mask"], "mask", to=g.onnx_dtype)
    mask = g.node("Unsqueeze", [mask, g.const("axis_2", np.array([2], np.int64))], "mask_3d")
    text = g.node("Mul", [g.to_compute("text_features"), mask], "text_masked")
    text = g.node("ReduceSum", [text, g.const("axis_1", np.array([1], np.int64))], "text_sum",
                  keepdims=0)  # (E, C)
    text_scores = g.node("MatMul", [g.activation(text, amax=8.0),
                                    g.weight("text_proj", (CHANNELS, QUERIES))], "text_scores")
    text_e1n = g.node("Unsqueeze", [text_scores, g.const("axis_1b", np.array([1], np.int64))],
                      "text_e1n")
    frame_1tn = g.node("Unsqueeze", [frame_scores, g.const("axis_0", np.array([0], np.int64))],
                       "frame_1tn")
    logits = g.node("Add", [text_e1n, frame_1tn], "logits")  # (E, T, N)
    g.output(logits, "pred_logits")
    logits_4 = g.node("Unsqueeze", [logits, g.const("axis_3", np.array([3], np.int64))], "logits_4")
    boxes = g.node("Mul", [logits_4, g.const("box_scale", np.linspace(0.5, 1, 4).astype(g.dtype))],
                   "boxes_raw")
    g.output(g.node("Sigmoid", [boxes], "boxes"), "pred_boxes")
    logits_5 = g.node("Unsqueeze", [logits, g.const("axes_34", np.array([3, 4], np.int64))],
                      "logits_5")
    pattern = np.linspace(-1, 1, MASK_H * MASK_W).reshape(MASK_H, MASK_W).astype(g.dtype)
    g.output(g.node("Mul", [logits_5, g.const("mask_pattern", pattern)], "masks"), "pred_masks")
    return g.model("video")


MODELS = {"text_encoder": text_encoder_model, "video": video_model}


def make_bundle(root: Path, precisions=("fp32",)) -> Manifest:
    """A bundle directory with the given variants of both graphs and its manifest."""
    return write_bundle(
        root, SPECS, lambda graph, precision: MODELS[graph](precision), PROFILES, OPSET,
        precisions, preprocessing={"size": [HEIGHT, WIDTH]},
    )  # fmt: skip


@pytest.fixture()
def bundle(tmp_path) -> Path:
    make_bundle(tmp_path / "bundle", ("fp32", "fp16", "int8-tensorrt"))
    return tmp_path / "bundle"


@pytest.fixture()
def fp32_bundle(tmp_path) -> Path:
    make_bundle(tmp_path / "fp32 only", ("fp32",))  # a space: commands must quote the path
    return tmp_path / "fp32 only"


def test_fixture_graphs_run_with_the_manifest_shapes(bundle):
    """The fixture is a valid bundle: every variant runs in ONNX Runtime at the profile's max."""
    import onnxruntime as ort

    manifest = Manifest.load(bundle)
    sizes = {axis: p["max"] for axis, p in PROFILES.items()}
    rng = np.random.default_rng(0)
    feeds = {
        "input_ids": rng.integers(0, VOCAB, (sizes["E"], sizes["L"])),
        "attention_mask": np.ones((sizes["E"], sizes["L"]), np.int64),
        "frames": rng.integers(0, 256, (sizes["T"], HEIGHT, WIDTH, 3), dtype=np.uint8),
        "text_features": rng.standard_normal((sizes["E"], sizes["L"], CHANNELS)).astype(np.float32),
    }
    for graph in ("text_encoder", "video"):
        for precision in manifest.precisions(graph):
            session = ort.InferenceSession(str(manifest.variant_path(graph, precision)),
                                           providers=["CPUExecutionProvider"])  # fmt: skip
            names = [i.name for i in session.get_inputs()]
            results = session.run(None, {name: feeds[name] for name in names})
            for spec, result in zip(manifest.outputs(graph), results, strict=True):
                expected = tuple(d if isinstance(d, int) else sizes[d] for d in spec.shape)
                assert result.shape == expected and result.dtype == np.float32, (graph, spec)
                assert np.isfinite(result).all(), (graph, precision, spec.name)


# -- trtexec commands ------------------------------------------------------------------------


def _args(command: str) -> dict[str, str]:
    """--flag=value pairs of a command (flags without a value map to "")."""
    parts = shlex.split(command)
    assert parts[0] == "trtexec"
    return dict((part.split("=", 1) + [""])[:2] for part in parts[1:])


def test_trtexec_fp32_shapes_from_the_profiles(bundle):
    commands = trtexec_commands(bundle, "fp32", tensorrt_major=10)
    assert len(commands) == 2
    text, video = (_args(c) for c in commands)
    assert text["--onnx"] == str(bundle / "text_encoder.onnx")
    assert text["--saveEngine"] == str(bundle / "engines" / "text_encoder.fp32.plan")
    assert text["--minShapes"] == "input_ids:1x1,attention_mask:1x1"
    assert text["--optShapes"] == "input_ids:2x8,attention_mask:2x8"
    assert text["--maxShapes"] == "input_ids:3x16,attention_mask:3x16"
    assert video["--minShapes"] == "frames:1x32x48x3,text_features:1x1x8,attention_mask:1x1"
    assert video["--optShapes"] == "frames:2x32x48x3,text_features:2x8x8,attention_mask:2x8"
    assert video["--maxShapes"] == "frames:4x32x48x3,text_features:3x16x8,attention_mask:3x16"
    for args in (text, video):
        assert "--stronglyTyped" in args and "--skipInference" in args
        assert "--fp16" not in args and "--int8" not in args
        assert "--memPoolSize" not in args and "--timingCacheFile" not in args


@pytest.mark.parametrize("major", [10, 11])
def test_trtexec_fp16_uses_the_fp16_graph_strongly_typed(bundle, major):
    for command in trtexec_commands(bundle, "fp16", tensorrt_major=major):
        args = _args(command)
        assert args["--onnx"].endswith(".fp16.onnx")
        assert args["--saveEngine"].endswith(".fp16.plan")
        assert "--stronglyTyped" in args and "--fp16" not in args


def test_trtexec_fp16_without_fp16_graph_falls_back_on_tensorrt_10_only(fp32_bundle):
    for command in trtexec_commands(fp32_bundle, "fp16", tensorrt_major=10):
        args = _args(command)
        assert Path(args["--onnx"]).name in ("text_encoder.onnx", "video.onnx")
        assert args["--saveEngine"].endswith(".fp16.plan")
        assert "--fp16" in args and "--stronglyTyped" not in args
    script = trtexec_script(fp32_bundle, "fp16", tensorrt_major=10)
    notes = [line for line in script.splitlines() if line.startswith("# note")]
    assert len(notes) == 2 and all("TensorRT 10" in note for note in notes)
    with pytest.raises(EngineBuildError, match="--precision fp32 fp16"):
        trtexec_commands(fp32_bundle, "fp16", tensorrt_major=11)


@pytest.mark.parametrize("major", [10, 11])
def test_trtexec_int8_uses_the_qdq_graph(bundle, major):
    commands = trtexec_commands(bundle, "int8-tensorrt", graphs=["video"], tensorrt_major=major)
    assert len(commands) == 1
    args = _args(commands[0])
    assert args["--onnx"] == str(bundle / "video.int8-tensorrt.onnx")
    assert args["--saveEngine"] == str(bundle / "engines" / "video.int8-tensorrt.plan")
    assert "--stronglyTyped" in args and "--int8" not in args and "--fp16" not in args


def test_trtexec_script_creates_the_engines_folder_first(bundle, tmp_path):
    """trtexec does not create --saveEngine's folder: the printed script does, before the
    first build (and running its mkdir line makes exactly the folder the engines go to)."""
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    assert not (copy / "engines").exists()
    lines = [line for line in trtexec_script(copy, "fp16", tensorrt_major=10).splitlines()
             if not line.startswith("#")]  # fmt: skip
    assert lines[0] == shlex.join(["mkdir", "-p", str(copy / "engines")])
    assert all(line.startswith("trtexec ") for line in lines[1:]) and len(lines) == 3
    subprocess.run(["bash", "-c", lines[0]], check=True)
    for line in lines[1:]:
        assert Path(_args(line)["--saveEngine"]).parent == copy / "engines"
    assert (copy / "engines").is_dir()


def test_trtexec_int8_without_calibration_names_the_variant(fp32_bundle):
    with pytest.raises(BundleError, match="int8-tensorrt.*calibrate"):
        trtexec_commands(fp32_bundle, "int8-tensorrt", tensorrt_major=10)


def test_trtexec_workspace_timing_cache_and_quoting(fp32_bundle, tmp_path):
    cache = tmp_path / "timing cache.bin"
    commands = trtexec_commands(fp32_bundle, "fp32", workspace_gb=2, timing_cache=cache,
                                tensorrt_major=10)  # fmt: skip
    for command in commands:
        assert f"'--onnx={fp32_bundle}/" in command  # the space in the path is quoted
        args = _args(command)
        assert args["--memPoolSize"] == "workspace:2048"  # MiB
        assert args["--timingCacheFile"] == str(cache)
    with pytest.raises(ValueError, match="precision"):
        trtexec_commands(fp32_bundle, "int4", tensorrt_major=10)


def test_trtexec_script_says_which_tensorrt_it_assumes(bundle):
    script = trtexec_script(bundle, "fp32", tensorrt_major=11)
    assert script.splitlines()[0].startswith("# ") and "TensorRT 11" in script.splitlines()[0]
    if installed_tensorrt_version() is None:
        first = trtexec_script(bundle, "fp32").splitlines()[0]
        assert "TensorRT 10" in first and "assumed" in first


def test_cli_prints_trtexec_without_tensorrt(bundle, capsys):
    assert build_engine_main(["--bundle", str(bundle), "--precision", "int8", "--print-trtexec",
                              "--tensorrt-major", "10", "--graphs", "video"]) == 0  # fmt: skip
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("#") and out[-1].startswith("trtexec ")
    assert "video.int8-tensorrt.onnx" in out[-1]


def test_cli_runs_as_a_script_from_the_repo_root(bundle):
    """``python export/build_engine.py`` (not -m) finds the package and never needs TensorRT."""
    script = [sys.executable, "export/build_engine.py"]
    help_run = subprocess.run([*script, "--help"], check=False, cwd=REPO, capture_output=True,
                              text=True)  # fmt: skip
    assert help_run.returncode == 0 and "--print-trtexec" in help_run.stdout
    run = subprocess.run([*script, "--bundle", str(bundle), "--precision", "fp16",
                          "--print-trtexec"], check=False, cwd=REPO, capture_output=True,
                         text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert sum(line.startswith("trtexec ") for line in run.stdout.splitlines()) == 2


# -- the operator report ---------------------------------------------------------------------


def test_report_passes_the_fixture_graphs(bundle):
    manifest = Manifest.load(bundle)
    graphs = {
        f"{graph}.{precision}": manifest.variant_path(graph, precision)  # paths, not protos
        for graph in ("text_encoder", "video")
        for precision in manifest.precisions(graph)
    }
    report = tensorrt_report(graphs)
    assert report["ok"], report["problems"]
    video = report["graphs"]["video.fp32"]
    assert video["opset"] == OPSET and OPSET_RANGE[0] <= OPSET <= OPSET_RANGE[1]
    assert video["ops"]["MatMul"]["count"] == 2 and video["ops"]["MatMul"]["supported"]
    assert video["nodes"] == sum(entry["count"] for entry in video["ops"].values())
    assert report["graphs"]["video.int8-tensorrt"]["ops"]["QuantizeLinear"]["count"] == 2
    json.dumps(report)  # stored as tensorrt_report.json by the export
    check_tensorrt_compatible(report)
    table = format_tensorrt_report(report)
    assert "graph video.fp32" in table and "ReduceMean" in table and "compatible: yes" in table


def _one_node_model(node, inputs, outputs, opset=OPSET, initializers=(), functions=()):
    graph = helper.make_graph([node], "g", inputs, outputs, initializer=list(initializers))
    imports = [helper.make_opsetid("", opset)] + [
        helper.make_opsetid(d, 1) for d in {node.domain} if d not in ("", "ai.onnx")
    ]
    return helper.make_model(graph, opset_imports=imports, functions=list(functions))


X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])


def test_report_fails_a_custom_domain_node():
    node = helper.make_node("FancyAttention", ["x"], ["y"], domain="com.example", name="fancy")
    report = tensorrt_report({"custom": _one_node_model(node, [X], [Y])})
    assert not report["ok"]
    assert any("com.example::FancyAttention" in p and "plugin" in p for p in report["problems"])
    assert report["graphs"]["custom"]["ops"]["com.example::FancyAttention"]["supported"] is False
    with pytest.raises(ValueError, match="com.example::FancyAttention"):
        check_tensorrt_compatible(report)
    assert "NO" in format_tensorrt_report(report)


@pytest.mark.parametrize("op_type", ["Unique", "MatMulInteger", "NotAnOnnxOp"])
def test_report_fails_an_op_tensorrt_lacks(op_type):
    node = helper.make_node(op_type, ["x"], ["y"], name="the_node")
    report = tensorrt_report({"g": _one_node_model(node, [X], [Y])})
    assert not report["ok"]
    assert any(p.startswith(f"g: {op_type} (1 nodes)") for p in report["problems"])


def test_report_checks_the_opset_range():
    node = helper.make_node("Relu", ["x"], ["y"])
    assert tensorrt_report({"g": _one_node_model(node, [X], [Y], opset=18)})["ok"]
    old = tensorrt_report({"g": _one_node_model(node, [X], [Y], opset=7)})
    assert not old["ok"] and any("opset 7" in p for p in old["problems"])
    recent = tensorrt_report({"g": _one_node_model(node, [X], [Y], opset=22)})
    assert recent["ok"] and any("opset 22" in w for w in recent["warnings"])


def test_report_checks_resize_modes_and_qdq_zero_points():
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    x4 = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])
    y4 = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])
    cubic = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="cubic", name="up")
    report = tensorrt_report({"g": _one_node_model(cubic, [x4], [y4], initializers=[scales])})
    assert any("Resize node up" in p and "cubic" in p for p in report["problems"])
    linear = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear",
                              coordinate_transformation_mode="half_pixel")  # fmt: skip
    assert tensorrt_report({"g": _one_node_model(linear, [x4], [y4], initializers=[scales])})["ok"]

    q = helper.make_tensor_value_info("y", TensorProto.INT8, [2, 3])
    inits = [numpy_helper.from_array(np.float32(0.1), "s"),
             numpy_helper.from_array(np.int8(3), "z")]  # fmt: skip
    quantize = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], name="q")
    report = tensorrt_report({"g": _one_node_model(quantize, [X], [q], initializers=inits)})
    assert any("QuantizeLinear node q" in p and "zero point" in p for p in report["problems"])


def test_report_expands_local_functions():
    """A call of a model-local function is its body's ops, not a custom op."""
    body = [helper.make_node("Relu", ["a"], ["b"]), helper.make_node("Sigmoid", ["b"], ["c"])]
    function = helper.make_function("local.fn", "Block", ["a"], ["c"], body,
                                    [helper.make_opsetid("", OPSET)])  # fmt: skip
    call = helper.make_node("Block", ["x"], ["y"], domain="local.fn")
    report = tensorrt_report({"g": _one_node_model(call, [X], [Y], functions=[function])})
    assert report["ok"], report["problems"]
    assert set(report["graphs"]["g"]["ops"]) == {"Relu", "Sigmoid"}


# -- building without TensorRT -----------------------------------------------------------------


def test_build_engines_without_tensorrt_says_how_to_install(bundle):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    with pytest.raises(EngineBuildError, match=re.escape('pip install -e ".[tensorrt]"')):
        build_engines(bundle, "fp16")
    with pytest.raises(ValueError, match="precision"):
        build_engines(bundle, "int4")


def test_gpu_info_names_the_gpu_or_says_there_is_none():
    try:
        info = gpu_info()
    except EngineBuildError as error:
        assert "cuda-python" in str(error) or "no CUDA GPU" in str(error)
    else:
        assert info["name"] and re.fullmatch(r"\d+\.\d+", info["compute_capability"])


# -- building with TensorRT on a GPU (real engines, no mocks) ---------------------------------


@pytest.fixture()
def tensorrt():
    trt = pytest.importorskip("tensorrt")
    try:
        gpu_info()
    except EngineBuildError as error:
        pytest.skip(f"no CUDA GPU: {error}")
    return trt


def _engine_io(trt, path: Path) -> tuple[dict[str, list], set[str]]:
    """A built engine's profile-0 (min, opt, max) of each input, and its output names."""
    runtime = trt.Runtime(tensorrt_logger(trt))
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    assert engine is not None, path
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    profiles = {n: [list(s) for s in engine.get_tensor_profile_shape(n, 0)] for n in inputs}
    return profiles, set(names) - set(inputs)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8-tensorrt"])
def test_build_engines_writes_plans_and_manifest_entries(tensorrt, bundle, tmp_path, precision):
    cache = tmp_path / "timing.cache"
    entries = build_engines(bundle, precision, workspace_gb=1, timing_cache=cache)
    assert set(entries) == {"text_encoder", "video"}
    manifest = Manifest.load(bundle)  # sha256 of the new engine files verified
    for graph, entry in entries.items():
        assert entry == manifest.engine(precision, graph)
        assert entry["file"] == f"engines/{graph}.{precision}.plan"
        assert entry["strongly_typed"] is True
        assert entry["built_from"] == FILES[precision].format(graph)
        assert re.fullmatch(r"\d+\.\d+", entry["compute_capability"])
        assert entry["tensorrt"] == tensorrt.__version__
        profiles, outputs = _engine_io(tensorrt, bundle / entry["file"])
        for name, shapes in entry["profile"].items():
            assert profiles[name] == [shapes["min"], shapes["opt"], shapes["max"]]
        assert outputs == {spec.name for spec in manifest.outputs(graph)}
    assert entries["video"]["profile"]["frames"]["max"] == [4, HEIGHT, WIDTH, 3]
    assert cache.is_file() and cache.stat().st_size > 0
    build_engines(bundle, precision, timing_cache=cache, graphs=["text_encoder"])  # cache reused


@pytest.mark.gpu
def test_fp16_without_fp16_graph_on_each_tensorrt(tensorrt, fp32_bundle):
    major = int(tensorrt.__version__.split(".")[0])
    if major >= 11:
        with pytest.raises(EngineBuildError, match="--precision fp32 fp16"):
            build_engines(fp32_bundle, "fp16")
        return
    entries = build_engines(fp32_bundle, "fp16", graphs=["video"])
    assert entries["video"]["strongly_typed"] is False
    assert entries["video"]["built_from"] == "video.onnx"


@pytest.mark.gpu
def test_parser_error_names_the_node(tensorrt, fp32_bundle):
    node = helper.make_node("FancyAttention", ["x"], ["y"], domain="com.example", name="fancy_1")
    onnx.save(_one_node_model(node, [X], [Y]), str(fp32_bundle / "video.onnx"))
    manifest = Manifest.load(fp32_bundle, verify=False)
    manifest.add_file("video.onnx", "onnx graph")
    manifest.save()
    with pytest.raises(EngineBuildError, match="fancy_1"):
        build_engines(fp32_bundle, "fp32", graphs=["video"])


@pytest.mark.gpu
def test_device_is_built_on_and_recorded(tensorrt, bundle):
    entries = build_engines(bundle, "fp32", graphs=["text_encoder"], device=0)
    assert entries["text_encoder"]["device"] == 0
    assert entries["text_encoder"]["gpu"] == gpu_info(0)["name"]
    with pytest.raises(EngineBuildError, match="CUDA device 99 does not exist"):
        build_engines(bundle, "fp32", graphs=["text_encoder"], device=99)


@pytest.mark.gpu
def test_a_profile_tensorrt_refuses_names_the_input(tensorrt, bundle):
    """min above max (a manifest edited in memory, past its checks): TensorRT's set_shape
    raises (or, should a release return instead, add_optimization_profile refuses it), and
    the error says so instead of a traceback."""
    manifest = Manifest.load(bundle)
    manifest.data["profiles"]["T"] = {"min": 4, "opt": 2, "max": 1}
    with pytest.raises(EngineBuildError, match=r"TensorRT rejected the video (optimisation )?"
                                               r"profile"):  # fmt: skip
        build_engines(manifest, "fp32", graphs=["video"])
