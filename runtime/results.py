"""What ``RVOSPredictor`` returns: the text embedding it reuses, each window of a stream
(``WindowResult``), a whole video's ``Segmentation``, and the names of their timings."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .budget import Plan

# A window's timings (ms): text (the first window's), video graphs, post-processing, and
# "compile", the part of text and video spent compiling for new input shapes (OpenVINO's
# static shapes: about 5 s per shape for paper-swin-t), a one-off a server pays once.
TIMING_KEYS = ("text", "video", "postprocess", "compile")


@dataclass
class TextEmbedding:
    """What ``encode_text`` returns: reusable across videos of the same expressions."""

    expressions: list[str]
    features: np.ndarray  # (E, L, C) float32
    mask: np.ndarray  # (E, L) int64
    truncated: list[bool]


@dataclass
class Segmentation:
    masks: np.ndarray  # (E, T, H0, W0) bool
    scores: np.ndarray  # (E,) mean over windows of the chosen query's mean probability
    queries: np.ndarray  # (E, n_windows) chosen query per window
    frame_names: list[str]
    timings_ms: dict[str, float] = field(default_factory=dict)
    windows: list[dict] = field(default_factory=list)  # WindowResult.record() of each window
    plan: dict | None = None  # the memory budget's plan (runtime.budget.Plan.as_dict)


@dataclass
class WindowResult:
    """One window's finished frames: what ``RVOSPredictor.stream`` yields.

    The last ``overlap`` frames of a window are finished by the next window (merged over the
    frames both saw), so ``names`` / ``frames`` / ``masks`` are the frames finished now, from
    video frame ``start`` on, while ``window`` is the span of frames this call ran on.
    """

    index: int
    start: int
    names: list[str]
    frames: list[np.ndarray]  # original RGB frames, uint8 [H0, W0, 3]
    masks: np.ndarray  # (E, t, H0, W0) bool
    window: tuple[int, int]  # [first, end) video frames of the call
    choices: list  # runtime.stream.Choice per expression
    timings_ms: dict[str, float]  # TIMING_KEYS
    plan: Plan | None = None  # how the window ran under a memory budget

    def record(self) -> dict:
        """The window for a result JSON: its span and each expression's choice."""
        return {"index": self.index, "frames": list(self.window),
                "choices": [choice.as_dict() for choice in self.choices]}  # fmt: skip


__all__ = ["TIMING_KEYS", "Segmentation", "TextEmbedding", "WindowResult"]
