"""Starting from a trained checkpoint: ``init_weights`` (``--init-from`` of both trainers) and
``freeze_except`` (stage 2 trains the class path alone)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file

from proxyformer.checkpoint import WEIGHTS_NAME, check_weights_fit, read_config, read_header
from proxyformer.state import load_state_checked, specs_of

log = logging.getLogger(__name__)


def init_weights(model: torch.nn.Module, directory: str | Path) -> list[str]:
    """Load a checkpoint's weights into ``model`` before training (``--init-from``).

    The checkpoint's config may differ from the model's: tensors the checkpoint lacks keep
    their initialisation (logged), while a tensor of another shape, or one the model does not
    have, raises ``ValueError`` (``proxyformer.state.load_state_checked``). Returns the names
    of the tensors that start fresh.
    """
    directory = Path(directory)
    config = read_config(directory)  # raises FileNotFoundError naming a missing config.json
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"--init-from: checkpoint weights not found: {weights}")
    own = specs_of(model.state_dict())
    found, _ = read_header(weights)  # names and shapes, before any tensor is read
    unexpected = sorted(set(found) - set(own))
    if unexpected:
        raise ValueError(
            f"--init-from {directory}: the model has no tensors {unexpected[:10]}"
            f"{' ...' if len(unexpected) > 10 else ''} ({len(unexpected)}); its config differs: "
            + "; ".join(getattr(model, "config", config).diff(config, ("model", "checkpoint")))
        )
    check_weights_fit(getattr(model, "config", config), directory, strict=False, own=own)
    state = load_file(str(weights))
    load_state_checked(model, state, str(weights), strict=False)
    fresh = sorted(set(model.state_dict()) - set(state))
    log.info(
        "initialised from %s (%d tensors); %d tensors start fresh%s", directory, len(state),
        len(fresh), f": {fresh[:6]}{' ...' if len(fresh) > 6 else ''}" if fresh else "",
    )  # fmt: skip
    return fresh


def freeze_except(model: torch.nn.Module, prefixes: tuple[str, ...]) -> None:
    """Freeze every parameter whose name starts with none of ``prefixes``; each prefix must
    name at least one parameter."""
    names = [name for name, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(name.startswith(prefix) for name in names):
            top = sorted({name.split(".")[0] for name in names})
            raise ValueError(f"{prefix!r} matches no parameter to train; top-level modules: {top}")
    trained = 0
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(tuple(prefixes)))
        trained += param.numel() if param.requires_grad else 0
    log.info("training only %s: %d of %d parameters", ", ".join(prefixes), trained,
             sum(p.numel() for p in model.parameters()))  # fmt: skip
