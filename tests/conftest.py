"""Shared fixtures: tiny real models and tokenized expressions (no downloads, no mocks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from proxyformer.config import get_preset
from proxyformer.model import build_proxyformer
from proxyformer.text import encode_texts, load_tokenizer

EXPRESSIONS = ["the small red circle moving left", "the square above the green triangle"]


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Compiled-model caches (OpenVINO, onnxruntime's TensorRT provider) go to this session's
    temporary directory, not the user's ~/.cache, which nothing would ever clean."""
    import os

    previous = os.environ.get("PROXYFORMER_CACHE")
    os.environ["PROXYFORMER_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("PROXYFORMER_CACHE", None)
    else:
        os.environ["PROXYFORMER_CACHE"] = previous


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_config():
    return get_preset("tiny")


@pytest.fixture(scope="session")
def tokenizer(tiny_config):
    return load_tokenizer(tiny_config)


@pytest.fixture(scope="session")
def text_inputs(tokenizer):
    return encode_texts(tokenizer, EXPRESSIONS)


def make_model(config):
    torch.manual_seed(0)
    return build_proxyformer(config)


@pytest.fixture()
def tiny_model(tiny_config):
    return make_model(tiny_config).eval()


def random_frames(batch=2, frames=3, height=64, width=96):
    return torch.randn(batch, frames, 3, height, width)


SHIPPED_CHECKPOINT = Path(__file__).parents[1] / "checkpoints" / "tiny-synthetic"


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """The shipped tiny checkpoint exported once per session (64x96, T 1:3:6, E 1:1:4,
    L <= 12) with FP32 and FP16 graphs; tests that change a bundle copy it first."""
    from export.onnx_export import export_bundle

    out = tmp_path_factory.mktemp("tiny-bundle") / "bundle"
    export_bundle(
        SHIPPED_CHECKPOINT, out, size=(64, 96), frames="1:3:6", expressions="1:1:4",
        max_text_len=12, precisions=("fp32", "fp16"),
    )  # fmt: skip
    return out


def calibrated_copy(bundle: Path, data: Path, tmp_path_factory) -> Path:
    """A copy of ``bundle`` with both INT8 variants, calibrated on 6 clips of ``data`` and
    checked on 4 held-out ones (the bundles the calibration and paper tests share)."""
    import shutil

    from calibration.int8 import calibrate_bundle

    copy = tmp_path_factory.mktemp("calibrated") / "bundle"
    shutil.copytree(bundle, copy)
    calibrate_bundle(copy, data, ("int8-tensorrt", "int8-cpu"), "entropy", samples=6,
                     check_samples=4, threads=2)  # fmt: skip
    return copy


def video_feeds(manifest, expressions: int):
    """5 random frames for the video graphs, and the text inputs of ``expressions``
    expressions: ``text_features`` from the bundle's own text graph, ``attention_mask``."""
    from benchmarks.workload import make_feeds
    from runtime.backends import load_backend

    feeds = make_feeds(manifest, 5, expressions, 8)
    text = load_backend(manifest, "text_encoder", "onnxruntime").infer(
        {k: feeds[k] for k in ("input_ids", "attention_mask")})["text_features"]  # fmt: skip
    return feeds["frames"], {"text_features": text, "attention_mask": feeds["attention_mask"]}


@pytest.fixture(scope="session")
def make_synthetic(tmp_path_factory):
    """The one builder of synthetic referring-video sets for the tests: ``make(videos, frames,
    size, seed)`` writes a set once per session and returns its root."""
    from training.data.synthetic import write_dataset

    written = {}

    def make(videos: int = 16, frames: int = 5, size=(64, 96), seed: int = 3):
        key = (videos, frames, tuple(size), seed)
        if key not in written:
            root = tmp_path_factory.mktemp("synth")
            written[key] = write_dataset(root, videos=videos, frames=frames, size=size, seed=seed)
        return written[key]

    return make


@pytest.fixture(scope="session")
def synth_data(make_synthetic):
    """A small synthetic referring-video set at the test bundle's size (64x96)."""
    return make_synthetic()


@pytest.fixture(scope="session")
def paper_bundle(tmp_path_factory):
    """paper-mini with random weights, exported once per session (FP32 and FP16, with the
    split video graph): the paper-architecture, OpenVINO and memory-budget tests share it."""
    from export.onnx_export import export_bundle

    out = tmp_path_factory.mktemp("paper-mini") / "bundle"
    export_bundle(
        None, out, preset="paper-mini", size=(64, 96), frames="1:3:6", expressions="1:1:4",
        max_text_len=12, precisions=("fp32", "fp16"), seed=0, split=True,
    )  # fmt: skip
    return out


@pytest.fixture(scope="session")
def paper_int8(paper_bundle, synth_data, tmp_path_factory):
    return calibrated_copy(paper_bundle, synth_data, tmp_path_factory)


@pytest.fixture(scope="session")
def clip(synth_data) -> np.ndarray:
    from runtime.video import read_video

    folder = min((synth_data / "valid" / "JPEGImages").iterdir())
    frames, _ = read_video(folder)
    return frames[:5]


@pytest.fixture(scope="session")
def tiny_int8(tiny_bundle, synth_data, tmp_path_factory):
    """The test bundle with both INT8 variants, shared read-only (tests that recalibrate take
    their own ``calibrated_copy``)."""
    return calibrated_copy(tiny_bundle, synth_data, tmp_path_factory)
