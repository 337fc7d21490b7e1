"""Loading state dicts with errors that name what does not fit.

A tensor is described by its dtype and shape (``TensorSpec``), which both a model's state dict
and a safetensors header give without reading any tensor data: ``check_tensors`` compares the
two before anything is allocated or loaded, and ``load_state_checked`` adds the checks that
need the values (non-finite numbers) before ``load_state_dict``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class TensorSpec(NamedTuple):
    dtype: torch.dtype | str  # a string: a safetensors dtype torch has no name for here
    shape: tuple[int, ...]


def specs_of(state: dict[str, torch.Tensor]) -> dict[str, TensorSpec]:
    """Dtype and shape of every tensor of a state dict (also of one on the ``meta`` device)."""
    return {name: TensorSpec(t.dtype, tuple(t.shape)) for name, t in state.items()}


def _name(dtype: torch.dtype | str) -> str:
    return str(dtype).removeprefix("torch.")


def tensor_mismatches(
    own: dict[str, TensorSpec], found: dict[str, TensorSpec]
) -> tuple[list[str], list[str], list[str], list[str]]:
    """(missing, unexpected, mis-shaped, wrong dtype) of ``found`` against ``own``; the last
    two as ``"name: file X vs model Y"`` strings, in name order."""
    missing = sorted(set(own) - set(found))
    unexpected = sorted(set(found) - set(own))
    common = sorted(set(own) & set(found))
    shapes = [
        f"{k}: file {found[k].shape} vs model {own[k].shape}"
        for k in common
        if tuple(found[k].shape) != tuple(own[k].shape)
    ]
    # The file must hold the model's own dtype: load_state_dict would silently cast int64 or
    # float16 values into float32 parameters, which hides a wrong or damaged file.
    dtypes = [
        f"{k}: file {_name(found[k].dtype)} vs model {_name(own[k].dtype)}"
        for k in common
        if found[k].dtype != own[k].dtype
    ]
    return missing, unexpected, shapes, dtypes


def _listed(items: list[str], limit: int = 10) -> str:
    return f"{items[:limit]}{' ...' if len(items) > limit else ''} ({len(items)})"


def check_tensors(
    module_name: str, own: dict[str, TensorSpec], found: dict[str, TensorSpec], source: str,
    strict: bool = True, hint: str = "",
) -> None:  # fmt: skip
    """Raise ``ValueError`` naming ``source`` when ``found`` does not fit ``own``: a tensor of
    another shape or dtype, or, with ``strict``, missing or unexpected keys. ``hint`` (what
    in the config probably explains it) is appended to the message."""
    missing, unexpected, shapes, dtypes = tensor_mismatches(own, found)
    if shapes or dtypes or (strict and (missing or unexpected)):
        parts = [f"weights in {source} do not fit {module_name}:"]
        if shapes:
            parts.append(f"shape mismatches {_listed(shapes)};")
        if dtypes:
            parts.append(f"dtype mismatches {_listed(dtypes)};")
        parts.append(f"missing keys {_listed(missing)}, unexpected keys {_listed(unexpected)}")
        raise ValueError(" ".join(parts) + (f". {hint}" if hint else ""))


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Raise ``ValueError`` naming the tensors of ``state`` that hold NaN or infinity: such a
    model loads and runs, and returns empty or garbage masks with no error anywhere."""
    bad = [
        f"{name} ({int((~torch.isfinite(t)).sum())} of {t.numel()} values)"
        for name, t in sorted(state.items())
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise ValueError(f"weights in {source} hold NaN or infinite values: {_listed(bad, 6)}")


def load_state_checked(
    module: nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True
) -> None:
    """``module.load_state_dict(state)`` that first names missing, unexpected, mis-shaped and
    wrongly typed keys, and tensors with non-finite values.

    Raises ``ValueError`` mentioning ``source`` (a file or directory) when a tensor has another
    shape or dtype or holds NaN/inf, or, with ``strict``, when keys are missing or unexpected.
    """
    check_tensors(type(module).__name__, specs_of(module.state_dict()), specs_of(state), source,
                  strict)  # fmt: skip
    check_finite(state, source)
    module.load_state_dict(state, strict=strict)
