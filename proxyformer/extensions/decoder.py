"""The decoder with the options of ``ExtensionsConfig`` (value_pos, seg_pos, text_attn,
masked_attn). Parameter names are those of the paper's modules plus the options' own, so a
checkpoint of the paper's decoder loads into these modules with the options' weights fresh."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from ..config import DecoderConfig
from ..decoder import DecoderLayer, QueryDecoder, SegFPN
from ..layers import Attention, sine_position_2d
from .config import ExtensionsConfig


class PositionalSegFPN(SegFPN):
    """``seg_pos``: F_seg gains a learned projection of its pixels' 2-D sine position."""

    def __init__(self, dim: int, num_levels: int, mask_dim: int) -> None:
        super().__init__(dim, num_levels, mask_dim)
        self.pos_proj = nn.Linear(dim, mask_dim)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        x = self.fuse(maps)
        out = self.out(x)
        height, width = out.shape[-2:]
        pos = self.pos_proj(sine_position_2d(height, width, x.shape[1], x.device))  # (hw, D)
        return out + rearrange(pos, "(h w) d -> d h w", h=height)


class ExtendedDecoderLayer(DecoderLayer):
    """The paper's layer with ``value_pos``, ``text_attn`` and a masked-attention map."""

    def __init__(self, dim: int, config: DecoderConfig, options: ExtensionsConfig) -> None:
        super().__init__(dim, config)
        self.value_pos = options.value_pos
        if options.text_attn:
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


class ExtendedQueryDecoder(QueryDecoder):
    """The paper's decoder over ``ExtendedDecoderLayer``s, with the text and masked attention."""

    def __init__(self, dim: int, config: DecoderConfig, options: ExtensionsConfig) -> None:
        layers = [ExtendedDecoderLayer(dim, config, options) for _ in range(config.num_layers)]
        super().__init__(dim, layers)

    def forward(
        self,
        proxy: torch.Tensor,
        video: torch.Tensor,
        space_pos: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        mask_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """As the paper's, plus the text (B, L, C) and its mask (B, L) for ``text_attn``, and
        ``mask_fn`` mapping queries (B*T, N, C) to the video tokens each may attend to,
        (B*T, N, S) bool (masked attention)."""
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


def masked_attention_fn(
    kernel_head: nn.Module, seg_flat: torch.Tensor, sizes: list[tuple[int, int]]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Mask2Former's masked attention for ``masked_attn``: queries (B*T, N, C) -> (B*T, N, S)
    bool, the CMIE video tokens (at ``sizes``, coarsest first) inside each query's mask
    predicted from its current state by the dynamic kernel on F_seg (B*T, D, h, w)."""

    def mask_fn(queries: torch.Tensor) -> torch.Tensor:
        kernels = kernel_head(queries)  # (B*T, N, D)
        logits = (kernels @ seg_flat.flatten(-2)).detach()  # (B*T, N, hw)
        logits = logits.flatten(0, 1).unflatten(-1, seg_flat.shape[-2:])[:, None]
        attend = torch.cat(
            [
                F.interpolate(logits, size=size, mode="bilinear", align_corners=False).flatten(1)
                for size in sizes
            ],
            dim=1,
        ).unflatten(0, queries.shape[:2]) > 0  # (B*T, N, S)
        return attend | ~attend.any(dim=-1, keepdim=True)  # an empty mask reads all

    return mask_fn
