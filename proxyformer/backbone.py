"""Visual backbones: multi-scale features at strides 4/8/16/32 for every frame.

- ``resnet50``: timm, ``features_only``, applied frame by frame, frozen batch norm.
- ``video-swin-t`` / ``video-swin-b`` (and the small ``video-swin-mini`` for CI):
  torchvision's ``SwinTransformer3d`` with temporal patch
  size 1 (as in ReferFormer), so every frame keeps its own feature map while windows of 8
  frames mix time.
- ``tiny-cnn``: a small Conv-BN-ReLU network for the ``tiny`` preset.

Every backbone maps frames ``(B, T, 3, H, W)`` to a list of four ``(B, T, C_l, H/s, W/s)``
tensors and exposes ``out_channels``. Pretrained weights load from a local file only.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import BackboneConfig
from .state import load_state_checked

log = logging.getLogger(__name__)

STRIDES = (4, 8, 16, 32)


class TinyCNN(nn.Module):
    """Four Conv-BN-ReLU stages at strides 4, 8, 16, 32 (about 0.3 M parameters)."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            return [
                nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]

        c1, c2, c3, c4 = channels
        self.stages = nn.ModuleList(
            [
                nn.Sequential(*block(3, c1 // 2, 2), *block(c1 // 2, c1, 2), *block(c1, c1, 1)),
                nn.Sequential(*block(c1, c2, 2), *block(c2, c2, 1)),
                nn.Sequential(*block(c2, c3, 2), *block(c3, c3, 1)),
                nn.Sequential(*block(c3, c4, 2), *block(c4, c4, 1)),
            ]
        )
        self.out_channels = tuple(channels)

    def forward(self, frames: torch.Tensor) -> list[torch.Tensor]:
        batch = frames.shape[0]
        x = rearrange(frames, "b t c h w -> (b t) c h w")
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(rearrange(x, "(b t) c h w -> b t c h w", b=batch))
        return features


class ResNet50(nn.Module):
    """timm ResNet-50 with ``features_only`` (layers 1-4), batch norm frozen as in DETR."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        import timm

        self.body = timm.create_model(
            "resnet50", pretrained=False, features_only=True, out_indices=(1, 2, 3, 4)
        )
        if config.frozen_batchnorm:
            from timm.layers import freeze_batch_norm_2d

            self.body = freeze_batch_norm_2d(self.body)
        self.out_channels = tuple(self.body.feature_info.channels())

    def forward(self, frames: torch.Tensor) -> list[torch.Tensor]:
        batch = frames.shape[0]
        features = self.body(rearrange(frames, "b t c h w -> (b t) c h w"))
        return [rearrange(f, "(b t) c h w -> b t c h w", b=batch) for f in features]

    def load_pretrained(self, state_dict: dict[str, torch.Tensor], source: str) -> None:
        own = self.body.state_dict()
        state_dict = {
            k: v
            for k, v in state_dict.items()
            # the classifier is unused; frozen batch norm keeps no num_batches_tracked counter
            if not k.startswith("fc.") and (not k.endswith("num_batches_tracked") or k in own)
        }
        load_state_checked(self.body, state_dict, source)


_SWIN_SIZES = {
    "video-swin-t": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
    "video-swin-b": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32]),
    # The same four stages, one or two blocks each, at a third of T's width (paper-mini).
    "video-swin-mini": dict(embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8]),
}


def window_attention_3d(
    x: torch.Tensor,
    attention: nn.Module,
    window_size: list[int],
    shift_size: list[int],
) -> torch.Tensor:
    """torchvision's ``shifted_window_attention_3d`` with the attention itself computed by
    ``F.scaled_dot_product_attention``; the same math, parameters and result.

    torchvision materialises every window's attention map, then adds the relative position
    bias and the shift mask and applies the softmax, each into a new map the size of the
    first: at 360x640 and 19 frames one stage-1 map is 1.65 GB, and in eager PyTorch these
    steps took 8 of the video graph's 18 seconds (paper-swin-t, T 9, 2 cores). The fused kernel
    (CPU flash attention, CUDA memory-efficient attention) takes bias and mask as one additive
    mask and never writes the map out: 2.6-3.5x faster on that step (docs/model.md,
    "Choices where the paper is silent").

    Inputs ``(B, T, H, W, C)``; ``window_size``/``shift_size`` already adapted to the input
    (``_get_window_and_shift_size``).
    """
    from torchvision.models.video.swin_transformer import (
        _compute_attention_mask_3d,
        _compute_pad_size_3d,
    )

    b, t, h, w, c = x.shape
    heads = attention.num_heads
    pad = _compute_pad_size_3d((t, h, w), tuple(window_size))
    x = F.pad(x, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
    _, tp, hp, wp, _ = x.shape
    shifted = sum(shift_size) > 0
    if shifted:
        x = torch.roll(x, shifts=tuple(-s for s in shift_size), dims=(1, 2, 3))
    grid = (tp // window_size[0], hp // window_size[1], wp // window_size[2])
    windows = grid[0] * grid[1] * grid[2]
    tokens = window_size[0] * window_size[1] * window_size[2]
    x = x.view(b, grid[0], window_size[0], grid[1], window_size[1], grid[2], window_size[2], c)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b * windows, tokens, c)

    qkv = F.linear(x, attention.qkv.weight, attention.qkv.bias)
    q, k, v = qkv.reshape(b * windows, tokens, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    bias = attention.get_relative_position_bias(window_size)  # (1, heads, N, N)
    if shifted:
        mask = _compute_attention_mask_3d(x, (tp, hp, wp), tuple(window_size), tuple(shift_size))
        bias = bias + mask.unsqueeze(1)  # (windows, heads, N, N): the same for every video
        if b > 1:
            bias = bias.repeat(b, 1, 1, 1)
    dropout = attention.attention_dropout if attention.training else 0.0
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout)
    x = x.transpose(1, 2).reshape(b * windows, tokens, c)
    x = F.linear(x, attention.proj.weight, attention.proj.bias)
    x = F.dropout(x, p=attention.dropout, training=attention.training)

    x = x.view(b, grid[0], grid[1], grid[2], window_size[0], window_size[1], window_size[2], c)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, tp, hp, wp, c)
    if shifted:
        x = torch.roll(x, shifts=tuple(shift_size), dims=(1, 2, 3))
    return x[:, :t, :h, :w, :].contiguous()


_FUSED_CLASS: type | None = None


def _fused_window_attention_class() -> type:
    """``FusedWindowAttention3d``: torchvision's ``ShiftedWindowAttention3d`` whose forward is
    ``window_attention_3d`` in PyTorch, and torchvision's own code while a graph is exported,
    so the ONNX graph keeps the explicit MatMul/Softmax form every runtime (TensorRT included)
    fuses itself. ``VideoSwin`` swaps the class of torchvision's modules: parameters and
    state_dict keys are unchanged. Made on first use (and reached as a module attribute, so
    pickles of the model load) because torchvision is imported only where Video-Swin is built:
    a machine with torch alone still imports the model (the GPU check's machine)."""
    global _FUSED_CLASS
    if _FUSED_CLASS is None:
        from torchvision.models.video.swin_transformer import (
            ShiftedWindowAttention3d,
            _get_window_and_shift_size,
        )

        class FusedWindowAttention3d(ShiftedWindowAttention3d):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
                    return super().forward(x)
                window_size, shift_size = _get_window_and_shift_size(
                    self.shift_size.copy(), list(x.shape[1:4]), self.window_size.copy()
                )
                return window_attention_3d(x, self, window_size, shift_size)

        FusedWindowAttention3d.__qualname__ = "FusedWindowAttention3d"
        _FUSED_CLASS = FusedWindowAttention3d
    return _FUSED_CLASS


def __getattr__(name: str):
    if name == "FusedWindowAttention3d":
        return _fused_window_attention_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class VideoSwin(nn.Module):
    """torchvision ``SwinTransformer3d`` with patch size (1, 4, 4); one norm per output level.
    Its window attention runs fused in PyTorch (``window_attention_3d``)."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        from torchvision.models.video.swin_transformer import SwinTransformer3d

        sizes = _SWIN_SIZES[config.name]
        swin = SwinTransformer3d(
            patch_size=[1, 4, 4],
            window_size=list(config.window_size),
            stochastic_depth_prob=config.drop_path_rate,
            **sizes,
        )
        fused = _fused_window_attention_class()
        for module in swin.modules():
            if type(module) is fused.__base__:
                module.__class__ = fused
        # Keep the patch embedding and the stages; the classification norm/head are unused.
        self.patch_embed = swin.patch_embed
        self.pos_drop = swin.pos_drop
        self.features = swin.features
        dim = sizes["embed_dim"]
        self.out_channels = (dim, dim * 2, dim * 4, dim * 8)
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in self.out_channels)

    def forward(self, frames: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(rearrange(frames, "b t c h w -> b c t h w"))  # (B, T, H/4, W/4, C)
        x = self.pos_drop(x)
        features = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index % 2 == 0:  # stages sit at even indices, patch merging at odd ones
                level = self.norms[index // 2](x)
                features.append(rearrange(level, "b t h w c -> b t c h w"))
        return features

    def load_pretrained(self, state_dict: dict[str, torch.Tensor], source: str) -> None:
        state_dict = _video_swin_to_torchvision(state_dict)
        state_dict = {
            k: v
            for k, v in state_dict.items()
            if not k.startswith(("head.", "norm.")) and "relative_position_index" not in k
        }
        # Kinetics checkpoints embed 2-frame patches; temporal size 1 sums the kernel over time
        # (ReferFormer's adaptation), which keeps the response to a static clip unchanged.
        key = "patch_embed.proj.weight"
        if key in state_dict and state_dict[key].shape[2] != 1:
            state_dict[key] = state_dict[key].sum(dim=2, keepdim=True)
        own = self.state_dict()
        for name in own:
            if name.startswith("norms.") or "relative_position_index" in name:
                state_dict.setdefault(name, own[name])  # our level norms start fresh
        load_state_checked(self, state_dict, source)


def _video_swin_to_torchvision(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename keys of the original Video-Swin (mmaction) layout to torchvision's, if needed."""
    if not any(k.startswith("layers.") for k in state_dict):
        return state_dict
    renamed = {}
    for key, value in state_dict.items():
        new = re.sub(r"^layers\.(\d+)\.blocks\.", lambda m: f"features.{2 * int(m[1])}.", key)
        new = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"features.{2 * int(m[1]) + 1}.", new)
        new = new.replace(".mlp.fc1.", ".mlp.0.").replace(".mlp.fc2.", ".mlp.3.")
        new = new.replace("cls_head.fc_cls.", "head.")
        renamed[new] = value
    return renamed


def _strip_prefixes(state_dict: dict) -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}``-style containers and DDP / whole-model key prefixes."""
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if any(k.startswith("backbone.") for k in state_dict):
        # A whole recogniser/detector checkpoint (mmaction's Kinetics Video-Swin): keep the backbone.
        state_dict = {
            k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")
        }
    return state_dict


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file or a ``.pth``/``.pt``/``.bin`` (weights only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    # weights_only refuses arbitrary pickled objects: only tensors and containers load.
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def build_backbone(config: BackboneConfig, pretrained: str | Path | None = None) -> nn.Module:
    """The configured backbone, with weights from ``pretrained`` (a local file) when given."""
    if config.name == "tiny-cnn":
        backbone: nn.Module = TinyCNN(config.channels)
    elif config.name == "resnet50":
        backbone = ResNet50(config)
    else:
        backbone = VideoSwin(config)
    if pretrained is not None:
        if not hasattr(backbone, "load_pretrained"):
            raise ValueError(f"backbone {config.name!r} has no pretrained weights to load")
        state_dict = _strip_prefixes(read_state_dict(pretrained))
        backbone.load_pretrained(state_dict, str(pretrained))
        log.info("loaded %s backbone weights from %s", config.name, pretrained)
    return backbone
