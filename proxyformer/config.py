"""Frozen configuration of a ProxyFormer model and its named presets.

One ``ProxyFormerConfig`` travels with every artifact: the checkpoint's ``config.json``, the
export bundle's ``manifest.json`` and each ONNX file's metadata. Loading rebuilds the model
from the config alone.

Presets follow the paper (Sec. IV-B): C=256, K=4 CMIE modules, N=5 proxy queries per frame,
8 attention heads, 3 decoder layers, RoBERTa-base text encoder, Video-Swin with temporal patch
size 1 (as in ReferFormer). ``tiny`` is the same architecture shrunk to ~1.5 M parameters so
it trains on two CPU cores. ``tiny-synthetic`` adds the options of ``proxyformer/extensions``
(not in the paper) and is the preset of the shipped demo checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .extensions.config import (
    OPTION_NAMES,
    REMOVED_OPTIONS,
    ExtensionsConfig,
    migrate_decoder_options,
    tiny_synthetic_options,
)

BACKBONES = ("resnet50", "video-swin-t", "video-swin-b", "video-swin-mini", "tiny-cnn")
TEXT_ENCODERS = ("roberta", "tiny-roberta")
CMIE_MODES = ("decoupled", "full")


@dataclass(frozen=True)
class BackboneConfig:
    """Visual backbone: multi-scale features at strides 4/8/16/32."""

    name: str = "video-swin-t"
    # Only for ``tiny-cnn``: channels of the four stages (strides 4, 8, 16, 32).
    channels: tuple[int, ...] = (16, 32, 64, 128)
    # Video-Swin: stochastic depth, window (T, H, W); temporal patch size is always 1.
    drop_path_rate: float = 0.1
    window_size: tuple[int, int, int] = (8, 7, 7)
    frozen_batchnorm: bool = True

    def __post_init__(self) -> None:
        if self.name not in BACKBONES:
            raise ValueError(f"backbone.name must be one of {BACKBONES}, got {self.name!r}")
        if self.name == "tiny-cnn" and len(self.channels) != 4:
            raise ValueError(f"backbone.channels needs 4 stages, got {self.channels}")


@dataclass(frozen=True)
class TextConfig:
    """Text backbone (RoBERTa through transformers) and its tokenizer."""

    name: str = "roberta"
    vocab_size: int = 50265
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_length: int = 512  # longest token sequence the position table covers
    freeze: bool = True
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.name not in TEXT_ENCODERS:
            raise ValueError(f"text.name must be one of {TEXT_ENCODERS}, got {self.name!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"text.hidden_size ({self.hidden_size}) must be divisible by text.num_heads "
                f"({self.num_heads})"
            )


@dataclass(frozen=True)
class CMIEConfig:
    """Cross-Modality Interaction Encoding (Eq. 1-5) and the paper's ablation switches."""

    num_layers: int = 4  # K
    num_heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.0
    # "decoupled" (the paper's CMIE) or "full" spatio-temporal attention (CMIE*, Table IV row 3).
    mode: str = "decoupled"
    use_p2v: bool = True  # False: CMIE w/o P2V (Table IV row 4)
    use_proxy: bool = True  # False: video and text interact directly (Table VIII row b)
    # Backbone levels (by stride) whose tokens CMIE encodes; the FPN adds the finer ones.
    strides: tuple[int, ...] = (16, 32)

    def __post_init__(self) -> None:
        if self.mode not in CMIE_MODES:
            raise ValueError(f"cmie.mode must be one of {CMIE_MODES}, got {self.mode!r}")
        if self.num_layers < 1:
            raise ValueError(f"cmie.num_layers (K) must be >= 1, got {self.num_layers}")
        if not self.strides or any(s not in (4, 8, 16, 32) for s in self.strides):
            raise ValueError(f"cmie.strides must be a subset of (4, 8, 16, 32), got {self.strides}")


@dataclass(frozen=True)
class DecoderConfig:
    """Mask decoder: FPN fusion, transformer decoder over the proxies, dynamic kernels."""

    num_layers: int = 3
    num_heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.0
    mask_dim: int = 256  # channels of F_seg and of each dynamic kernel


@dataclass(frozen=True)
class ProxyFormerConfig:
    """Everything needed to rebuild a ProxyFormer model."""

    name: str = "paper-swin-t"
    hidden_dim: int = 256  # C
    num_queries: int = 5  # N proxy queries per frame
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    text: TextConfig = field(default_factory=TextConfig)
    cmie: CMIEConfig = field(default_factory=CMIEConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    # Normalisation of RGB frames in [0, 1] (ImageNet statistics, as the backbones expect).
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # Input sizes are padded inside the model to a multiple of this and cropped back.
    size_divisor: int = 32
    # ReferFormer's early vision-language fusion, kept by ProxyFormer's baseline: every
    # backbone level is gated by its attention to the text (x * MHA(x, F_t)) before CMIE/FPN.
    text_fusion: bool = True
    # Options beyond the paper (``proxyformer/extensions``); all off in the paper presets.
    extensions: ExtensionsConfig = field(default_factory=ExtensionsConfig)

    def __post_init__(self) -> None:
        if self.hidden_dim % self.cmie.num_heads or self.hidden_dim % self.decoder.num_heads:
            raise ValueError(
                f"hidden_dim ({self.hidden_dim}) must be divisible by cmie.num_heads "
                f"({self.cmie.num_heads}) and decoder.num_heads ({self.decoder.num_heads})"
            )
        if self.num_queries < 1:
            raise ValueError(f"num_queries (N) must be >= 1, got {self.num_queries}")
        _check_instance(self, "config")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProxyFormerConfig:
        if isinstance(data, dict):
            data = migrate_decoder_options(data, "config")
        return _from_dict(cls, data, "config")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, path: str | Path) -> ProxyFormerConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"config file not found: {path}") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from None

    def replace(self, **changes: Any) -> ProxyFormerConfig:
        """A copy with top-level fields or dotted sub-fields (``"cmie.use_p2v"``) changed."""
        top: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            if "." in key:
                section, name = key.split(".", 1)
                nested.setdefault(section, {})[name] = value
            else:
                top[key] = _checked_field(type(self), key, value, key)
        for section, fields in nested.items():
            if not hasattr(self, section) or not dataclasses.is_dataclass(getattr(self, section)):
                raise ValueError(f"unknown config section {section!r}")
            _check_moved(section, fields)
            sub = type(getattr(self, section))
            fields = {k: _checked_field(sub, k, v, f"{section}.{k}") for k, v in fields.items()}
            top[section] = dataclasses.replace(getattr(self, section), **fields)
        return dataclasses.replace(self, **top)

    def diff(self, other: ProxyFormerConfig, names: tuple[str, str] = ("a", "b")) -> list[str]:
        """Human-readable differences, e.g. ``["hidden_dim: a=64, b=256"]``."""
        return _diff(self.to_dict(), other.to_dict(), "", names)


def _check_moved(section: str, fields: dict[str, Any]) -> None:
    """Name the new key of an option that left the ``decoder`` section (``--set`` users)."""
    if section != "decoder":
        return
    for name in fields:
        if name in OPTION_NAMES:
            raise ValueError(
                f"decoder.{name} moved to extensions.{name} (options beyond the paper live in "
                "the 'extensions' section)"
            )
        if name in REMOVED_OPTIONS:
            raise ValueError(f"decoder.{name} was removed (it encoded the synthetic shapes)")


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown keys in {where}: {unknown} (known: {sorted(fields)})")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        sub = _NESTED.get((cls, name))
        if sub is not None:
            kwargs[name] = _from_dict(sub, value, f"{where}.{name}")
        else:
            kwargs[name] = _checked_field(cls, name, value, f"{where}.{name}")
    return cls(**kwargs)


# -- strict field types -------------------------------------------------------------------
# A config is read from JSON files people edit (config.json, manifests) and from --set. Python
# would take the string "false" for a bool as True and "64" for an int until some layer fails
# far from the file, so every value is checked against its field's annotation, with no
# coercion but two lossless ones: a JSON list becomes the tuple the dataclass holds, and an
# integer is accepted for a float (JSON writes 0.0 as 0 in some tools).


def _checked_field(cls: type, name: str, value: Any, where: str) -> Any:
    """``value`` for field ``name`` of ``cls``, checked (``ValueError`` naming ``where``)."""
    hints = typing.get_type_hints(cls)
    if name not in hints:
        known = sorted(f.name for f in dataclasses.fields(cls))
        raise ValueError(f"unknown key {where!r} (known: {known})")
    return _checked(value, hints[name], where)


def _checked(value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _checked(value, option, where)
            except ValueError:
                continue
        raise ValueError(f"{where} must be {_describe(hint)}, got {value!r} ({_kind(value)})")
    if hint is type(None):
        if value is None:
            return None
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
            if len(items) == len(value):
                return tuple(_checked(v, h, f"{where}[{i}]") for i, (v, h) in enumerate(zip(value, items)))
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
    else:  # a type this checker does not know: nothing to compare against
        return value
    raise ValueError(f"{where} must be {_describe(hint)}, got {value!r} ({_kind(value)})")


def _describe(hint: Any) -> str:
    """A field type in JSON's words: ``a boolean (true/false)``, ``a list of 3 numbers``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        plural = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
        item = plural.get(args[0], _describe(args[0]))
        count = "" if len(args) == 2 and args[1] is Ellipsis else f"{len(args)} "
        return f"a list of {count}{item}"
    names = {bool: "a boolean (true/false)", int: "an integer", float: "a number",
             str: "a string", type(None): "null"}  # fmt: skip
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _kind(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            tuple: "list", dict: "mapping", type(None): "null"}.get(type(value), type(value).__name__)  # fmt: skip


def _check_instance(config: Any, where: str) -> None:
    """Every field of a config dataclass, nested ones included, has its annotated type (a
    config built in code, as the presets and ``dataclasses.replace`` do)."""
    for name, hint in typing.get_type_hints(type(config)).items():
        value = getattr(config, name)
        if dataclasses.is_dataclass(value):
            _check_instance(value, f"{where}.{name}")
        else:
            _checked(value, hint, f"{where}.{name}")


def _diff(a: dict[str, Any], b: dict[str, Any], prefix: str, names: tuple[str, str]) -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            out += _diff(left, right, f"{prefix}{key}.", names)
        elif left != right:
            out.append(f"{prefix}{key}: {names[0]}={left!r}, {names[1]}={right!r}")
    return out


_NESTED = {
    (ProxyFormerConfig, "backbone"): BackboneConfig,
    (ProxyFormerConfig, "text"): TextConfig,
    (ProxyFormerConfig, "cmie"): CMIEConfig,
    (ProxyFormerConfig, "decoder"): DecoderConfig,
    (ProxyFormerConfig, "extensions"): ExtensionsConfig,
}


# ----------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------


def paper_r50() -> ProxyFormerConfig:
    """ResNet-50 visual backbone (Table I, 58.2 J&F on Ref-YouTube-VOS)."""
    return ProxyFormerConfig(name="paper-r50", backbone=BackboneConfig(name="resnet50"))


def paper_swin_t() -> ProxyFormerConfig:
    """Video-Swin-T visual backbone: the paper's main model (63.0 J&F, Table IV row 5)."""
    return ProxyFormerConfig(
        name="paper-swin-t", backbone=BackboneConfig(name="video-swin-t", drop_path_rate=0.1)
    )


def paper_swin_b() -> ProxyFormerConfig:
    """Video-Swin-B visual backbone."""
    return ProxyFormerConfig(
        name="paper-swin-b", backbone=BackboneConfig(name="video-swin-b", drop_path_rate=0.3)
    )


def tiny() -> ProxyFormerConfig:
    """The paper's architecture shrunk to ~1.5 M parameters so that it trains and exports on
    two CPU cores: a small CNN backbone, a 2-layer text encoder, K=2 CMIE modules, 2 decoder
    layers, C=64. The decoder and heads are the paper's (no ``extensions``)."""
    return ProxyFormerConfig(
        name="tiny",
        hidden_dim=64,
        num_queries=5,
        backbone=BackboneConfig(name="tiny-cnn", channels=(24, 48, 96, 192)),
        text=TextConfig(
            name="tiny-roberta",
            vocab_size=1024,
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            intermediate_size=256,
            max_length=64,
            freeze=False,  # random init: the tiny text encoder is trained with the rest
            dropout=0.0,
        ),
        cmie=CMIEConfig(num_layers=2, num_heads=4, ffn_dim=256),
        decoder=DecoderConfig(num_layers=2, num_heads=4, ffn_dim=256, mask_dim=32),
    )


def paper_mini() -> ProxyFormerConfig:
    """The paper presets' layer structure at a width that exports and calibrates in seconds:
    Video-Swin (``video-swin-mini``: embed 32, depths 1-1-2-1), K=4 CMIE modules, 3 decoder
    layers, 8 heads, N=5, C=64, and the 2-layer text encoder of ``tiny``. CI carries this
    model through export, parity, FP16, INT8 and the runtime with random weights."""
    small = tiny()
    return ProxyFormerConfig(
        name="paper-mini",
        hidden_dim=64,
        num_queries=5,
        backbone=BackboneConfig(name="video-swin-mini", drop_path_rate=0.1),
        text=small.text,
        cmie=CMIEConfig(num_layers=4, num_heads=8, ffn_dim=256),
        decoder=DecoderConfig(num_layers=3, num_heads=8, ffn_dim=256, mask_dim=32),
    )


def tiny_synthetic() -> ProxyFormerConfig:
    """``tiny`` with every option of ``proxyformer/extensions`` on: the preset of the shipped
    demo checkpoint, trained from scratch on the synthetic set in minutes on a CPU."""
    return dataclasses.replace(tiny(), name="tiny-synthetic", extensions=tiny_synthetic_options())


PRESETS = {
    "paper-r50": paper_r50,
    "paper-swin-t": paper_swin_t,
    "paper-swin-b": paper_swin_b,
    "paper-mini": paper_mini,
    "tiny": tiny,
    "tiny-synthetic": tiny_synthetic,
}


def get_preset(name: str, **changes: Any) -> ProxyFormerConfig:
    """The named preset, optionally with fields changed (see ``ProxyFormerConfig.replace``)."""
    try:
        config = PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return config.replace(**changes) if changes else config
