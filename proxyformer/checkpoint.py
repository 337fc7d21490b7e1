"""Checkpoints: a directory with ``model.safetensors`` + ``config.json`` (+ ``tokenizer.json``).

Writing is atomic: everything goes into a temporary sibling directory which then replaces the
target with renames, so an interrupted save leaves the previous checkpoint intact. Loading
rebuilds the model from ``config.json`` alone and never unpickles anything.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from runtime.files import apply_umask, make_staging_dir, replace_directory

from .config import ProxyFormerConfig, get_preset
from .model import ProxyFormer, build_proxyformer
from .state import load_state_checked

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TOKENIZER_NAME = "tokenizer.json"


def save_checkpoint(
    model: ProxyFormer,
    directory: str | Path,
    tokenizer=None,
    extra_files: Mapping[str, bytes] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``model`` (weights, config, optionally tokenizer and extra files) atomically.

    Args:
        model: the model; its ``config`` is written as ``config.json``.
        directory: the checkpoint directory; replaced as a whole if it exists.
        tokenizer: an HF ``tokenizers.Tokenizer`` saved as ``tokenizer.json``.
        extra_files: more files to write in the same atomic step (training state, say).
        metadata: strings stored in the safetensors header.
    Returns:
        The checkpoint directory.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging_dir(directory)
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        header = {"format": "pt", "preset": model.config.name, **(metadata or {})}
        save_file(state, str(staging / WEIGHTS_NAME), metadata=header)
        (staging / CONFIG_NAME).write_text(model.config.to_json() + "\n")
        if tokenizer is not None:
            tokenizer.save(str(staging / TOKENIZER_NAME))
        for name, data in (extra_files or {}).items():
            if Path(name).name != name:
                raise ValueError(f"extra file names must be plain file names, got {name!r}")
            (staging / name).write_bytes(data)
        for file in staging.iterdir():
            _fsync(file)
            apply_umask(file)  # safetensors creates its file 0600
        replace_directory(staging, directory)  # the old one is kept aside until the move
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("saved checkpoint %s", directory)
    return directory


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def read_config(directory: str | Path) -> ProxyFormerConfig:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    return ProxyFormerConfig.from_json(directory / CONFIG_NAME)


def load_weights(model: nn.Module, directory: str | Path, strict: bool = True) -> None:
    """Load a checkpoint's weights into ``model``, refusing a checkpoint of another config.

    Raises ``ValueError`` naming the config differences, or the missing, unexpected and
    mis-shaped tensors.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    config = read_config(directory)
    if isinstance(model, ProxyFormer) and config != model.config:
        differences = model.config.diff(config, ("model", "checkpoint"))
        raise ValueError(
            f"checkpoint {directory} was saved for preset {config.name!r} and does not fit this "
            f"model (preset {model.config.name!r}): "
            + "; ".join(differences[:8])
            + (" ..." if len(differences) > 8 else "")
        )
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint weights not found: {weights}")
    load_state_checked(model, load_file(str(weights)), str(weights), strict)


def load_checkpoint(
    directory: str | Path,
    preset: str | ProxyFormerConfig | None = None,
    device: str | torch.device = "cpu",
) -> ProxyFormer:
    """Rebuild a model from ``config.json`` and load its weights, in eval mode.

    Args:
        directory: a checkpoint directory written by ``save_checkpoint``.
        preset: when given (a preset name or config), the checkpoint must match it.
        device: where to put the model.
    """
    config = read_config(directory)
    if preset is not None:
        expected = get_preset(preset) if isinstance(preset, str) else preset
        if expected != config:
            raise ValueError(
                f"checkpoint {directory} is preset {config.name!r}, not {expected.name!r}: "
                + "; ".join(expected.diff(config, ("expected", "checkpoint"))[:8])
            )
    model = build_proxyformer(config)
    load_weights(model, directory)
    return model.to(device).eval()


def checkpoint_info(directory: str | Path) -> dict:
    """The safetensors header metadata and config of a checkpoint, without loading tensors."""
    from safetensors import safe_open

    directory = Path(directory)
    with safe_open(str(directory / WEIGHTS_NAME), framework="pt") as handle:
        metadata = handle.metadata() or {}
        num_tensors = len(list(handle.keys()))
    return {
        "config": json.loads((directory / CONFIG_NAME).read_text()),
        "metadata": metadata,
        "tensors": num_tensors,
    }
