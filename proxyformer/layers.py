"""Building blocks shared by CMIE and the decoder: attention, FFN, MLP, positional encodings.

Attention is plain ``F.scaled_dot_product_attention`` so that export yields MatMul/Softmax
(which TensorRT fuses into its multi-head-attention kernels) and no custom op.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections.

    Positional encodings are added to queries and keys only (DETR convention), so values
    carry content alone.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(
        self,
        query: torch.Tensor,  # (B, Lq, C)
        key: torch.Tensor,  # (B, Lk, C)
        value: torch.Tensor | None = None,  # (B, Lk, C); defaults to key
        query_pos: torch.Tensor | None = None,  # broadcastable to query
        key_pos: torch.Tensor | None = None,  # broadcastable to key
        key_padding_mask: torch.Tensor | None = None,  # (B, Lk) bool, True = attend
        attend: torch.Tensor | None = None,  # (B, Lq, Lk) bool, True = attend
    ) -> torch.Tensor:
        value = key if value is None else value
        q = self.q_proj(query if query_pos is None else query + query_pos)
        k = self.k_proj(key if key_pos is None else key + key_pos)
        v = self.v_proj(value)
        q, k, v = (rearrange(x, "b l (h d) -> b h l d", h=self.num_heads) for x in (q, k, v))
        attn_mask = None
        if key_padding_mask is not None:
            attn_mask = key_padding_mask[:, None, None, :]  # (B, 1, 1, Lk)
        if attend is not None:
            attn_mask = attend[:, None] if attn_mask is None else attn_mask & attend[:, None]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(rearrange(out, "b h l d -> b l (h d)"))


class TextFusion(nn.Module):
    """ReferFormer's vision-language fusion: visual tokens attend to the text and are gated
    (multiplied) by what they read, so pixels of the referred object can light up."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.attn = Attention(dim, num_heads)

    def forward(
        self,
        tokens: torch.Tensor,  # (B, L_v, C)
        text: torch.Tensor,  # (B, L, C)
        text_mask: torch.Tensor,  # (B, L) bool
        pos: torch.Tensor | None = None,  # broadcastable to tokens
    ) -> torch.Tensor:
        return tokens * self.attn(tokens, text, query_pos=pos, key_padding_mask=text_mask)


class FFN(nn.Module):
    """Transformer feed-forward block with its own residual and post-norm."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim), nn.Dropout(dropout),
        )  # fmt: skip
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.net(x))


class MLP(nn.Module):
    """A plain multi-layer perceptron with ReLU between layers (DETR's box MLP)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def sine_encoding(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sinusoidal encoding of (possibly fractional) positions: (...,) -> (..., dim)."""
    if dim % 2:
        raise ValueError(f"sine encoding needs an even dim, got {dim}")
    freq = torch.arange(dim // 2, dtype=torch.float32, device=positions.device)
    freq = temperature ** (2 * freq / dim)
    angles = positions.float()[..., None] / freq  # (..., dim/2)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)


def sine_position_2d(height: int, width: int, dim: int, device: torch.device) -> torch.Tensor:
    """DETR's normalised 2-D sine encoding of a feature map: (H*W, dim)."""
    scale = 2 * math.pi
    y = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * scale
    x = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * scale
    pos_y = sine_encoding(y, dim // 2)[:, None, :].expand(height, width, dim // 2)
    pos_x = sine_encoding(x, dim // 2)[None, :, :].expand(height, width, dim // 2)
    return torch.cat((pos_y, pos_x), dim=-1).reshape(height * width, dim)


def temporal_position(num_frames: int, dim: int, device: torch.device) -> torch.Tensor:
    """Sine encoding of frame indices: (T, dim). Works for any T, so T stays dynamic in export."""
    return sine_encoding(torch.arange(num_frames, device=device), dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Mean of ``x`` over ``dim`` counting only positions where ``mask`` is True."""
    if mask is None:
        return x.mean(dim)
    weights = mask.to(x.dtype).unsqueeze(-1)  # mask has x's shape without the channel axis
    return (x * weights).sum(dim) / weights.sum(dim).clamp(min=1.0)
