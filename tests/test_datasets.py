"""A2D-Sentences and JHMDB-Sentences loaders on tiny fixtures in their real layouts, and the
A2D/JHMDB metrics. The fixtures are written with the libraries the real files come from:
OpenCV (mp4), h5py (instance masks), scipy (puppet masks)."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import build_dataset
from training.data.a2d import centred_window
from training.metrics import frame_metrics, mask_average_precision

H, W, FRAMES = 48, 64, 10


def frame_value(number):
    return 20 * number  # frame n is filled with grey level 20n, to check which frame was read


def write_mp4(path, frames):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (W, H))
    assert writer.isOpened()
    for n in range(1, frames + 1):
        writer.write(np.full((H, W, 3), frame_value(n), np.uint8))
    writer.release()


def box_mask(top, left, height, width):
    mask = np.zeros((H, W), np.uint8)
    mask[top : top + height, left : left + width] = 1
    return mask


@pytest.fixture(scope="module")
def a2d_root(tmp_path_factory):
    import h5py

    root = tmp_path_factory.mktemp("a2d")
    (root / "Release/clips320H").mkdir(parents=True)
    annotations = root / "text_annotations/a2d_annotation_with_instances"
    annotations.mkdir(parents=True)
    with open(root / "Release/videoset.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["vidA", 1, 0, 1, H, W, FRAMES, 2, 0])  # train
        writer.writerow(["vidB", 1, 0, 1, H, W, FRAMES, 1, 1])  # test
        writer.writerow(["vidC", 1, 0, 1, H, W, FRAMES, 1, 0])  # train, but in the missed list
    (root / "text_annotations/a2d_missed_videos.txt").write_text("vidC\n")
    with open(root / "text_annotations/a2d_annotation.txt", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "instance_id", "query"])
        writer.writerow(["vidA", "1", "The Man walking on the left"])
        writer.writerow(["vidA", "2", "a dog running"])
        writer.writerow(["vidA", "1 (copy)", "a duplicate the real dataset has"])
        writer.writerow(["vidB", "1", "a ball rolling"])
        writer.writerow(["vidC", "1", "never used"])
    for video in ("vidA", "vidB", "vidC"):
        write_mp4(root / f"Release/clips320H/{video}.mp4", FRAMES)
        (annotations / video).mkdir()
    # vidA frame 3: instances 1 and 2; frame 7: instance 1 only (a 2-D reMask, as h5 stores it).
    with h5py.File(annotations / "vidA/00003.h5", "w") as f:
        f["instance"] = np.array([1, 2])
        f["reMask"] = np.stack([box_mask(4, 4, 10, 20).T, box_mask(20, 30, 12, 8).T])
    with h5py.File(annotations / "vidA/00007.h5", "w") as f:
        f["instance"] = np.array([1])
        f["reMask"] = box_mask(6, 10, 10, 20).T
    with h5py.File(annotations / "vidB/00005.h5", "w") as f:
        f["instance"] = np.array([1])
        f["reMask"] = box_mask(10, 10, 5, 5).T
    with h5py.File(annotations / "vidC/00005.h5", "w") as f:
        f["instance"] = np.array([1])
        f["reMask"] = box_mask(10, 10, 5, 5).T
    return root


def test_a2d_samples_and_items(a2d_root):
    from training.data.transforms import ClipTransform

    dataset = build_dataset("a2d", a2d_root, "train", 4, ClipTransform(train=False, eval_short_side=None))
    # vidA instance 1 at frames 3 and 7, instance 2 at frame 3; vidC is left out.
    assert sorted((s.video, s.frame, s.instance) for s in dataset.samples) == [
        ("vidA", 3, 1), ("vidA", 3, 2), ("vidA", 7, 1),
    ]  # fmt: skip
    index = [i for i, s in enumerate(dataset.samples) if (s.frame, s.instance) == (3, 2)][0]
    item = dataset[index]
    assert item["frames"].shape == (4, 3, H, W)
    assert item["frame_names"] == ["00001", "00002", "00003", "00004"]  # centred, clamped
    assert item["annotated"].tolist() == [False, False, True, False]
    assert torch.equal(item["masks"][2], torch.from_numpy(box_mask(20, 30, 12, 8).astype(bool)))
    assert not item["masks"][0].any() and item["valid"].tolist() == [False, False, True, False]
    # The right frames were decoded: grey level 20n after de-normalisation (mp4 is lossy).
    grey = item["frames"][:, 0].mean(dim=(1, 2)) * 0.229 + 0.485
    assert torch.allclose(grey * 255, torch.tensor([20.0, 40, 60, 80]), atol=6)
    assert build_dataset("a2d", a2d_root, "test", 4).samples[0].video == "vidB"


def test_a2d_training_flip_swaps_left_and_right(a2d_root):
    from training.data.transforms import ClipTransform

    dataset = build_dataset("a2d", a2d_root, "train", 2, ClipTransform(train=True, scales=(48,), flip_prob=1.0))
    index = [i for i, s in enumerate(dataset.samples) if s.instance == 1][0]
    item = dataset[index]
    assert item["expression"] == "the man walking on the right"
    centre = int(item["annotated"].nonzero()[0, 0])
    assert torch.equal(item["masks"][centre], torch.from_numpy(box_mask(4, 4, 10, 20)[:, ::-1].astype(bool).copy()))


def test_a2d_bad_layouts(tmp_path, a2d_root):
    with pytest.raises(FileNotFoundError, match="videoset.csv"):
        build_dataset("a2d", tmp_path, "train", 4)
    with pytest.raises(ValueError, match="train and test splits"):
        build_dataset("a2d", a2d_root, "val2", 4)
    with pytest.raises(ValueError, match="unknown dataset kind"):
        build_dataset("kinetics", a2d_root, "train", 4)


@pytest.fixture(scope="module")
def jhmdb_root(tmp_path_factory):
    from scipy.io import savemat

    root = tmp_path_factory.mktemp("jhmdb")
    for action, video in (("walk", "v1"), ("jump", "v2")):
        frame_dir = root / "Rename_Images" / action / video
        frame_dir.mkdir(parents=True)
        for n in range(1, FRAMES + 1):
            Image.fromarray(np.full((H, W, 3), frame_value(n), np.uint8)).save(frame_dir / f"{n:05d}.png")
        masks = np.stack([box_mask(5 + n, 5, 10, 10) for n in range(FRAMES - 2)], axis=-1)  # 2 unmasked
        (root / "puppet_mask" / action / video).mkdir(parents=True)
        savemat(root / "puppet_mask" / action / video / "puppet_mask.mat", {"part_mask": masks})
    with open(root / "jhmdb_annotation.txt", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "query"])
        writer.writerow(["v1", "a man is walking"])
        writer.writerow(["v2", "a girl jumping"])
    return root


def test_jhmdb_samples_use_masked_frames_only(jhmdb_root):
    dataset = build_dataset("jhmdb", jhmdb_root, "test", 4)
    assert len(dataset.samples) == 6  # three frames per video
    assert all(1 <= s.frame <= FRAMES - 2 for s in dataset.samples)
    sample = dataset.samples[0]
    item = dataset[0]
    centre = int(item["annotated"].nonzero()[0, 0])
    assert item["frame_names"][centre] == f"{sample.frame:05d}"
    expected = box_mask(5 + sample.frame - 1, 5, 10, 10).astype(bool)
    assert np.array_equal(dataset.read_target(sample), expected)
    with pytest.raises(ValueError, match="no training split"):
        build_dataset("jhmdb", jhmdb_root, "train", 4)


def test_centred_window():
    assert centred_window(1, 10, 4) == [1, 1, 1, 2]
    assert centred_window(10, 10, 5) == [8, 9, 10, 10, 10]


def test_frame_metrics_and_average_precision():
    gt = [box_mask(0, 0, 10, 10).astype(bool), box_mask(10, 10, 10, 10).astype(bool)]
    metrics = frame_metrics([1.0, 0.55], [100, 55], [100, 100])
    assert metrics["P@0.5"] == 1.0 and metrics["P@0.6"] == 0.5 and metrics["P@0.9"] == 0.5
    assert metrics["overall_iou"] == pytest.approx(155 / 200)
    assert metrics["mean_iou"] == pytest.approx(0.775)
    perfect = [(m[None], np.array([0.9])) for m in gt]
    assert mask_average_precision(gt, perfect)["mAP"] == pytest.approx(1.0)
    wrong = [(np.roll(m, 30, axis=1)[None], np.array([0.9])) for m in gt]
    assert mask_average_precision(gt, wrong)["mAP"] == pytest.approx(0.0)


def test_evaluate_a2d_end_to_end(a2d_root, tiny_model, tokenizer):
    from training.evaluate import evaluate_frames

    dataset = build_dataset("a2d", a2d_root, "test", 4)
    result = evaluate_frames(tiny_model, tokenizer, dataset)
    summary = result["summary"]
    assert summary["frames"] == 1 and 0 <= summary["mean_iou"] <= 1 and 0 <= summary["mAP"] <= 1
