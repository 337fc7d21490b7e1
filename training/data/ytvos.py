"""Ref-YouTube-VOS and Ref-DAVIS17 in ReferFormer's layout (the synthetic set uses it too).

    ROOT/
      meta_expressions/{train,valid}/meta_expressions.json   {"videos": {vid: {"expressions":
                                                              {id: {"exp", "obj_id"}}, "frames": [...]}}}
      {train,valid}/JPEGImages/<vid>/<frame>.jpg
      {train,valid}/Annotations/<vid>/<frame>.png             palette PNG, pixel value = object id
      {train,valid}/meta.json                                 optional: objects and categories

Training samples are clips of ``num_frames`` frames drawn around a reference frame as in
ReferFormer: the reference, one frame 1-3 before and one 1-3 after, and the rest drawn from the
whole video. Evaluation samples are whole videos. Randomness comes from (seed, epoch, index),
so a resumed run sees exactly the samples an uninterrupted run would.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .files import read_label_png, read_rgb
from .transforms import ClipTransform, mask_to_box, reverse_expression, to_tensor_clip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExpressionRecord:
    video: str
    exp_id: str
    expression: str
    obj_id: int
    frames: tuple[str, ...]
    frame_id: int = 0  # reference frame of a training clip


def sample_clip_indices(reference: int, length: int, num_frames: int, rng: random.Random) -> list[int]:
    """ReferFormer's clip sampling: reference, local neighbours, then global frames; sorted."""
    indices = [reference]
    if num_frames > 1:
        indices += [max(0, reference - rng.randint(1, 3)), min(length - 1, reference + rng.randint(1, 3))]
    if num_frames > 3:
        needed = num_frames - len(indices)
        outside = [i for i in range(length) if i < min(indices) or i > max(indices)]
        if len(outside) >= needed:
            indices += rng.sample(outside, needed)
        elif length >= needed:
            indices += rng.sample(range(length), needed)
        else:  # a video shorter than the clip: repeat frames
            indices += list(range(length)) + [rng.randrange(length) for _ in range(needed - length)]
    return sorted(indices[:num_frames])


def read_expressions(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"expression file not found: {path}")
    try:
        videos = json.loads(path.read_text())["videos"]
    except (json.JSONDecodeError, KeyError) as error:
        raise ValueError(f"{path} is not a meta_expressions.json ({error})") from None
    return videos


class RefYouTubeVOS(Dataset):
    """Referring video clips with their target masks and boxes.

    Args:
        root: the dataset root (layout above).
        split: "train" or "valid".
        num_frames: frames per training clip; ``None`` gives whole videos (evaluation).
        transform: a ``ClipTransform``; by default training-style for "train" when clips are
            drawn, evaluation-style otherwise.
        seed: seeds clip sampling and augmentation together with the epoch and the index.
        reverse_prob: probability of playing a training clip backwards, with the direction
            after a motion verb swapped in its expression ("moving left" -> "moving right",
            ``reverse_expression``): the same frames then carry both directions, so only the
            frame order tells them apart. 0 (the default) draws nothing from the sample's RNG.
    Each item is a dict: ``frames`` (T, 3, H, W) normalised, ``masks`` (T, H, W) bool,
    ``boxes`` (T, 4) normalised cx, cy, w, h, ``valid`` (T,) bool, ``expression``, ``video``,
    ``exp_id``, ``frame_names``, ``orig_size`` (H0, W0).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        num_frames: int | None = 8,
        transform: ClipTransform | None = None,
        seed: int = 0,
        reverse_prob: float = 0.0,
    ) -> None:
        if not 0.0 <= reverse_prob <= 1.0:
            raise ValueError(f"reverse_prob must be in [0, 1], got {reverse_prob}")
        self.root = Path(root)
        self.reverse_prob = reverse_prob
        self.split = split
        self.num_frames = num_frames
        self.seed = seed
        self.epoch = 0
        self.transform = transform or ClipTransform(train=split == "train" and num_frames is not None)
        self.image_dir = self.root / split / "JPEGImages"
        self.label_dir = self.root / split / "Annotations"
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"no JPEGImages for split {split!r} under {self.root}")
        videos = read_expressions(self.root / "meta_expressions" / split / "meta_expressions.json")
        self.records: list[ExpressionRecord] = []
        for video, data in sorted(videos.items()):
            frames = tuple(sorted(data["frames"]))
            for exp_id, exp in sorted(data["expressions"].items(), key=lambda kv: int(kv[0])):
                if "obj_id" not in exp:
                    continue  # Ref-YouTube-VOS valid/test: no annotation to learn from
                base = ExpressionRecord(video, exp_id, exp["exp"], int(exp["obj_id"]), frames)
                if num_frames is None:
                    self.records.append(base)
                else:  # one clip per num_frames frames, as ReferFormer
                    for frame_id in range(0, len(frames), num_frames):
                        self.records.append(
                            ExpressionRecord(base.video, base.exp_id, base.expression, base.obj_id, frames, frame_id)
                        )
        if not self.records:
            raise ValueError(f"no annotated expressions in split {split!r} of {self.root}")
        log.info("%s %s: %d videos, %d samples", self.root.name, split, len(videos), len(self.records))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def read_frame(self, video: str, frame: str) -> np.ndarray:
        """RGB (H, W, 3) uint8; ``DataFileError`` naming the file if it is missing or corrupt."""
        return read_rgb(self.image_dir / video / f"{frame}.jpg", "frame")

    def label_path(self, video: str, frame: str) -> Path:
        return self.label_dir / video / f"{frame}.png"

    def is_annotated(self, video: str, frame: str) -> bool:
        """Whether the frame has an annotation (Ref-YouTube-VOS annotates every 5th frame)."""
        return self.label_path(video, frame).is_file()

    def read_label(self, video: str, frame: str, shape: tuple[int, int] | None = None) -> np.ndarray:
        """The frame's (H, W) id map as stored: 0 background, object ids, 255 void (DAVIS)."""
        return read_label_png(self.label_path(video, frame), shape)

    def read_mask(self, video: str, frame: str, obj_id: int, shape: tuple[int, int]) -> np.ndarray:
        """The object's (H, W) bool mask; void counts as background here (the per-expression
        protocol and training); an unannotated frame gives an empty mask of ``shape``."""
        if not self.is_annotated(video, frame):
            return np.zeros(shape, bool)
        return self.read_label(video, frame, shape) == obj_id

    def __getitem__(self, index: int) -> dict:
        rng = random.Random(hash((self.seed, self.epoch, index)))
        for attempt in range(10):
            record = self.records[index]
            if self.num_frames is None:
                indices = list(range(len(record.frames)))
            else:
                indices = sample_clip_indices(record.frame_id, len(record.frames), self.num_frames, rng)
            names = [record.frames[i] for i in indices]
            frames = [self.read_frame(record.video, name) for name in names]
            masks = [self.read_mask(record.video, n, record.obj_id, f.shape[:2]) for n, f in zip(names, frames)]
            orig_size = frames[0].shape[:2]
            frames, masks, expression = self.transform(frames, masks, record.expression, rng)
            if self.reverse_prob and rng.random() < self.reverse_prob:
                frames, masks, names = frames[::-1], masks[::-1], names[::-1]
                expression = reverse_expression(expression)
            boxes, valid = zip(*(mask_to_box(m) for m in masks))
            if any(valid) or self.num_frames is None:
                break
            index = rng.randrange(len(self.records))  # target absent from the whole clip
        return {
            "frames": to_tensor_clip(frames),
            "masks": torch.from_numpy(np.stack(masks)),
            "boxes": torch.from_numpy(np.stack(boxes)),
            "valid": torch.tensor(valid),
            "expression": " ".join(expression.lower().split()),
            "video": record.video,
            "exp_id": record.exp_id,
            "frame_names": names,
            "orig_size": tuple(orig_size),
        }
