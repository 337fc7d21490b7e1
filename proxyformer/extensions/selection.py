"""The class path of the extensions: mask-pooled scores (``mask_pool``) and video-level query
selection from the masks' geometry (``video_select``)."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ..heads import PredictionHeads
from ..layers import FFN, MLP, Attention, masked_mean, temporal_position

# Per query and frame: mask centre (x, y), sqrt of its area fraction, velocity (x, y), and the
# video-level centre (x, y) and velocity (x, y), both weighted by the mask's mass in each frame.
GEOMETRY_FEATURES = 9
# Velocities (image widths/heights per frame step) are squashed by tanh(v / 0.03): the sign and
# "moving or not" matter, not the speed, which depends on the frame rate and on how far apart a
# training clip's sampled frames are (consecutive frames at inference, gaps of 1-11 in training).
_VELOCITY_SCALE = 0.03


def mask_geometry(weights: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Soft masks (B, T, N, h*w) in [0, 1] -> (B, T, N, GEOMETRY_FEATURES) geometry.

    Velocities are central differences over the frames given (one-sided at the ends, zero for a
    single frame), squashed by tanh(v / 0.03); coordinates are normalised to [0, 1] of the
    (padded) feature map.
    """
    device, dtype = weights.device, weights.dtype
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
    grid = torch.stack(
        (xs[None, :].expand(height, width), ys[:, None].expand(height, width)), dim=-1
    ).reshape(height * width, 2)  # (hw, 2) as x, y
    mass = weights.sum(-1, keepdim=True)  # (B, T, N, 1)
    centre = (weights @ grid) / (mass + 1e-6)  # (B, T, N, 2)
    area = (mass / (height * width)).clamp(min=0.0).sqrt()
    # Neighbouring frames by concatenation (no gather), so T stays dynamic in export.
    nxt = torch.cat((centre[:, 1:], centre[:, -1:]), dim=1)
    prev = torch.cat((centre[:, :1], centre[:, :-1]), dim=1)
    index = torch.arange(centre.shape[1], device=device, dtype=dtype)
    steps = torch.cat((index[1:], index[-1:])) - torch.cat((index[:1], index[:-1]))
    velocity = torch.tanh((nxt - prev) / steps.clamp(min=1.0)[:, None, None] / _VELOCITY_SCALE)
    frame_weight = mass / (mass.sum(dim=1, keepdim=True) + 1e-6)  # (B, T, N, 1)
    video_centre = (centre * frame_weight).sum(dim=1, keepdim=True).expand_as(centre)
    video_velocity = (velocity * frame_weight).sum(dim=1, keepdim=True).expand_as(velocity)
    return torch.cat((centre, area, velocity, video_centre, video_velocity), dim=-1)


class VideoSelection(nn.Module):
    """Class scores from the whole video (``ExtensionsConfig.video_select``).

    Each query's per-frame input gains an embedding of its mask's geometry (``mask_geometry``);
    then the video's T x N tokens attend to one another (with frame and query-slot positions,
    so a slot's track and the other objects can be compared), cross-attend to the expression,
    and pass an FFN. Motion and relative position are properties of the video, not of a frame.
    Besides the class MLP on the result, a bilinear term (token . W sentence) scores how well
    each query fits the expression's mean feature: an explicit text x geometry interaction,
    which the MLP on a sum of the two learns slowly.
    """

    def __init__(self, dim: int, num_queries: int, num_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.geometry_proj = MLP(GEOMETRY_FEATURES, dim, dim, num_layers=2)
        self.slot_embed = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.self_attn = Attention(dim, num_heads)
        self.norm_self = nn.LayerNorm(dim)
        self.text_attn = Attention(dim, num_heads)
        self.norm_text = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn_dim)
        self.text_proj = nn.Linear(dim, dim)  # the sentence's side of the bilinear score

    def forward(
        self,
        tokens: torch.Tensor,  # (B, T, N, C) class-head inputs
        geometry: torch.Tensor,  # (B, T, N, GEOMETRY_FEATURES)
        text: torch.Tensor,  # (B, L, C)
        text_mask: torch.Tensor,  # (B, L) bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> the refined class-head input (B, T, N, C) and the bilinear score (B, T, N)."""
        frames, dim = tokens.shape[1], tokens.shape[-1]
        tokens = tokens + self.geometry_proj(geometry)
        pos = temporal_position(frames, dim, tokens.device)[:, None, :] + self.slot_embed
        pos = rearrange(pos, "t n c -> (t n) c")
        x = rearrange(tokens, "b t n c -> b (t n) c")
        x = self.norm_self(x + self.self_attn(x, x, query_pos=pos, key_pos=pos))
        x = self.norm_text(x + self.text_attn(x, text, key_padding_mask=text_mask))
        x = self.ffn(x).reshape(tokens.shape)
        sentence = self.text_proj(masked_mean(text, text_mask, dim=1))  # (B, C)
        bilinear = (x * sentence[:, None, None, :]).sum(-1) / dim**0.5  # (B, T, N)
        return x, bilinear


class ExtendedHeads(PredictionHeads):
    """The paper's heads whose class path reads the masks (``mask_pool``, ``video_select``).

    Masks and boxes are the paper's; only the class logits change. With either option the
    class head is a 2-layer MLP instead of the paper's linear layer.
    """

    def __init__(
        self, dim: int, mask_dim: int, mask_pool: bool, selection: VideoSelection | None
    ) -> None:
        super().__init__(dim, mask_dim)
        self.selection = selection
        # scores [query ; F_seg pooled under the query's mask]
        self.pool_proj = nn.Linear(mask_dim, dim) if mask_pool else None
        if mask_pool or selection is not None:
            self.class_head = MLP(dim, dim, 1, num_layers=2)

    @property
    def reads_masks(self) -> bool:
        return self.pool_proj is not None or self.selection is not None

    def class_inputs(
        self, mask_logits: torch.Tensor, seg_features: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """From the stride-4 mask logits (B, T, N, h*w) and F_seg (B, T, D, h, w): ``pooled``
        (B, T, N, D), F_seg averaged under each query's soft mask, and ``geometry``
        (B, T, N, GEOMETRY_FEATURES) of that mask.

        The masks are detached so that the class loss does not bend them. Both depend only on
        the modules before the class path, so a frozen model's values can be cached once and
        the class path trained on them (``training/train_selection.py``).
        """
        if not self.reads_masks:
            return {}
        weights = mask_logits.detach().sigmoid()
        inputs = {}
        if self.pool_proj is not None:
            flat = seg_features.flatten(-2)  # (B, T, D, hw)
            inputs["pooled"] = (weights @ flat.transpose(-1, -2)) / (
                weights.sum(-1, keepdim=True) + 1.0
            )
        if self.selection is not None:
            inputs["geometry"] = mask_geometry(weights, *seg_features.shape[-2:])
        return inputs

    def class_logits(
        self,
        queries: torch.Tensor,
        pooled: torch.Tensor | None = None,
        geometry: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Queries (B, T, N, C), ``class_inputs`` and the text -> logits (B, T, N)."""
        class_input = queries
        if self.pool_proj is not None:
            class_input = queries + self.pool_proj(pooled)
        bilinear = None
        if self.selection is not None:
            if text is None or text_mask is None:
                raise ValueError("video-level selection (extensions.video_select) needs the text")
            class_input, bilinear = self.selection(class_input, geometry, text, text_mask.bool())
        logits = self.class_head(class_input).squeeze(-1)
        return logits if bilinear is None else logits + bilinear
