"""Mask decoder (paper Sec. III-C): FPN-like fusion to F_seg and a transformer decoder.

- ``SegFPN``: top-down fusion of the CMIE video features (strides 16/32 by default) with the
  finer backbone features (strides 4/8) into F_seg at stride 4, as ReferFormer's FPN does.
- ``QueryDecoder``: L layers over the proxy queries, per frame: self-attention among the N
  queries, cross-attention to that frame's CMIE video tokens, FFN. Every layer's output goes
  to the heads so that auxiliary losses supervise each of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from .config import DecoderConfig
from .layers import FFN, Attention, sine_position_2d


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

    def __init__(self, dim: int, num_levels: int, mask_dim: int, position: bool = False) -> None:
        super().__init__()
        self.smooth = nn.ModuleList(conv_gn_relu(dim, dim, 3) for _ in range(num_levels - 1))
        self.out = nn.Conv2d(dim, mask_dim, 1)
        self.pos_proj = nn.Linear(dim, mask_dim) if position else None

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Maps ordered coarse to fine, each (B*T, C, h, w) -> F_seg (B*T, mask_dim, H/4, W/4)."""
        x = maps[0]
        for finer, smooth in zip(maps[1:], self.smooth):
            x = smooth(finer + F.interpolate(x, size=finer.shape[-2:], mode="nearest"))
        out = self.out(x)
        if self.pos_proj is not None:
            height, width = out.shape[-2:]
            pos = self.pos_proj(sine_position_2d(height, width, x.shape[1], x.device))  # (hw, D)
            out = out + rearrange(pos, "(h w) d -> d h w", h=height)
        return out


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, config: DecoderConfig) -> None:
        super().__init__()
        self.self_attn = Attention(dim, config.num_heads, config.dropout)
        self.norm_self = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, config.num_heads, config.dropout)
        self.norm_cross = nn.LayerNorm(dim)
        self.ffn = FFN(dim, config.ffn_dim, config.dropout)
        self.value_pos = config.value_pos
        if config.text_attn:
            self.text_attn = Attention(dim, config.num_heads, config.dropout)
            self.norm_text = nn.LayerNorm(dim)
        else:
            self.text_attn = None

    def forward(self, queries, memory, memory_pos, text=None, text_mask=None, attend=None):
        """Queries (B*T, N, C) attend among themselves, to memory (B*T, S, C) (where
        ``attend`` (B*T, N, S) allows) and, with ``text_attn``, to the text (B*T, L, C)."""
        queries = self.norm_self(queries + self.self_attn(queries, queries))
        value = memory + memory_pos if self.value_pos else memory
        queries = self.norm_cross(
            queries + self.cross_attn(queries, memory, value, key_pos=memory_pos, attend=attend)
        )
        if self.text_attn is not None:
            attended = self.text_attn(queries, text, key_padding_mask=text_mask)
            queries = self.norm_text(queries + attended)
        return self.ffn(queries)


class QueryDecoder(nn.Module):
    def __init__(self, dim: int, config: DecoderConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(dim)  # shared output norm before the heads (DETR)

    def forward(
        self, proxy, video, space_pos, text, text_mask, mask_fn=None
    ) -> list[torch.Tensor]:
        """Proxies (B, T, N, C), video (B, T, S, C), text (B, L, C) and its mask (B, L) ->
        one (B, T, N, C) output per layer. ``mask_fn`` maps queries (B*T, N, C) to the video
        tokens each may attend to, (B*T, N, S) bool (masked attention)."""
        batch, frames = proxy.shape[:2]
        queries = rearrange(proxy, "b t n c -> (b t) n c")
        memory = rearrange(video, "b t s c -> (b t) s c")
        # (B*T, L, C) in the queries' order; expand + reshape (repeat_interleave with a
        # dynamic count exports to an Expand that breaks for other T).
        text = repeat(text, "b l c -> (b t) l c", t=frames)
        text_mask = repeat(text_mask, "b l -> (b t) l", t=frames)
        outputs = []
        for layer in self.layers:
            attend = mask_fn(self.norm(queries)) if mask_fn is not None else None
            queries = layer(queries, memory, space_pos, text, text_mask, attend)
            outputs.append(rearrange(self.norm(queries), "(b t) n c -> b t n c", b=batch))
        return outputs
