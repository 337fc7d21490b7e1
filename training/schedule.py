"""Learning-rate schedules shared by both trainers: the cosine (``--lr-schedule cosine`` of
``train.py``, always in ``train_selection.py``) and the step decay's drop."""

from __future__ import annotations

import math

import torch


def cosine_factor(step: int, total: int, min_ratio: float) -> float:
    """The multiplier of a base lr at optimizer step ``step`` (0-based) of ``total``: half a
    cosine from 1 at the first step down to ``min_ratio`` at ``total`` (and after it). It
    depends on the total, so a resumed run keeps its schedule only with the same total."""
    step, total = min(step, total), max(total, 1)
    # The operation order (pi * step first) is that of the shipped stage 2's runs: changing it
    # moves the lr by an ulp and the trained weights with it.
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * step / total))


def set_cosine_lr(
    optimizer: torch.optim.Optimizer, base_lrs: list[float], step: int, total: int,
    min_ratio: float,
) -> None:  # fmt: skip
    """Set each param group's lr to its base lr times ``cosine_factor`` of ``step``."""
    if len(base_lrs) != len(optimizer.param_groups):
        raise ValueError(
            f"{len(base_lrs)} base learning rates for {len(optimizer.param_groups)} param groups"
        )
    factor = cosine_factor(step, total, min_ratio)
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base * factor


def drop_lr(optimizer: torch.optim.Optimizer, gamma: float = 0.1) -> None:
    """Multiply every param group's lr by ``gamma`` (the step decay). The lr lives in the
    optimizer's param groups, so a resumed run restores it with the optimizer's state."""
    for group in optimizer.param_groups:
        group["lr"] *= gamma
