"""The runtime end to end on the tiny bundle: masks equal PyTorch's, the CLI, bad inputs."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from runtime.backends import InputError
from runtime.manifest import BundleError, Manifest
from runtime.predictor import RVOSPredictor
from runtime.video import VideoError, read_video
from runtime.writers import write_video

TEXTS = ["the small red circle moving left", "the big blue square"]


@pytest.fixture(scope="module")
def predictor(tiny_bundle):
    return RVOSPredictor(tiny_bundle, backend="onnxruntime", threads=2)


@pytest.fixture(scope="module")
def video(synth_data) -> Path:
    return (
        synth_data
        / "valid"
        / "JPEGImages"
        / sorted((synth_data / "valid" / "JPEGImages").iterdir())[0].name
    )


def torch_masks(bundle: Path, frames: np.ndarray, texts: list[str], window: int):
    """The PyTorch reference: the model the bundle was exported from, eager, with
    ``proxyformer.postprocess.select_masks`` (the inference rule, runtime.selection)."""
    from export.onnx_export import load_model
    from proxyformer.postprocess import select_masks
    from proxyformer.text import encode_texts

    manifest = Manifest.load(bundle)
    checkpoint = manifest.data["model"]["checkpoint"]
    seed = manifest.data["model"].get("random_weights_seed", 0)
    model, tokenizer, _ = load_model(checkpoint, None if checkpoint else "tiny", 12, seed)
    size = tuple(manifest.preprocessing["size"])
    resized = np.stack([cv2.resize(f, size[::-1], interpolation=cv2.INTER_LINEAR) for f in frames])
    clip = model.normalize(torch.from_numpy(resized).permute(0, 3, 1, 2))
    ids, mask = encode_texts(tokenizer, texts)
    out = []
    with torch.no_grad():
        text = model.encode_text(ids, mask)
        for start in range(0, len(clip), window):
            levels = model.encode_frames(clip[None, start : start + window])
            levels = [level.expand(len(texts), *level.shape[1:]) for level in levels]
            outputs = model.decode(levels, text, mask, size, aux=False)
            masks, _, _ = select_masks(outputs, size, frames.shape[1:3])
            out.append(masks.numpy())
    return np.concatenate(out, axis=1)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def test_masks_match_pytorch(predictor, tiny_bundle, video):
    frames, names = read_video(video)
    result = predictor.segment(video, TEXTS)
    assert result.masks.shape == (2, len(frames), *frames.shape[1:3])
    assert result.masks.dtype == bool and result.frame_names == names
    assert result.scores.shape == (2,) and np.all((0 < result.scores) & (result.scores < 1))
    reference = torch_masks(tiny_bundle, frames, TEXTS, predictor.max_frames)
    for e in range(2):
        # The same query wins and the thresholded masks agree but for pixels on the boundary.
        assert iou(result.masks[e], reference[e]) > 0.98 or reference[e].sum() < 20
        assert np.mean(result.masks[e] != reference[e]) < 0.002


def test_windows_and_other_sizes(predictor, tiny_bundle):
    """A video longer than the frame profile runs in windows; frames of another size are
    resized to the bundle's and the masks come back at the video's own size."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (predictor.max_frames * 2 + 1, 50, 70, 3), dtype=np.uint8)
    result = predictor.segment(frames, TEXTS[:1])
    assert result.masks.shape == (1, len(frames), 50, 70)
    assert result.queries.shape == (1, 3)  # three windows
    reference = torch_masks(tiny_bundle, frames, TEXTS[:1], predictor.max_frames)
    assert np.mean(result.masks != reference) < 0.003
    small = predictor.segment(frames, TEXTS[:1], window=2)
    assert small.queries.shape == (1, len(frames) // 2 + 1)


def test_text_reused_and_expressions_in_groups(predictor, video):
    text = predictor.encode_text(TEXTS * 3)  # 6 expressions > the profile's 4: two groups
    assert text.features.shape[0] == 6
    result = predictor.segment(video, text)
    assert result.masks.shape[0] == 6
    np.testing.assert_array_equal(result.masks[0], result.masks[2])


def test_bad_inputs(predictor, tmp_path, caplog):
    with pytest.raises(VideoError, match="does not exist"):
        predictor.segment(tmp_path / "missing.mp4", TEXTS)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x01 not a video" * 100)
    with pytest.raises(VideoError, match="corrupt.mp4"):
        predictor.segment(corrupt, TEXTS)
    with pytest.raises(ValueError, match="expression 1 is empty"):
        predictor.encode_text(["the red circle", "  "])
    with pytest.raises(ValueError, match="no expressions"):
        predictor.encode_text([])
    with pytest.raises(VideoError, match="share a size"):
        predictor.segment([np.zeros((40, 60, 3), np.uint8), np.zeros((40, 61, 3), np.uint8)], TEXTS)
    with pytest.raises(VideoError, match="uint8"):
        predictor.segment(np.zeros((2, 40, 60, 3), np.float32), TEXTS)
    with pytest.raises(ValueError, match="window of 99 frames is outside"):
        predictor.segment(np.zeros((2, 40, 60, 3), np.uint8), TEXTS, window=99)
    with caplog.at_level(logging.WARNING, logger="runtime.predictor"):
        text = predictor.encode_text(["the red circle " * 40])
    assert text.truncated == [True] and "truncated" in caplog.text
    assert text.mask.shape[1] == predictor.max_text_length
    # The backend checks what reaches a graph against the manifest, naming the tensor.
    with pytest.raises(InputError, match="'frames' expects uint8\\[T in 1..6, 64, 96, 3\\]"):
        predictor.video_backend.infer({
            "frames": np.zeros((2, 64, 95, 3), np.uint8),
            "text_features": text.features, "attention_mask": text.mask,
        })  # fmt: skip


def test_tampered_bundle_is_refused(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    with open(copy / "text_encoder.onnx", "ab") as handle:
        handle.write(b"\x00")
    with pytest.raises(BundleError, match="text_encoder.onnx"):
        RVOSPredictor(copy)
    with pytest.raises(BundleError, match="no 'int8-cpu' variant"):
        RVOSPredictor(tiny_bundle, precision="int8-cpu")


def test_cli_segment_and_info(tiny_bundle, video, tmp_path):
    frames, names = read_video(video)
    mp4 = write_video(frames, tmp_path / "clip.mp4")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "runtime", "segment", "--bundle", str(tiny_bundle),
               "--video", str(mp4), "--text", TEXTS[0], "--text", TEXTS[1], "--out", str(out),
               "--threads", "2"]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    for e in ("0", "1"):
        pngs = sorted((out / "Annotations" / "clip" / e).glob("*.png"))
        assert len(pngs) == len(frames)
    assert (out / "clip_overlay.mp4").stat().st_size > 1000
    result = json.loads((out / "clip_result.json").read_text())
    assert [e["text"] for e in result["expressions"]] == TEXTS
    # The command restarted itself with glibc's malloc asking for huge pages where the machine
    # takes them (runtime.allocator), unless this environment already asked.
    from runtime.allocator import huge_page_environment, malloc_huge_pages

    assert result["malloc_huge_pages"] == (huge_page_environment() is not None
                                           or malloc_huge_pages())  # fmt: skip
    info = subprocess.run([sys.executable, "-m", "runtime", "info", "--bundle", str(tiny_bundle)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert info.returncode == 0 and "graph video" in info.stdout and "pred_masks" in info.stdout
    bad = subprocess.run([*command[:7], str(tmp_path / "nope.mp4"), *command[8:]],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "nope.mp4 does not exist" in bad.stderr


def test_runtime_never_imports_torch(tiny_bundle):
    code = (
        "import sys, runtime.predictor, runtime.__main__, runtime.video, runtime.manifest;"
        f"p = runtime.predictor.RVOSPredictor({str(tiny_bundle)!r});"
        "p.segment(__import__('numpy').zeros((2, 40, 60, 3), 'uint8'), ['the red circle']);"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
