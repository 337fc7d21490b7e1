"""Long videos: windows over a stream of frames, and one object per expression across them.

A video longer than one call runs in windows of at most ``window`` frames. Consecutive windows
share ``overlap`` frames (``iter_windows``), and each window's query is linked to the previous
window's track on those shared frames (``TrackLinker``):

- every query ``q`` of the new window gets the IoU of its masks with the previous window's
  chosen track on the shared frames (stride-4 masks, thresholded like the output masks), and
  the query with the highest ``(1 - link_weight) * score_q + link_weight * IoU_q`` is chosen,
  ``score_q`` being the query's frame-averaged class probability (``runtime.selection``).
  The default weight, 0.1, is the one that kept J&F at least that of independent windows on
  long synthetic videos while halving the switches; larger weights lock a wrong first choice
  in for the whole video (``benchmarks/long_video.py``; docs/benchmarks.md, "Long videos");
- where the previous track is empty on the shared frames there is nothing to agree with, and
  the score alone chooses (as it does in the first window, and with ``overlap=0``);
- an identity switch is recorded where the chosen query's IoU with the previous track is below
  ``switch_iou``: the expression's track moved to another object (or lost it). Switches are
  recorded with linking off as well, which is how linking is measured against independent
  windows.

The shared frames are written once: their mask logits are the mean of the two windows' tracks,
or the previous window's alone across a switch, so that the change of object happens after the
shared frames rather than as a blend of two objects on them.

With ``overlap=0`` every window chooses its own query from its own frames, as the PyTorch
evaluation does (``proxyformer.postprocess``); that is the library's default, so a video that
fits one window gives the same result either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from .budget import padded_frames
from .selection import chosen_tracks, query_scores


@dataclass
class Window:
    """Frames of one call: ``frames[:overlap]`` were the previous window's last frames."""

    index: int
    start: int  # the index of frames[0] in the video
    names: list[str]
    frames: list[np.ndarray]  # original RGB frames, uint8 [H, W, 3]
    overlap: int
    last: bool


def check_overlap(overlap: int, window: int) -> int:
    """``overlap`` as a whole number of frames in ``[0, window)``: each window must bring at
    least one new frame."""
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)):
        raise TypeError(f"overlap must be a whole number of frames, got {overlap!r}")
    if not 0 <= overlap < window:
        raise ValueError(
            f"overlap of {overlap} frames must be at least 0 and below the window of {window} "
            "frames (each window must bring a new frame)"
        )
    return int(overlap)


def iter_windows(frames: Iterable[tuple[str, np.ndarray]], window: int, overlap: int = 0,
                 min_frames: int = 1) -> Iterator[Window]:  # fmt: skip
    """Windows of up to ``window`` frames over ``(name, frame)`` pairs, consecutive ones sharing
    ``overlap`` frames. Frames are pulled from ``frames`` only as the next window needs them.

    ``min_frames`` is the shortest call the graph takes (Video-Swin: 9 frames); a shorter
    window is padded to it by the caller, and the padding is computed like real frames. So
    where the video's end would leave a last window below ``min_frames``, the last two windows
    share the remaining frames instead (``tail_lengths``): a 19-frame video in 16-frame windows
    runs as 10 + 9 frames, not 16 + 3 padded to 9, which ran 6 frames of padding through every
    expression. To see the end coming, up to ``window + max(1, min_frames - overlap)`` frames
    are held (one frame ahead with ``min_frames=1``).
    """
    overlap = check_overlap(overlap, window)
    ahead = window + max(1, min_frames - overlap)  # frames held to know how the video ends
    source = iter(frames)
    held: list[tuple[str, np.ndarray]] = []  # the kept overlap, then frames not yet run
    exhausted = False
    start = index = kept = 0
    while True:
        while not exhausted and len(held) < ahead:
            item = next(source, None)
            if item is None:
                exhausted = True
            else:
                held.append(item)
        if len(held) <= kept:  # nothing new: the previous window was the last
            return
        take = window
        if exhausted:
            take = tail_lengths(len(held), window, overlap, min_frames)[0]
        items, last = held[:take], exhausted and take >= len(held)
        yield Window(index, start, [n for n, _ in items], [f for _, f in items], kept, last)
        if last:
            return
        kept = overlap
        held = held[take - overlap :]
        start += take - overlap
        index += 1


def tail_lengths(remaining: int, window: int, overlap: int, min_frames: int) -> tuple[int, ...]:
    """The lengths of the windows over the video's last ``remaining`` frames (the kept overlap
    included), when at most ``window + min_frames - overlap - 1`` remain: one window if they
    fit, else two sharing ``overlap`` frames, the second of at least ``min_frames`` (and at
    most ``window``) where the first, as a full window, would leave fewer."""
    if remaining <= window:
        return (remaining,)
    if remaining - window + overlap >= min_frames:
        return (window, remaining - window + overlap)
    second = min(window, max(min_frames, (remaining + overlap) // 2))
    return (remaining + overlap - second, second)


def call_frames(real: int, min_frames: int, previous: int | None = None,
                step: int | None = None) -> int:  # fmt: skip
    """The frames a window of ``real`` frames is run with, padded with copies of its last frame
    (whose outputs are dropped).

    A graph whose frame profile starts above 1 (Video-Swin: T >= 9) takes short windows padded
    to ``min_frames``. A backend that compiles per input shape (OpenVINO's static shapes;
    pass its backbone's ``step``, ``runtime.budget.frame_step``) has them padded to the
    ``previous`` call's frames instead where the backbone computes as many padded frames either
    way (``runtime.budget.padded_frames``): a compile saved (about 5 s for paper-swin-t) for
    a few more frames through the expressions.
    """
    frames = max(real, min_frames)
    if step is not None and previous is not None and previous > frames:
        if padded_frames(previous, step) == padded_frames(frames, step):
            frames = previous
    return frames


def check_fraction(name: str, value: float) -> float:
    """A linking parameter in [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


@dataclass
class Choice:
    """One expression's choice in one window."""

    query: int  # the query whose masks are the expression's track in this window
    independent_query: int  # the query its score alone would choose
    score: float  # the chosen query's frame-averaged probability
    overlap_iou: float | None  # the chosen track's IoU with the previous one on shared frames
    switch: bool  # overlap_iou below the switch threshold: the track changed object

    def as_dict(self) -> dict:
        iou = None if self.overlap_iou is None else round(self.overlap_iou, 4)
        return {"query": self.query, "independent_query": self.independent_query,
                "score": round(self.score, 6), "overlap_iou": iou, "switch": self.switch}  # fmt: skip


class TrackLinker:
    """Chooses each window's query per expression, linked to the previous window's track.

    Args:
        threshold_logit: the mask threshold, as a logit (the output masks' threshold).
        link: choose by score and agreement (True), or by score alone while still measuring
            agreement and switches (False).
        link_weight: the agreement's weight against the score, in [0, 1].
        switch_iou: an IoU below this on the shared frames is an identity switch.
    """

    def __init__(self, threshold_logit: float, link: bool = True, link_weight: float = 0.1,
                 switch_iou: float = 0.5) -> None:  # fmt: skip
        check_fraction("link_weight", link_weight)
        check_fraction("switch_iou", switch_iou)
        self.threshold_logit = threshold_logit
        self.link, self.link_weight, self.switch_iou = bool(link), link_weight, switch_iou
        self.previous: np.ndarray | None = None  # (E, t, h, w): the last window's tracks

    def choose(self, logits: np.ndarray, mask_logits: np.ndarray,
               overlap: int) -> tuple[np.ndarray, list[Choice]]:  # fmt: skip
        """A window's class logits ``(E, t, N)`` and mask logits ``(E, t, N, h, w)``, whose first
        ``overlap`` frames the previous window also had -> its tracks ``(E, t, h, w)`` (mask
        logits of the chosen queries) and each expression's ``Choice``."""
        scores = query_scores(logits)  # (E, N)
        independent = scores.argmax(axis=1)
        chosen = independent.copy()
        ious: list[float | None] = [None] * len(scores)
        if self.previous is not None and overlap > 0:
            previous = self.previous[:, -overlap:] > self.threshold_logit  # (E, k, h, w)
            current = mask_logits[:, :overlap] > self.threshold_logit  # (E, k, N, h, w)
            inter = (previous[:, :, None] & current).sum(axis=(1, 3, 4))
            union = (previous[:, :, None] | current).sum(axis=(1, 3, 4))
            iou = inter / np.maximum(union, 1)  # (E, N)
            for e in range(len(scores)):
                if not previous[e].any():
                    continue  # nothing to agree with: the score alone chooses
                if self.link:
                    combined = (1 - self.link_weight) * scores[e] + self.link_weight * iou[e]
                    chosen[e] = int(combined.argmax())
                ious[e] = float(iou[e, chosen[e]])
        tracks = chosen_tracks(mask_logits, chosen)
        self.previous = tracks
        choices = [
            Choice(int(q), int(i), float(scores[e, q]), ious[e],
                   ious[e] is not None and ious[e] < self.switch_iou)
            for e, (q, i) in enumerate(zip(chosen, independent))
        ]  # fmt: skip
        return tracks, choices


def merge_shared(held: np.ndarray, tracks: np.ndarray, choices: list[Choice]) -> np.ndarray:
    """Mask logits of the frames two windows share: the mean of the previous window's tracks
    ``held`` (E, k, h, w) and this window's, per expression; across a switch, the previous
    window's alone."""
    merged = (held + tracks[:, : len(held[0])]) / 2
    for e, choice in enumerate(choices):
        if choice.switch:
            merged[e] = held[e]
    return merged
