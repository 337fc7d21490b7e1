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
):
    """A dataset by kind. ``ytvos`` reads Ref-YouTube-VOS and the synthetic set; ``davis`` is
    Ref-DAVIS17 converted to the same layout (as ReferFormer does)."""
    if kind in ("ytvos", "davis"):
        from .ytvos import RefYouTubeVOS

        return RefYouTubeVOS(root, split, num_frames, transform, seed)
    if kind == "a2d":
        from .a2d import A2DSentences

        return A2DSentences(root, split, num_frames, transform, seed)
    if kind == "jhmdb":
        from .a2d import JHMDBSentences

        return JHMDBSentences(root, split, num_frames, transform, seed)
    raise ValueError(f"unknown dataset kind {kind!r}; choose one of {DATASETS}")
