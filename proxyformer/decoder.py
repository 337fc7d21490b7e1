"""Mask decoder (paper Sec. III-C): FPN-like fusion to F_seg and a transformer decoder.

- ``SegFPN``: top-down fusion of the CMIE video features (strides 16/32 by default) with the
  finer backbone features (strides 4/8) into F_seg at stride 4, as ReferFormer's FPN does.
- ``QueryDecoder``: L layers over the proxy queries, per frame: self-attention among the N
  queries, cross-attention to that frame's CMIE video tokens, FFN. Every layer's output goes
  to the heads so that auxiliary losses supervise each of them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import DecoderConfig
from .layers import FFN, Attention


def conv_gn_relu(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
        nn.GroupNorm(group_count(c_out), c_out),
        nn.ReLU(inplace=True),
    )


def group_count(channels: int) -> int:
    """32 groups where the channels allow it (ReferFormer's choice), fewer for small C."""
    for groups in (32, 16, 8, 4, 2, 1):
        if channels % groups == 0 and channels // groups >= 2 or groups == 1:
            return groups
    return 1


class SegFPN(nn.Module):
    """Fuse coarse-to-fine maps (all C channels) into F_seg with ``mask_dim`` channels."""

    def __init__(self, dim: int, num_levels: int, mask_dim: int) -> None:
        super().__init__()
        self.smooth = nn.ModuleList(conv_gn_relu(dim, dim, 3) for _ in range(num_levels - 1))
        self.out = nn.Conv2d(dim, mask_dim, 1)

    def fuse(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Maps ordered coarse to fine, each (B*T, C, h, w) -> the fused (B*T, C, H/4, W/4)."""
        x = maps[0]
        for finer, smooth in zip(maps[1:], self.smooth):
            x = smooth(finer + F.interpolate(x, size=finer.shape[-2:], mode="nearest"))
        return x

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Maps ordered coarse to fine, each (B*T, C, h, w) -> F_seg (B*T, mask_dim, H/4, W/4)."""
        return self.out(self.fuse(maps))


class DecoderLayer(nn.Module):
    """Self-attention among a frame's N queries, cross-attention to its video tokens, FFN."""

    def __init__(self, dim: int, config: DecoderConfig) -> None:
        super().__init__()
        self.self_attn = Attention(dim, config.num_heads, config.dropout)
        self.norm_self = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, config.num_heads, config.dropout)
        self.norm_cross = nn.LayerNorm(dim)
        self.ffn = FFN(dim, config.ffn_dim, config.dropout)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor):
        """Queries (B*T, N, C) attend among themselves and to memory (B*T, S, C), whose 2-D
        positions (S, C) are added to the keys (DETR)."""
        queries = self.norm_self(queries + self.self_attn(queries, queries))
        queries = self.norm_cross(
            queries + self.cross_attn(queries, memory, memory, key_pos=memory_pos)
        )
        return self.ffn(queries)


class QueryDecoder(nn.Module):
    """L decoder layers over the proxies, each output normed for the heads (aux losses)."""

    def __init__(self, dim: int, layers: Iterable[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(dim)  # shared output norm before the heads (DETR)

    def forward(
        self, proxy: torch.Tensor, video: torch.Tensor, space_pos: torch.Tensor
    ) -> list[torch.Tensor]:
        """Proxies (B, T, N, C) and video (B, T, S, C) with positions (S, C) -> one
        (B, T, N, C) output per layer."""
        batch = proxy.shape[0]
        queries = rearrange(proxy, "b t n c -> (b t) n c")
        memory = rearrange(video, "b t s c -> (b t) s c")
        outputs = []
        for layer in self.layers:
            queries = layer(queries, memory, space_pos)
            outputs.append(rearrange(self.norm(queries), "(b t) n c -> b t n c", b=batch))
        return outputs
