"""Loading state dicts with errors that name what does not fit."""

from __future__ import annotations

import torch
from torch import nn


def load_state_checked(
    module: nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True
) -> None:
    """``module.load_state_dict(state)`` that first names missing, unexpected and mis-shaped keys.

    Raises ``ValueError`` mentioning ``source`` (a file or directory) when a tensor has another
    shape, or, with ``strict``, when keys are missing or unexpected.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if mismatched or (strict and (missing or unexpected)):
        raise ValueError(
            f"weights in {source} do not fit {type(module).__name__}: "
            f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''} ({len(missing)}), "
            f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''} "
            f"({len(unexpected)}), shape mismatches {mismatched[:10]}"
        )
    module.load_state_dict(state, strict=strict)
