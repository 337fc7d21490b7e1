"""Backends on a tiny hand-built bundle: onnxruntime on CPU here, TensorRT on a GPU machine.

The bundle (``bundles.write_numpy_toy``) has the real graphs' input/output names, dtypes and
named dims, with tiny computations that numpy can repeat, and a manifest written through
``runtime.manifest``.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bundles import (
    CHANNELS,
    HEIGHT,
    WIDTH,
    text_feeds,
    text_reference,
    video_feeds,
    video_reference,
    write_numpy_toy,
)

from runtime.backends import (
    AVAILABLE,
    BackendUnavailable,
    EngineMismatchError,
    InputError,
    OnnxRuntimeBackend,
    available_backends,
    check_engine_entry,
    check_feeds,
    compute_capability,
    gpu_status,
    load_backend,
    tensorrt_ep_options,
)
from runtime.manifest import BundleError, Manifest
from runtime.profiles import profile_shape

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Manifest:
    """The numpy toy bundle (fp32 graphs that ``text_reference``/``video_reference`` repeat)."""
    return write_numpy_toy(tmp_path_factory.mktemp("bundle"))


def onnxruntime_cuda_present() -> bool:
    return available_backends()["onnxruntime-cuda"] == AVAILABLE


# -- onnxruntime on CPU --------------------------------------------------------------------


def test_onnxruntime_text_encoder_matches_numpy(bundle):
    backend = OnnxRuntimeBackend(bundle, "text_encoder", threads=1)
    assert backend.name == "onnxruntime-cpu fp32"
    assert backend.input_names == ("input_ids", "attention_mask")
    assert backend.output_names == ("text_features",)
    for expressions, tokens in [(2, 5), (1, 1), (3, 6)]:
        feeds = text_feeds(expressions, tokens)
        outputs = backend.infer(feeds)
        assert list(outputs) == ["text_features"]
        assert outputs["text_features"].shape == (expressions, tokens, CHANNELS)
        np.testing.assert_allclose(outputs["text_features"], text_reference(**feeds), atol=1e-6)
    backend.close()


def test_onnxruntime_video_matches_numpy(bundle):
    backend = OnnxRuntimeBackend(bundle, "video", threads=1, graph_optimization_level="basic")
    for frames, expressions in [(3, 2), (1, 1), (4, 3)]:
        feeds = video_feeds(frames, expressions)
        outputs = backend.infer(feeds)
        reference = video_reference(**feeds)
        assert list(outputs) == ["pred_logits", "pred_boxes", "pred_masks"]
        for name, expected in reference.items():
            assert outputs[name].dtype == np.float32
            assert outputs[name].shape == expected.shape
            np.testing.assert_allclose(outputs[name], expected, rtol=1e-5, atol=1e-6)
    backend.close()


def test_onnxruntime_profiling_writes_json(bundle, tmp_path):
    backend = OnnxRuntimeBackend(
        bundle, "text_encoder", threads=1, profile=True, profile_dir=tmp_path
    )
    backend.infer(text_feeds())
    path = Path(backend.end_profiling())
    assert path.parent == tmp_path and path.suffix == ".json"
    assert isinstance(json.loads(path.read_text()), list)


def test_infer_checks_feeds_first(bundle):
    backend = OnnxRuntimeBackend(bundle, "text_encoder", threads=1)
    feeds = text_feeds()
    feeds["input_ids"] = feeds["input_ids"].astype(np.int32)
    with pytest.raises(InputError, match="input 'input_ids' expects int64"):
        backend.infer(feeds)


# -- check_feeds ---------------------------------------------------------------------------


def _drop(name):
    def mutate(feeds):
        del feeds[name]

    return mutate


def _set(name, make):
    def mutate(feeds):
        feeds[name] = make(feeds)

    return mutate


CHECK_CASES = {
    "missing": (
        "text_encoder",
        _drop("attention_mask"),
        ["missing", "'attention_mask'", "int64[E in 1..3, L in 1..6]", "input_ids"],
    ),
    "extra": (
        "text_encoder",
        _set("token_type_ids", lambda f: np.zeros((2, 5), np.int64)),
        ["unexpected", "'token_type_ids' int64[2, 5]", "'input_ids' int64[E in 1..3, L in 1..6]"],
    ),
    "dtype": (
        "text_encoder",
        _set("input_ids", lambda f: f["input_ids"].astype(np.int32)),
        ["'input_ids'", "int64[E in 1..3, L in 1..6]", "received int32[2, 5]", "dtype int32"],
    ),
    "rank": (
        "text_encoder",
        _set("input_ids", lambda f: f["input_ids"][..., None]),
        [
            "'input_ids'",
            "int64[E in 1..3, L in 1..6]",
            "received int64[2, 5, 1]",
            "rank 3 is not 2",
        ],
    ),
    "static_dim": (
        "video",
        _set("frames", lambda f: np.zeros((3, HEIGHT, WIDTH + 1, 3), np.uint8)),
        ["'frames'", "uint8[T in 1..4, 8, 12, 3]", "received uint8[3, 8, 13, 3]", "dim 2 is 13"],
    ),
    "above_profile": (
        "video",
        _set("frames", lambda f: np.zeros((5, HEIGHT, WIDTH, 3), np.uint8)),
        ["'frames'", "uint8[T in 1..4, 8, 12, 3]", "received uint8[5, 8, 12, 3]", "T=5", "1..4"],
    ),
    "inconsistent_axis": (
        "video",
        _set("attention_mask", lambda f: np.ones((3, 5), np.int64)),
        [
            "'attention_mask'",
            "int64[E in 1..3, L in 1..6]",
            "received int64[3, 5]",
            "E=3 but 'text_features' has E=2",
        ],
    ),
    "not_an_array": (
        "text_encoder",
        _set("input_ids", lambda f: f["input_ids"].tolist()),
        ["'input_ids'", "int64[E in 1..3, L in 1..6]", "a list, not a numpy array"],
    ),
}


@pytest.mark.parametrize("case", list(CHECK_CASES))
def test_check_feeds_errors_name_tensor_and_shapes(bundle, case):
    graph, mutate, expected = CHECK_CASES[case]
    feeds = text_feeds() if graph == "text_encoder" else video_feeds()
    mutate(feeds)
    with pytest.raises(InputError) as raised:
        check_feeds(graph, bundle.inputs(graph), bundle.profiles, feeds)
    message = str(raised.value)
    assert message.startswith(f"{graph}: ")
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_check_feeds_returns_axis_values(bundle):
    axes = check_feeds("video", bundle.inputs("video"), bundle.profiles, video_feeds(4, 3, 6))
    assert axes == {"T": 4, "E": 3, "L": 6}


# -- providers, choice, availability -------------------------------------------------------


def test_unavailable_provider_names_available_ones(bundle):
    if onnxruntime_cuda_present():
        pytest.skip("the CUDA provider is available here")
    import onnxruntime

    with pytest.raises(BackendUnavailable) as raised:
        OnnxRuntimeBackend(bundle, "text_encoder", providers=["cuda"])
    message = str(raised.value)
    assert "CUDAExecutionProvider" in message and "not available" in message
    for provider in onnxruntime.get_available_providers():
        assert provider in message


def test_tensorrt_ep_options_from_manifest(bundle, tmp_path):
    options = tensorrt_ep_options(bundle, "video", "fp16", cache_dir=tmp_path)
    assert all(isinstance(value, str) for value in options.values())
    assert options["trt_fp16_enable"] == "True" and options["trt_int8_enable"] == "False"
    assert options["trt_engine_cache_enable"] == "True"
    assert options["trt_engine_cache_path"] == str(tmp_path)
    assert options["trt_timing_cache_enable"] == "True"
    assert options["trt_profile_min_shapes"] == (
        "frames:1x8x12x3,text_features:1x1x4,attention_mask:1x1"
    )
    assert options["trt_profile_opt_shapes"] == (
        "frames:2x8x12x3,text_features:2x4x4,attention_mask:2x4"
    )
    assert options["trt_profile_max_shapes"] == (
        "frames:4x8x12x3,text_features:3x6x4,attention_mask:3x6"
    )
    fp32 = tensorrt_ep_options(bundle, "text_encoder", "fp32", cache_dir=tmp_path)
    assert fp32["trt_fp16_enable"] == "False"
    assert fp32["trt_profile_max_shapes"] == "input_ids:3x6,attention_mask:3x6"


def test_load_backend_auto_on_a_cpu(bundle, caplog):
    """Without a GPU backend, "auto" is OpenVINO where it is installed, else onnxruntime CPU;
    the log names the choice and why TensorRT was passed over."""
    backends = available_backends()
    if backends["tensorrt"] == AVAILABLE or backends["onnxruntime-cuda"] == AVAILABLE:
        pytest.skip("a GPU backend is available here")
    with caplog.at_level(logging.INFO, logger="runtime.backends"):
        backend = load_backend(bundle, "text_encoder", threads=1, cuda_graph=True, cache_dir=None)
    if backends["openvino-cpu"] == AVAILABLE:
        assert type(backend).__name__ == "OpenVINOBackend"
        assert backend.name == "openvino-cpu fp32"
        assert "auto chose OpenVINO CPU" in caplog.text
    else:
        assert isinstance(backend, OnnxRuntimeBackend)
        assert backend.name == "onnxruntime-cpu fp32"
        assert "auto chose onnxruntime CPU" in caplog.text
    assert "TensorRT:" in caplog.text  # the reason TensorRT was passed over
    assert "cuda_graph" in caplog.text  # an option the chosen backend does not take, logged
    np.testing.assert_allclose(
        backend.infer(text_feeds())["text_features"], text_reference(**text_feeds()), atol=1e-6
    )


def test_load_backend_auto_without_openvino_keeps_onnxruntime(bundle):
    """A Python where ``import openvino`` fails (``sys.modules`` entry None: what Python does
    for a package that is not there) keeps onnxruntime on the CPU and says why."""
    if available_backends()["onnxruntime-cuda"] == AVAILABLE:
        pytest.skip("onnxruntime CUDA comes before OpenVINO and onnxruntime CPU here")
    code = (
        "import logging, sys; sys.modules['openvino'] = None;"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout);"
        "from runtime.backends import load_backend, available_backends;"
        "assert 'openvino is not installed' in available_backends()['openvino-cpu'];"
        f"b = load_backend({str(bundle.root)!r}, 'video', threads=1); print('CHOSEN', b.name);"
        f"load_backend({str(bundle.root)!r}, 'video', precision='bf16')"
    )
    run = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "CHOSEN onnxruntime-cpu fp32" in run.stdout, run.stdout + run.stderr
    assert "auto chose onnxruntime CPU" in run.stdout
    assert "OpenVINO: openvino is not installed" in run.stdout
    # bf16 has no fallback: only OpenVINO runs it.
    assert run.returncode == 1
    assert "BackendUnavailable: precision 'bf16' runs only on the OpenVINO backend" in run.stderr


def test_load_backend_by_name(bundle):
    backend = load_backend(bundle.root, "video", "ort", threads=1)
    assert isinstance(backend, OnnxRuntimeBackend)
    with pytest.raises(BundleError, match="no 'fp16' variant"):
        load_backend(bundle, "video", "onnxruntime", precision="fp16")
    with pytest.raises(ValueError, match="not one of .*'openvino'"):
        load_backend(bundle, "video", "tflite")
    with pytest.raises(ValueError, match="bf16 is a runtime precision .* only the OpenVINO"):
        load_backend(bundle, "video", "onnxruntime", precision="bf16")


def test_available_backends_explains_tensorrt(bundle):
    backends = available_backends()
    assert set(backends) == {
        "onnxruntime-cpu",
        "onnxruntime-cuda",
        "onnxruntime-tensorrt",
        "tensorrt",
        "openvino-cpu",
    }
    assert backends["onnxruntime-cpu"] == AVAILABLE
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert "tensorrt is not installed" in backends["tensorrt"]
        # The bundle is checked before TensorRT is imported: no engine is the first problem.
        with pytest.raises(BundleError, match="no fp32 TensorRT engine for video"):
            load_backend(bundle, "video", "tensorrt", precision="fp32")
    else:
        assert backends["tensorrt"] == AVAILABLE or backends["tensorrt"]


# -- engine entries (pure Python: the mismatch message is written before any GPU call) -------


def test_compute_capability_forms():
    for value in ("8.9", "89", "sm_89", 8.9, [8, 9], (8, 9)):
        assert compute_capability(value) == (8, 9)
    assert compute_capability("100") == (10, 0)
    assert compute_capability(None) is None


def test_engine_entry_mismatch_says_what_and_how_to_rebuild(tmp_path):
    entry = {
        "file": "engines/video.fp16.plan",
        "tensorrt": "10.9.0.34",
        "gpu": "NVIDIA A100-SXM4-80GB",
        "compute_capability": "8.0",
    }
    with pytest.raises(EngineMismatchError) as raised:
        check_engine_entry(
            entry, "video", "fp16", tmp_path, "10.13.0.35", "NVIDIA H100 80GB HBM3", (9, 0)
        )
    message = str(raised.value)
    for fragment in (
        "built with TensorRT 10.9.0.34 for sm_80 on GPU NVIDIA A100-SXM4-80GB",
        "this machine has TensorRT 10.13.0.35 and NVIDIA H100 80GB HBM3 (sm_90)",
        f"python export/build_engine.py --bundle {tmp_path} --precision fp16",
    ):
        assert fragment in message
    # Same TensorRT and GPU: accepted; a shorter recorded version matches by prefix.
    check_engine_entry(entry, "video", "fp16", tmp_path, "10.9.0.34", entry["gpu"], (8, 0))
    check_engine_entry(
        {**entry, "tensorrt": "10.9"}, "video", "fp16", tmp_path, "10.9.0.34", entry["gpu"], (8, 0)
    )
    # Another SKU of the same architecture only with allow_other_gpu.
    with pytest.raises(EngineMismatchError, match="GPU differ"):
        check_engine_entry(
            entry, "video", "fp16", tmp_path, "10.9.0.34", "NVIDIA A100-PCIE", (8, 0)
        )
    check_engine_entry(
        entry,
        "video",
        "fp16",
        tmp_path,
        "10.9.0.34",
        "NVIDIA A100-PCIE",
        (8, 0),
        allow_other_gpu=True,
    )


def test_cuda_python_calls_reach_the_driver():
    """Without a GPU every cuda-python call must fail in CUDA, not in argument conversion.

    This pins the signatures used by the TensorRT backend (cudaMemcpyAsync's five arguments,
    cudaGraphInstantiate(graph, flags), ...) against the installed cuda-python.
    """
    pytest.importorskip("cuda.bindings.runtime")
    if gpu_status() == AVAILABLE:
        pytest.skip("a GPU is present; the TensorRT tests exercise these calls for real")
    from runtime.backends.gpu import CudaError, CudaPython, import_cudart

    cudart = import_cudart()
    api = CudaPython(cudart)
    stream = cudart.cudaStream_t(0)
    host = np.zeros(4, np.float32)
    calls = {
        "device_count": lambda: api.device_count(),
        "set_device": lambda: api.set_device(0),
        "device_info": lambda: api.device_info(0),
        "malloc": lambda: api.malloc(256),
        "stream_create": lambda: api.stream_create(),
        "synchronize": lambda: api.synchronize(stream),
        "htod": lambda: api.memcpy_htod_async(0, host, stream),
        "dtoh": lambda: api.memcpy_dtoh_async(host, 0, stream),
        "begin_capture": lambda: api.begin_capture(stream),
        "end_capture": lambda: api.end_capture(stream),
        "instantiate": lambda: api.graph_instantiate(cudart.cudaGraph_t(0)),
        "launch": lambda: api.graph_launch(cudart.cudaGraphExec_t(0), stream),
        "destroy": lambda: api.graph_destroy(cudart.cudaGraph_t(0), cudart.cudaGraphExec_t(0)),
    }
    for name, call in calls.items():
        with pytest.raises(CudaError, match=r"failed: cudaError") as raised:
            call()
        assert "cudaError" in str(raised.value), name
    assert api.stream_handle(stream) == 0


def test_importing_backends_does_not_import_torch():
    code = "import runtime.backends, sys; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# -- TensorRT (GPU machines only; no mocks) -------------------------------------------------


@pytest.fixture()
def engine_bundle(bundle, tmp_path):
    """A copy of the tiny bundle with fp32 TensorRT engines for both graphs."""
    trt = pytest.importorskip("tensorrt")
    status = gpu_status()
    if status != AVAILABLE:
        pytest.skip(status)
    from runtime.backends import tensorrt_logger
    from runtime.backends.gpu import load_cuda_api

    root = tmp_path / "bundle"
    shutil.copytree(bundle.root, root)
    manifest = Manifest.load(root)
    cuda = load_cuda_api(0)
    gpu_name, (major, minor) = cuda.device_info(0)
    cuda.release()
    (root / "engines").mkdir()
    for graph in ("text_encoder", "video"):
        builder = trt.Builder(tensorrt_logger())
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10+
        parser = trt.OnnxParser(network, tensorrt_logger())
        if not parser.parse((root / f"{graph}.onnx").read_bytes()):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            pytest.fail(f"TensorRT could not parse {graph}.onnx: {errors}")
        config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        for spec in manifest.inputs(graph):
            shapes = [profile_shape(spec, manifest.profiles, w) for w in ("min", "opt", "max")]
            profile.set_shape(spec.name, *shapes)
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        assert serialized is not None, f"TensorRT could not build {graph}"
        relative = f"engines/{graph}.fp32.plan"
        with open(root / relative, "wb") as handle:
            handle.write(serialized)
        manifest.add_engine(
            "fp32",
            graph,
            {
                "file": relative,
                "tensorrt": trt.__version__,
                "gpu": gpu_name,
                "compute_capability": f"{major}.{minor}",
            },
        )
        manifest.add_file(relative, "engine")
    manifest.save()
    return Manifest.load(root)


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_tensorrt_backend_matches_numpy(engine_bundle, cuda_graph):
    from runtime.backends import TensorRTBackend

    with TensorRTBackend(engine_bundle, "text_encoder", "fp32", cuda_graph=cuda_graph) as text:
        for expressions, tokens in [(2, 5), (2, 5), (3, 6), (1, 2)]:
            feeds = text_feeds(expressions, tokens)
            got = text.infer(feeds)["text_features"]
            np.testing.assert_allclose(got, text_reference(**feeds), atol=1e-5)
    # Same shape twice (graph replay), a larger one (buffers grow), a smaller one.
    with TensorRTBackend(engine_bundle, "video", "fp32", cuda_graph=cuda_graph) as video:
        for frames, expressions in [(3, 2), (3, 2), (4, 3), (1, 1)]:
            feeds = video_feeds(frames, expressions)
            outputs = video.infer(feeds)
            for name, expected in video_reference(**feeds).items():
                np.testing.assert_allclose(outputs[name], expected, rtol=1e-4, atol=1e-5)
        with pytest.raises(InputError, match="T=5"):
            video.infer(video_feeds(5, 1))


@pytest.mark.gpu
def test_tensorrt_auto_and_mismatch(engine_bundle):
    from runtime.backends import TensorRTBackend

    backend = load_backend(engine_bundle, "text_encoder", precision="fp32")
    assert backend.name == "tensorrt fp32"
    backend.close()
    engine_bundle.data["engines"]["fp32"]["video"]["tensorrt"] = "0.0.1"
    with pytest.raises(EngineMismatchError, match=r"[Rr]ebuild with"):
        TensorRTBackend(engine_bundle, "video", "fp32")


# -- the device option, auto's fallback from TensorRT, the TensorRT EP's library ---------------


def test_device_option_reaches_the_backend_under_its_own_name():
    """TensorRTBackend takes ``device``, onnxruntime ``device_id``: either name reaches either
    backend (auto dropped the one it did not know, so GPU 1 ran on GPU 0)."""
    from runtime.backends import TensorRTBackend
    from runtime.backends.registry import backend_options

    assert backend_options(TensorRTBackend, {"device_id": 1}) == {"device": 1}
    assert backend_options(OnnxRuntimeBackend, {"device": 1, "threads": 2}) == {
        "device_id": 1,
        "threads": 2,
    }
    assert backend_options(OnnxRuntimeBackend, {"device_id": 1}) == {"device_id": 1}
    with pytest.raises(ValueError, match="device=1 and device_id=0 name the same thing"):
        backend_options(OnnxRuntimeBackend, {"device": 1, "device_id": 0})


def test_load_backend_by_name_takes_either_device_name(bundle):
    """``device`` reaches onnxruntime as ``device_id`` (before, a TypeError by name and a
    silently dropped option through auto)."""
    for options in ({"device": 0}, {"device_id": 0}):
        backend = load_backend(bundle, "text_encoder", "onnxruntime", threads=1, **options)
        assert isinstance(backend, OnnxRuntimeBackend)
        backend.close()


def _with_engine_entry(bundle: Manifest, root: Path, plan: bytes | None) -> Manifest:
    """A copy of the toy bundle whose manifest lists an fp32 engine for text_encoder; the
    plan file holds ``plan`` (bytes that are no TensorRT engine), or is deleted (None)."""
    shutil.copytree(bundle.root, root)
    manifest = Manifest.load(root)
    (root / "engines").mkdir()
    relative = "engines/text_encoder.fp32.plan"
    (root / relative).write_bytes(plan or b"not an engine")
    manifest.add_file(relative, "tensorrt engine")
    entry = {"file": relative, "tensorrt": "10.9", "gpu": "NVIDIA H100", "compute_capability": "9.0"}
    manifest.add_engine("fp32", "text_encoder", entry)
    manifest.save()
    if plan is None:
        (root / relative).unlink()
    return Manifest.load(root, verify=False)


def test_tensorrt_backend_names_a_missing_plan_before_loading_tensorrt(bundle, tmp_path):
    manifest = _with_engine_entry(bundle, tmp_path / "bundle", plan=None)
    with pytest.raises(BundleError, match=r"text_encoder.fp32.plan .*listed in the manifest but "
                                          r"missing; rebuild it with"):  # fmt: skip
        load_backend(manifest, "text_encoder", "tensorrt", precision="fp32")


@pytest.mark.parametrize("plan", [None, b"not an engine"], ids=["missing-plan", "bad-plan"])
def test_auto_falls_back_from_tensorrt_with_the_reason(bundle, tmp_path, caplog, plan):
    """A listed engine that cannot run (its file gone; here also no TensorRT, or on a GPU
    machine a plan that does not deserialize) sends auto to the next backend, logged."""
    manifest = _with_engine_entry(bundle, tmp_path / "bundle", plan=plan)
    with caplog.at_level(logging.INFO, logger="runtime.backends"):
        backend = load_backend(manifest, "text_encoder", precision="fp32", threads=1,
                               cache_dir=None)  # fmt: skip
    assert backend.name.endswith("fp32") and not backend.name.startswith("tensorrt")
    assert "not using the TensorRT fp32 engine for text_encoder" in caplog.text
    if plan is None:
        assert "listed in the manifest but missing" in caplog.text
    np.testing.assert_allclose(
        backend.infer(text_feeds())["text_features"], text_reference(**text_feeds()), atol=1e-6
    )


def test_tensorrt_ep_needs_the_libnvinfer_major_it_links():
    """The TensorRT EP's check loads libnvinfer.so.<major> (the version the provider links),
    not just ``import tensorrt``; without TensorRT 10's library it says which one to get."""
    from runtime.backends.ort import (
        load_nvinfer,
        nvinfer_library_names,
        tensorrt_ep_requirement,
        tensorrt_ep_status,
        tensorrt_version_from_int,
    )

    ort = pytest.importorskip("onnxruntime")
    assert tensorrt_version_from_int(100900) == (10, 9, 0)
    assert tensorrt_version_from_int(110400) == (11, 4, 0)
    assert tensorrt_version_from_int(8601) == (8, 6, 1)
    assert nvinfer_library_names(10)[0] == "libnvinfer.so.10"
    path, major = tensorrt_ep_requirement(ort)
    assert major == 10 or path is not None  # read from the provider's library where it exists
    loaded = load_nvinfer(major)
    status = tensorrt_ep_status(ort)
    if isinstance(loaded, str):  # no TensorRT of that major here
        assert f"libnvinfer.so.{major}" in loaded
        assert status is not None and f"needs libnvinfer.so.{major} (TensorRT {major})" in status
        assert f'"tensorrt-cu12-libs>={major},<{major + 1}"' in status
    else:
        assert loaded[0] == major and status is None


# -- onnxruntime-gpu: the CUDA and TensorRT execution providers (GPU machines only) -------------


def _provider_status(key: str) -> str:
    return available_backends()[key]


@pytest.mark.gpu
@pytest.mark.skipif(not onnxruntime_cuda_present(), reason=_provider_status("onnxruntime-cuda"))
@pytest.mark.parametrize("options", [{}, {"device_id": 0}, {"device": 0}])
def test_onnxruntime_cuda_matches_numpy(bundle, options):
    """The CUDA provider runs the graph (no silent fall back to the CPU) and gets its outputs
    right; ``device`` and ``device_id`` both reach it."""
    backend = load_backend(bundle, "video", "onnxruntime", providers=["cuda"], **options)
    assert backend.name == "onnxruntime-cuda fp32"
    assert backend.providers[0] == "CUDAExecutionProvider"
    for frames, expressions in [(3, 2), (4, 3), (1, 1)]:
        feeds = video_feeds(frames, expressions)
        outputs = backend.infer(feeds)
        for name, expected in video_reference(**feeds).items():
            np.testing.assert_allclose(outputs[name], expected, rtol=1e-4, atol=1e-5)
    backend.close()


@pytest.mark.gpu
def test_auto_on_a_gpu_without_engines_takes_onnxruntime_cuda(bundle, caplog):
    if not onnxruntime_cuda_present():
        pytest.skip(_provider_status("onnxruntime-cuda"))
    with caplog.at_level(logging.INFO, logger="runtime.backends"):
        backend = load_backend(bundle, "text_encoder", device=0)
    assert backend.name == "onnxruntime-cuda fp32", caplog.text
    assert "TensorRT: the bundle has no fp32 engine for text_encoder" in caplog.text
    np.testing.assert_allclose(
        backend.infer(text_feeds())["text_features"], text_reference(**text_feeds()), atol=1e-5
    )


@pytest.mark.gpu
@pytest.mark.skipif(
    _provider_status("onnxruntime-tensorrt") != AVAILABLE,
    reason=_provider_status("onnxruntime-tensorrt"),
)
def test_onnxruntime_tensorrt_ep_matches_numpy_with_one_engine_per_profile(bundle, tmp_path):
    """The TensorRT provider (libnvinfer of the major it links, loaded) runs the graph at every
    shape of the manifest's profile from one cached engine."""
    backend = OnnxRuntimeBackend(bundle, "video", providers=["tensorrt"], trt_cache_dir=tmp_path)
    assert backend.providers[0] == "TensorrtExecutionProvider"
    engines = []
    for frames, expressions in [(3, 2), (4, 3), (1, 1)]:
        feeds = video_feeds(frames, expressions)
        outputs = backend.infer(feeds)
        for name, expected in video_reference(**feeds).items():
            np.testing.assert_allclose(outputs[name], expected, rtol=1e-3, atol=1e-4)
        engines.append(sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".engine"))
    backend.close()
    # Built for the profile at the first call and cached; the other shapes reuse it.
    assert engines[0] and engines[0] == engines[-1], engines
