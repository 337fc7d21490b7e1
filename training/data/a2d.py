"""A2D-Sentences and JHMDB-Sentences in MTTR's annotation layout.

A2D-Sentences (``ROOT``)::

    Release/videoset.csv                      no header: vid, label, start, end, height, width,
                                              total frames, annotated frames, subset (0 train, 1 test)
    Release/clips320H/<vid>.mp4               the clips (or Release/JPEGImages/<vid>/<frame>.jpg)
    text_annotations/a2d_annotation.txt       CSV: video_id, instance_id, query
    text_annotations/a2d_missed_videos.txt    videos to leave out
    text_annotations/a2d_annotation_with_instances/<vid>/<frame:05d>.h5
                                              datasets "instance" (ids) and "reMask" (masks, W x H)

JHMDB-Sentences (``ROOT``), evaluation only::

    jhmdb_annotation.txt                      CSV: video_id, query
    Rename_Images/<action>/<vid>/<frame:05d>.png
    puppet_mask/<action>/<vid>/puppet_mask.mat   "part_mask" (H, W, T)

A sample is one annotated frame and one expression; its clip is ``num_frames`` frames with
the annotated frame in the middle (edges repeated), as MTTR and ReferFormer do. Only that
frame carries a mask: ``annotated`` marks it so losses and metrics use it alone. Frame
numbers are 1-based in both datasets.
"""

from __future__ import annotations

import abc
import csv
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .files import DataFileError, read_rgb
from .transforms import ClipTransform, mask_to_box, to_tensor_clip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameSample:
    video: str
    frame: int  # 1-based index of the annotated frame
    expression: str
    instance: int  # A2D instance id; 0 for JHMDB (one actor)
    num_video_frames: int


def centred_window(frame: int, length: int, window: int) -> list[int]:
    """1-based frame numbers of a window centred on ``frame`` (MTTR), clamped to the video."""
    start = frame - window // 2
    return [min(max(i, 1), length) for i in range(start, start + window)]


class _SentenceDataset(Dataset, abc.ABC):
    """Shared item assembly: clip around the annotated frame, masks, boxes, flags. Subclasses
    say how to read frames and the annotated mask."""

    samples: list[FrameSample]

    def __init__(self, num_frames: int | None, transform: ClipTransform | None, seed: int, train: bool):
        self.num_frames = num_frames or 8
        self.transform = transform or ClipTransform(train=train, eval_short_side=320, max_size=576)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    @abc.abstractmethod
    def read_frames(self, sample: FrameSample, numbers: list[int]) -> list[np.ndarray]:
        """RGB frames (H, W, 3) uint8 with the given 1-based numbers."""

    @abc.abstractmethod
    def read_target(self, sample: FrameSample) -> np.ndarray:
        """The (H, W) bool mask of the referred object on the annotated frame."""

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        rng = random.Random(hash((self.seed, self.epoch, index)))
        numbers = centred_window(sample.frame, sample.num_video_frames, self.num_frames)
        frames = self.read_frames(sample, numbers)
        target = self.read_target(sample)
        if target.shape != frames[0].shape[:2]:
            raise ValueError(
                f"mask of {sample.video} frame {sample.frame} is {target.shape}, "
                f"its frame {frames[0].shape[:2]}"
            )
        centre = self.num_frames // 2
        masks = [target if i == centre else np.zeros_like(target) for i in range(self.num_frames)]
        orig_size = frames[0].shape[:2]
        frames, masks, expression = self.transform(frames, masks, sample.expression, rng)
        boxes, valid = zip(*(mask_to_box(m) for m in masks))
        annotated = torch.zeros(self.num_frames, dtype=torch.bool)
        annotated[centre] = True
        return {
            "frames": to_tensor_clip(frames),
            "masks": torch.from_numpy(np.stack(masks)),
            "boxes": torch.from_numpy(np.stack(boxes)),
            "valid": torch.tensor(valid) & annotated,
            "annotated": annotated,
            "expression": " ".join(expression.lower().split()),
            "video": sample.video,
            "exp_id": f"{sample.frame:05d}_{sample.instance}",
            "frame_names": [f"{n:05d}" for n in numbers],
            "orig_size": tuple(orig_size),
        }


class A2DSentences(_SentenceDataset):
    """A2D-Sentences; ``split`` is "train" or "test" ("valid" means "test")."""

    def __init__(self, root, split="train", num_frames=8, transform=None, seed=0) -> None:
        split = "test" if split == "valid" else split
        if split not in ("train", "test"):
            raise ValueError(f"A2D-Sentences has train and test splits, not {split!r}")
        super().__init__(num_frames, transform, seed, train=split == "train")
        self.root = Path(root)
        videoset = self.root / "Release" / "videoset.csv"
        annotations = self.root / "text_annotations" / "a2d_annotation.txt"
        for path in (videoset, annotations):
            if not path.is_file():
                raise FileNotFoundError(f"A2D-Sentences file not found: {path}")
        missed_path = self.root / "text_annotations" / "a2d_missed_videos.txt"
        missed = set(missed_path.read_text().split()) if missed_path.is_file() else set()
        wanted = {"train": "0", "test": "1"}[split]
        lengths = {}
        with open(videoset, newline="") as handle:
            for row in csv.reader(handle):
                if len(row) < 9:
                    raise ValueError(f"{videoset}: expected 9 columns, got {row}")
                if row[8].strip() == wanted and row[0] not in missed:
                    lengths[row[0]] = int(row[6])
        self.mask_dir = self.root / "text_annotations" / "a2d_annotation_with_instances"
        self.samples = []
        with open(annotations, newline="") as handle:
            for row in csv.DictReader(handle):
                video, instance = row["video_id"], row["instance_id"]
                if video not in lengths or not instance.strip().isdigit():
                    continue  # other split, or the dataset's one "1 (copy)" mistake
                for h5 in sorted((self.mask_dir / video).glob("*.h5")):
                    if int(instance) in read_instance_file(h5)[0]:
                        self.samples.append(FrameSample(
                            video, int(h5.stem), row["query"].lower(), int(instance), lengths[video]
                        ))  # fmt: skip
        if not self.samples:
            raise ValueError(f"no A2D-Sentences samples for split {split!r} under {self.root}")
        log.info("A2D-Sentences %s: %d samples", split, len(self.samples))

    def read_frames(self, sample: FrameSample, numbers: list[int]) -> list[np.ndarray]:
        frame_dir = self.root / "Release" / "JPEGImages" / sample.video
        if frame_dir.is_dir():
            return [read_rgb(frame_dir / f"{n:05d}.jpg") for n in numbers]
        return read_video_frames(self.root / "Release" / "clips320H" / f"{sample.video}.mp4", numbers)

    def read_target(self, sample: FrameSample) -> np.ndarray:
        path = self.mask_dir / sample.video / f"{sample.frame:05d}.h5"
        instances, masks = read_instance_file(path, masks=True)
        if masks.ndim == 2:
            masks = masks[None]
        if instances.index(sample.instance) >= len(masks):
            raise DataFileError(f"{path}: {len(instances)} instances but {len(masks)} masks in 'reMask'")
        return masks[instances.index(sample.instance)].T > 0  # stored transposed (W, H)


class JHMDBSentences(_SentenceDataset):
    """JHMDB-Sentences (evaluation only): three frames per video drawn with ``seed``."""

    def __init__(self, root, split="test", num_frames=8, transform=None, seed=0, frames_per_video=3):
        if split == "train":
            raise ValueError("JHMDB-Sentences is an evaluation set: it has no training split")
        super().__init__(num_frames, transform, seed, train=False)
        self.root = Path(root)
        annotations = self.root / "jhmdb_annotation.txt"
        if not annotations.is_file():
            raise FileNotFoundError(f"JHMDB-Sentences file not found: {annotations}")
        self.frame_dirs = {p.name: p for p in (self.root / "Rename_Images").glob("*/*") if p.is_dir()}
        self.mask_files = {p.parent.name: p for p in (self.root / "puppet_mask").glob("*/*/puppet_mask.mat")}
        self._masks: dict[str, np.ndarray] = {}
        rng = random.Random(seed)
        self.samples = []
        with open(annotations, newline="") as handle:
            for row in csv.DictReader(handle):
                video = row["video_id"]
                if video not in self.frame_dirs or video not in self.mask_files:
                    raise FileNotFoundError(f"JHMDB-Sentences video {video} has no frames or puppet mask")
                # Trailing frames without a mask cannot be evaluated (MTTR drops them too).
                length = min(len(list(self.frame_dirs[video].glob("*.png"))), self.video_masks(video).shape[0])
                for frame in sorted(rng.sample(range(1, length + 1), min(frames_per_video, length))):
                    self.samples.append(FrameSample(video, frame, row["query"].lower(), 0, length))
        log.info("JHMDB-Sentences: %d samples", len(self.samples))

    def video_masks(self, video: str) -> np.ndarray:
        if video not in self._masks:
            from scipy.io import loadmat

            path = self.mask_files[video]
            try:
                masks = np.asarray(loadmat(str(path))["part_mask"])
            except KeyError:
                raise DataFileError(f"puppet mask {path} has no 'part_mask' variable") from None
            except Exception as error:  # a cut file makes scipy raise IndexError,
                # MatReadError, ValueError... depending on where it ends: all of them mean this file
                raise DataFileError(
                    f"cannot read puppet mask {path}: expected a MATLAB file, got {type(error).__name__}: {error}"
                ) from error
            if masks.ndim != 3:
                raise DataFileError(f"puppet mask {path}: 'part_mask' should be (H, W, T), got shape {masks.shape}")
            self._masks[video] = masks.transpose(2, 0, 1)
        return self._masks[video]

    def read_frames(self, sample: FrameSample, numbers: list[int]) -> list[np.ndarray]:
        return [read_rgb(self.frame_dirs[sample.video] / f"{n:05d}.png") for n in numbers]

    def read_target(self, sample: FrameSample) -> np.ndarray:
        return self.video_masks(sample.video)[sample.frame - 1] > 0


def read_video_frames(path: Path, numbers: list[int]) -> list[np.ndarray]:
    """RGB frames with the given 1-based numbers from a video file (OpenCV)."""
    import cv2

    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise DataFileError(f"cannot open video {path}: OpenCV reads no stream from it (corrupt or not a video)")
    try:
        wanted = sorted(set(numbers))
        frames: dict[int, np.ndarray] = {}
        capture.set(cv2.CAP_PROP_POS_FRAMES, wanted[0] - 1)
        current = wanted[0]
        while current <= wanted[-1]:
            ok, frame = capture.read()
            if not ok:
                break
            if current in wanted:
                frames[current] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            current += 1
    finally:
        capture.release()
    missing = [n for n in wanted if n not in frames]
    if missing:
        raise ValueError(f"{path} has no frames {missing} (it may be shorter than its metadata says)")
    return [frames[n] for n in numbers]


def read_instance_file(path: Path, masks: bool = False) -> tuple[list[int], np.ndarray | None]:
    """A2D's per-frame HDF5: the instance ids ("instance") and, with ``masks``, "reMask";
    ``DataFileError`` naming the file when it is corrupt or lacks them."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            instances = np.atleast_1d(np.asarray(f["instance"])).astype(int).tolist()
            stored = np.asarray(f["reMask"]) if masks else None
    except KeyError as error:
        raise DataFileError(f"A2D annotation {path} lacks a dataset: {error}") from None
    except (OSError, ValueError, TypeError) as error:
        raise DataFileError(
            f"cannot read A2D annotation {path}: expected an HDF5 file, got {type(error).__name__}: {error}"
        ) from error
    return instances, stored
