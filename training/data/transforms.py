"""Clip transforms shared by every dataset: random resize, horizontal flip, normalisation.

A clip is a list of RGB ``uint8`` arrays (H, W, 3) and a list of boolean target masks (H, W);
boxes are always recomputed from the transformed masks, so they can never disagree.
"""

from __future__ import annotations

import random
import re

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Word pairs a horizontal flip swaps in an expression.
_FLIP_WORDS = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}
_FLIP_PATTERN = re.compile(r"\b(" + "|".join(_FLIP_WORDS) + r")\b", re.IGNORECASE)


def flip_expression(expression: str) -> str:
    """Swap left and right in an expression, keeping capitalisation."""

    def swap(match: re.Match) -> str:
        word = match.group(0)
        new = _FLIP_WORDS[word.lower()]
        return new.capitalize() if word[0].isupper() else new

    return _FLIP_PATTERN.sub(swap, expression)


# Temporal reversal turns "moving left" into "moving right": direction words right after a motion
# verb (optionally "to the" / "towards the") are swapped; positions ("on the left") and relations
# ("left of", "to the right of") are not, since reversing time does not move anything.
_REVERSE_WORDS = {"left": "right", "right": "left", "up": "down", "down": "up"}
_MOTION_VERBS = (
    "moving", "walking", "running", "going", "heading", "driving", "flying", "swimming",
    "riding", "rolling", "sliding", "drifting", "travelling", "traveling",
)  # fmt: skip
_REVERSE_PATTERN = re.compile(
    r"\b(" + "|".join(_MOTION_VERBS) + r")(\s+(?:to\s+the\s+|towards\s+the\s+)?)("
    + "|".join(_REVERSE_WORDS) + r")\b(?!\s+of\b)",  # "running to the right of X": a relation
    re.IGNORECASE,
)


def reverse_expression(expression: str) -> str:
    """The expression for the same clip played backwards: the direction after a motion verb
    is swapped ("moving left" -> "moving right", "going up" -> "going down"), keeping
    capitalisation; everything else is kept."""

    def swap(match: re.Match) -> str:
        word = match.group(3)
        new = _REVERSE_WORDS[word.lower()]
        return match.group(1) + match.group(2) + (new.capitalize() if word[0].isupper() else new)

    return _REVERSE_PATTERN.sub(swap, expression)


def resize_clip(
    frames: list[np.ndarray], masks: list[np.ndarray], size: tuple[int, int]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Bilinear frames, nearest masks, to ``size`` = (H, W)."""
    height, width = size
    frames = [np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in frames]
    masks = [
        np.asarray(Image.fromarray(m.astype(np.uint8)).resize((width, height), Image.NEAREST)) > 0
        for m in masks
    ]
    return frames, masks


def scaled_size(height: int, width: int, short_side: int, max_size: int | None) -> tuple[int, int]:
    """(H, W) with the short side at ``short_side`` and the long side at most ``max_size``."""
    scale = short_side / min(height, width)
    if max_size is not None and max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


class ClipTransform:
    """Training or evaluation transform of a clip and its expression.

    Args:
        train: random resize and flip when True; a fixed resize otherwise.
        scales: short-side sizes to draw from in training (ReferFormer: 288..512 for 360p).
        eval_short_side: the short side in evaluation (360 for Ref-YouTube-VOS).
        max_size: cap of the long side.
        flip_prob: probability of a horizontal flip (which also swaps left/right in the text).
    """

    def __init__(
        self,
        train: bool,
        scales: tuple[int, ...] = (288, 320, 352, 392, 416, 448, 480, 512),
        eval_short_side: int | None = 360,
        max_size: int | None = 640,
        flip_prob: float = 0.5,
    ) -> None:
        self.train = train
        self.scales = scales
        self.eval_short_side = eval_short_side
        self.max_size = max_size
        self.flip_prob = flip_prob

    def __call__(
        self, frames: list[np.ndarray], masks: list[np.ndarray], expression: str, rng: random.Random
    ) -> tuple[list[np.ndarray], list[np.ndarray], str]:
        height, width = frames[0].shape[:2]
        if self.train:
            if rng.random() < self.flip_prob:
                frames = [np.ascontiguousarray(f[:, ::-1]) for f in frames]
                masks = [np.ascontiguousarray(m[:, ::-1]) for m in masks]
                expression = flip_expression(expression)
            short = rng.choice(self.scales)
        else:
            short = self.eval_short_side
        if short is not None:
            size = scaled_size(height, width, short, self.max_size)
            if size != (height, width):
                frames, masks = resize_clip(frames, masks, size)
        return frames, masks, expression


def mask_to_box(mask: np.ndarray) -> tuple[np.ndarray, bool]:
    """Normalised (cx, cy, w, h) of a boolean mask and whether the object is visible."""
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return np.zeros(4, np.float32), False
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    box = np.array(
        [(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height],
        np.float32,
    )
    return box, True


def to_tensor_clip(frames: list[np.ndarray]) -> torch.Tensor:
    """(T, H, W, 3) uint8 list -> (T, 3, H, W) float normalised with ImageNet statistics."""
    clip = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous().float()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0
    return clip.sub_(mean).div_(std)  # in place: one float copy of the clip, not four
