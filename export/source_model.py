"""The PyTorch model of a bundle: the one an export starts from (``load_model``) and the one a
finished bundle was exported from (``bundle_model``, the benchmarks' reference)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from proxyformer.checkpoint import TOKENIZER_NAME, WEIGHTS_NAME, load_checkpoint, read_config
from proxyformer.config import ProxyFormerConfig, get_preset
from proxyformer.model import ProxyFormer, build_proxyformer
from proxyformer.text import configure_tokenizer, load_tokenizer
from runtime.files import sha256_file
from runtime.manifest import Manifest

log = logging.getLogger(__name__)


def load_model(
    checkpoint: str | Path | None, preset: str | None, max_text_len: int, seed: int = 0
) -> tuple[ProxyFormer, object, dict]:
    """The model in eval mode, its tokenizer truncating at ``max_text_len``, and a description
    (the manifest's ``model`` entry: name, config, parameters, and the checkpoint with its
    weights' sha256 or the seed of the random weights)."""
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not (checkpoint / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{checkpoint / WEIGHTS_NAME} not found: not a checkpoint")
        config = read_config(checkpoint)
        if preset is not None and preset != config.name:
            raise ValueError(f"checkpoint {checkpoint} is preset {config.name!r}, not {preset!r}")
        model = load_checkpoint(checkpoint)
        tokenizer_file = checkpoint / TOKENIZER_NAME
        tokenizer = load_tokenizer(config, tokenizer_file if tokenizer_file.is_file() else None)
        source = {
            "checkpoint": str(checkpoint),
            "weights_sha256": sha256_file(checkpoint / WEIGHTS_NAME),
        }
    elif preset is not None:
        torch.manual_seed(seed)
        config = get_preset(preset)
        model = build_proxyformer(config).eval()
        tokenizer = load_tokenizer(config)
        source = {"checkpoint": None, "random_weights_seed": seed}
        log.warning("exporting preset %s with random weights (no --checkpoint)", preset)
    else:
        raise ValueError("give a checkpoint directory or a preset name")
    if not 1 <= max_text_len <= model.config.text.max_length:
        raise ValueError(
            f"max text length must be in [1, {model.config.text.max_length}] for preset "
            f"{model.config.name}, got {max_text_len}"
        )
    configure_tokenizer(tokenizer, max_text_len)
    description = {
        "name": model.config.name,
        "config": model.config.to_dict(),
        "parameters": model.num_parameters(),
        "hidden_dim": model.config.hidden_dim,
        "num_queries": model.config.num_queries,
        **source,
    }
    return model.eval(), tokenizer, description


def bundle_model(manifest: Manifest, device: str | torch.device = "cpu") -> ProxyFormer:
    """The PyTorch model a bundle was exported from, in eval mode: its checkpoint (the path
    recorded in the manifest, then relative to the bundle) or, for a random-weight export, the
    recorded config with the recorded seed. A recorded checkpoint that is gone raises."""
    entry = manifest.data["model"]
    checkpoint = entry.get("checkpoint")
    if checkpoint:
        for candidate in (Path(checkpoint), manifest.root / checkpoint):
            if (candidate / WEIGHTS_NAME).is_file():
                return load_checkpoint(candidate, device=device)
        raise FileNotFoundError(
            f"checkpoint {checkpoint} recorded in {manifest.root / 'manifest.json'} not found"
        )
    torch.manual_seed(int(entry.get("random_weights_seed") or 0))
    return build_proxyformer(ProxyFormerConfig.from_dict(entry["config"])).to(device).eval()
