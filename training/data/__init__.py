"""Referring-video datasets: the synthetic set, Ref-YouTube-VOS, Ref-DAVIS17, A2D, JHMDB."""

from __future__ import annotations

from pathlib import Path

from .transforms import ClipTransform

DATASETS = ("ytvos", "davis", "a2d", "jhmdb")


def build_dataset(
    kind: str,
    root: str | Path,
    split: str,
    num_frames: int | None,
    transform: ClipTransform | None = None,
    seed: int = 0,
    reverse_prob: float = 0.0,
):
    """A dataset by kind. ``ytvos`` reads Ref-YouTube-VOS and the synthetic set; ``davis`` is
    Ref-DAVIS17 converted to the same layout (as ReferFormer does). ``reverse_prob`` (temporal
    reversal of training clips, see ``RefYouTubeVOS``) is for those two kinds only: A2D and
    JHMDB sentences describe actions ("jumping", "sitting down"), which do not run backwards."""
    if kind in ("ytvos", "davis"):
        from .ytvos import RefYouTubeVOS

        return RefYouTubeVOS(root, split, num_frames, transform, seed, reverse_prob)
    if reverse_prob and kind in ("a2d", "jhmdb"):
        raise ValueError(
            f"reverse_prob={reverse_prob}: temporal reversal is not supported for {kind!r} "
            "(its sentences describe actions, which do not run backwards); use 0"
        )
    if kind == "a2d":
        from .a2d import A2DSentences

        return A2DSentences(root, split, num_frames, transform, seed)
    if kind == "jhmdb":
        from .a2d import JHMDBSentences

        return JHMDBSentences(root, split, num_frames, transform, seed)
    raise ValueError(f"unknown dataset kind {kind!r}; choose one of {DATASETS}")
