"""Checkpoints: a directory with ``model.safetensors`` + ``config.json`` (+ ``tokenizer.json``).

Writing is atomic: everything goes into a temporary sibling directory which then replaces the
target with renames, so an interrupted save leaves the previous checkpoint intact. Loading
rebuilds the model from ``config.json`` alone and never unpickles anything. Before a model is
built, the shapes and dtypes in the safetensors header are checked against those its config
implies (computed on the ``meta`` device, which allocates nothing), so a ``config.json`` that
does not match its weights fails in milliseconds instead of allocating the model it
describes; loaded weights must be finite.
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
from .state import TensorSpec, check_tensors, load_state_checked, specs_of

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


# safetensors' dtype names (the header's "dtype" strings) -> torch's.
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


def read_header(path: str | Path) -> tuple[dict[str, TensorSpec], dict[str, str]]:
    """The tensors (dtype, shape) and metadata of a safetensors file, from its header alone.

    The format is an 8-byte little-endian length, that many bytes of JSON, then the tensor
    data. Raises ``ValueError`` naming ``path`` when the file is not one, or is shorter than
    its header says (a truncated copy), or a tensor's byte range does not match its shape.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little") if size >= 8 else -1
        if not 0 < length <= min(size - 8, _MAX_HEADER):
            raise ValueError(
                f"{path} is not a safetensors file: {size} bytes, header length {length}"
            )
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not a safetensors file: bad header ({error})") from None
    metadata = header.pop("__metadata__", None) or {}
    specs, end = {}, 0
    for name, entry in header.items():
        try:
            dtype, shape = entry["dtype"], tuple(int(d) for d in entry["shape"])
            begin, stop = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: malformed header entry for {name!r}: {entry!r}") from None
        torch_dtype = _DTYPES.get(dtype, dtype)
        if isinstance(torch_dtype, torch.dtype):
            numel = 1
            for d in shape:
                numel *= d
            if stop - begin != numel * torch_dtype.itemsize:
                raise ValueError(
                    f"{path}: tensor {name!r} of shape {shape} ({dtype}) has "
                    f"{stop - begin} bytes of data"
                )
        specs[name] = TensorSpec(torch_dtype, shape)
        end = max(end, stop)
    if 8 + length + end != size:
        raise ValueError(
            f"{path} is {size} bytes but its header describes {8 + length + end}: the file is "
            "truncated or was not written whole"
        )
    return specs, metadata


def expected_tensors(config: ProxyFormerConfig) -> dict[str, TensorSpec]:
    """The dtype and shape of every tensor a model of ``config`` has, without allocating it:
    the model is built on the ``meta`` device, whose tensors have shapes and no storage."""
    with torch.device("meta"):
        model = build_proxyformer(config)
    return specs_of(model.state_dict())


def _suspect_fields(config: ProxyFormerConfig, own: dict, found: dict) -> str:
    """Which integer fields of ``config`` most likely set the sizes that differ from the
    file's: those whose value is one of the model's differing dimensions (a hidden_dim of
    2048 against weights of 64 gives 2048-wide tensors)."""
    fields: dict[str, int] = {}

    def flatten(data: dict, prefix: str) -> None:
        for key, value in data.items():
            if isinstance(value, dict):
                flatten(value, f"{prefix}{key}.")
            elif isinstance(value, int) and not isinstance(value, bool):
                fields[f"{prefix}{key}"] = value

    flatten(config.to_dict(), "")
    counts: dict[int, int] = {}  # a differing model dimension -> how many tensors have it
    for name in sorted(set(own) & set(found)):
        a, b = own[name].shape, found[name].shape
        if len(a) == len(b):
            for size in {x for x, y in zip(a, b) if x != y}:
                counts[size] = counts.get(size, 0) + 1
    score = {field: counts.get(value, 0) for field, value in fields.items()}
    best = max(score.values(), default=0)
    # The fields behind most of the mismatches; a field that merely shares a value with one
    # odd tensor would only distract.
    named = [f"{f}={fields[f]}" for f, n in score.items() if best and n * 2 >= best]
    if not named:
        return ""
    return f"The config fields that set these sizes are probably: {', '.join(named)}"


def check_weights_fit(
    config: ProxyFormerConfig, directory: str | Path, strict: bool = True,
    own: dict[str, TensorSpec] | None = None,
) -> None:  # fmt: skip
    """Compare the tensors in ``directory``'s safetensors header with those of a model of
    ``config`` (``own``, that model's tensors, when it exists already), before any tensor is
    allocated.

    Raises ``FileNotFoundError`` for missing weights and ``ValueError`` naming the first
    mis-shaped or mistyped tensors (and, with ``strict``, missing or unexpected ones) and the
    config fields that probably explain them.
    """
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint weights not found: {weights}")
    found, _ = read_header(weights)
    own_given = own is not None
    own = own if own_given else expected_tensors(config)
    hint = _suspect_fields(config, own, found)
    if hint and not own_given:
        hint += f" (from {Path(directory) / CONFIG_NAME})"
    described = "the model" if own_given else f"the {config.name!r} model its config.json describes"
    check_tensors(described, own, found, str(weights), strict, hint)


def load_weights(model: nn.Module, directory: str | Path, strict: bool = True) -> None:
    """Load a checkpoint's weights into ``model``, refusing a checkpoint of another config.

    Raises ``ValueError`` naming the config differences, or the missing, unexpected,
    mis-shaped and mistyped tensors (checked on the file's header before its data is read),
    or those holding NaN or infinity.
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
    check_weights_fit(config, directory, strict, own=specs_of(model.state_dict()))
    weights = directory / WEIGHTS_NAME
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
    check_weights_fit(config, directory)  # before the model of config.json is allocated
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
