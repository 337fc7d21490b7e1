"""Issue item 14 (part): a corrupt annotation or frame among a dataset's thousands is reported by
its path, what was expected and what was found, both when a training item is read and in
evaluation (before the model runs on that video). Real files cut short or re-saved in another
format, in the real layouts (Ref-YouTube-VOS/synthetic, A2D-Sentences, JHMDB-Sentences)."""

from __future__ import annotations

import csv
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from training.data import build_dataset
from training.data.transforms import ClipTransform


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture
def synth(make_synthetic, tmp_path):
    """A private copy of a small synthetic set (the session one is shared: never damage it)."""
    root = tmp_path / "synth"
    shutil.copytree(make_synthetic(videos=4, frames=3, size=(48, 64), seed=5), root)
    return root


def first_video(root, split):
    return min(p.name for p in (root / split / "JPEGImages").iterdir())


def names_file(path):
    return re.escape(str(path))


def evaluation_set(root):
    return build_dataset("ytvos", root, "valid", None, ClipTransform(False, eval_short_side=None))


class Recorder:
    """A ``segment`` hook that records whether it ran: a bad file must be found before."""

    def __init__(self):
        self.calls = 0

    def __call__(self, frames, expressions):
        self.calls += 1
        return np.zeros((len(expressions), len(frames), *frames[0].shape[:2]), bool), np.zeros(
            (len(expressions), 1)
        )


def test_truncated_annotation_png_is_named_in_training_and_evaluation(synth):
    from training.evaluate import evaluate

    train_png = synth / "train/Annotations" / first_video(synth, "train") / "00000.png"
    truncate(train_png)
    dataset = build_dataset("ytvos", synth, "train", 3)
    index = next(i for i, r in enumerate(dataset.records) if r.video == train_png.parent.name)
    with pytest.raises(
        ValueError, match=f"cannot read annotation {names_file(train_png)}: expected a readable PNG"
    ):
        dataset[index]
    valid_png = synth / "valid/Annotations" / first_video(synth, "valid") / "00001.png"
    truncate(valid_png)
    segment = Recorder()
    with pytest.raises(ValueError, match=names_file(valid_png)):
        evaluate(None, None, evaluation_set(synth), segment=segment)
    assert segment.calls == 0  # found before the model ran on the video


def test_truncated_jpeg_frame_is_named_in_training_and_evaluation(synth):
    from training.evaluate import evaluate

    frame = synth / "train/JPEGImages" / first_video(synth, "train") / "00000.jpg"  # in every clip
    truncate(frame, 0.4)
    dataset = build_dataset("ytvos", synth, "train", 3)
    index = next(i for i, r in enumerate(dataset.records) if r.video == frame.parent.name)
    with pytest.raises(
        ValueError, match=f"cannot read frame {names_file(frame)}: expected a readable image"
    ):
        dataset[index]
    frame = synth / "valid/JPEGImages" / first_video(synth, "valid") / "00002.jpg"
    truncate(frame, 0.4)
    segment = Recorder()
    with pytest.raises(ValueError, match=names_file(frame)):
        evaluate(None, None, evaluation_set(synth), segment=segment)
    assert segment.calls == 0


def test_rgb_annotation_is_refused_not_quantised(synth):
    """An annotation re-saved as RGB (its palette colours): converting it to ids would invent
    them (PIL's web palette), so it is refused with its path and mode."""
    png = synth / "valid/Annotations" / first_video(synth, "valid") / "00000.png"
    with Image.open(png) as label:
        label.convert("RGB").save(png)
    dataset = evaluation_set(synth)
    record = next(r for r in dataset.records if r.video == png.parent.name)
    with pytest.raises(
        ValueError, match=f"annotation {names_file(png)} is a RGB image: expected a palette"
    ):
        dataset.read_mask(record.video, "00000", record.obj_id, (48, 64))


def test_annotation_of_another_size_than_its_frame_is_named(synth):
    from training.evaluate import evaluate

    png = synth / "valid/Annotations" / first_video(synth, "valid") / "00000.png"  # in every clip
    with Image.open(png) as label:
        label.resize((32, 24), Image.NEAREST).save(png)
    with pytest.raises(
        ValueError, match=f"annotation {names_file(png)} is 24x32 but its frame is 48x64"
    ):
        evaluate(None, None, evaluation_set(synth), segment=Recorder())
    dataset = build_dataset("ytvos", synth, "valid", 3, ClipTransform(False, eval_short_side=None))
    index = next(i for i, r in enumerate(dataset.records) if r.video == png.parent.name)
    with pytest.raises(ValueError, match=names_file(png)):
        dataset[index]


# -- A2D-Sentences and JHMDB-Sentences -----------------------------------------------------

H, W, FRAMES = 32, 48, 5


def a2d_root(tmp_path):
    import h5py

    root = tmp_path / "a2d"
    frames = root / "Release/JPEGImages/vidA"
    frames.mkdir(parents=True)
    for n in range(1, FRAMES + 1):
        Image.fromarray(np.full((H, W, 3), 40 * n, np.uint8)).save(frames / f"{n:05d}.jpg")
    with open(root / "Release/videoset.csv", "w", newline="") as handle:
        csv.writer(handle).writerow(["vidA", 1, 0, 1, H, W, FRAMES, 1, 0])
    annotations = root / "text_annotations/a2d_annotation_with_instances/vidA"
    annotations.mkdir(parents=True)
    with open(root / "text_annotations/a2d_annotation.txt", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "instance_id", "query"])
        writer.writerow(["vidA", "1", "a man walking"])
    mask = np.zeros((H, W), np.uint8)
    mask[5:15, 5:20] = 1
    with h5py.File(annotations / "00003.h5", "w") as f:
        f["instance"] = np.array([1])
        f["reMask"] = mask.T
    return root


def test_a2d_truncated_frame_and_annotation_are_named(tmp_path):
    root = a2d_root(tmp_path)
    dataset = build_dataset("a2d", root, "train", 3)
    frame = root / "Release/JPEGImages/vidA/00002.jpg"
    truncate(frame, 0.4)
    with pytest.raises(ValueError, match=f"cannot read frame {names_file(frame)}"):
        dataset[0]
    h5 = root / "text_annotations/a2d_annotation_with_instances/vidA/00003.h5"
    truncate(h5)
    with pytest.raises(
        ValueError, match=f"cannot read A2D annotation {names_file(h5)}: expected an HDF5 file"
    ):
        build_dataset("a2d", root, "train", 3)


def test_jhmdb_truncated_puppet_mask_is_named(tmp_path):
    from scipy.io import savemat

    root = tmp_path / "jhmdb"
    frames = root / "Rename_Images/walk/v1"
    frames.mkdir(parents=True)
    for n in range(1, FRAMES + 1):
        Image.fromarray(np.full((H, W, 3), 40 * n, np.uint8)).save(frames / f"{n:05d}.png")
    mat = root / "puppet_mask/walk/v1/puppet_mask.mat"
    mat.parent.mkdir(parents=True)
    savemat(mat, {"part_mask": np.ones((H, W, FRAMES), np.uint8)})
    with open(root / "jhmdb_annotation.txt", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "query"])
        writer.writerow(["v1", "a man is walking"])
    truncate(mat)
    with pytest.raises(
        ValueError, match=f"cannot read puppet mask {names_file(mat)}: expected a MATLAB file"
    ):
        build_dataset("jhmdb", root, "test", 3)
