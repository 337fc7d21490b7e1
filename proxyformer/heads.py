"""Prediction heads (paper Sec. III-C, Eq. 7 and 9): dynamic kernels, reference head, JSC ψ."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from .layers import FFN, MLP, Attention, masked_mean, temporal_position

# Per query and frame: mask centre (x, y), sqrt of its area fraction, velocity (x, y), and the
# video-level centre (x, y) and velocity (x, y), both weighted by the mask's mass in each frame.
GEOMETRY_FEATURES = 9
# Velocities (image widths/heights per frame step) are squashed by tanh(v / 0.03): the sign and
# "moving or not" matter, not the speed, which depends on the frame rate and on how far apart a
# training clip's sampled frames are (consecutive frames at inference, gaps of 1-11 in training).
_VELOCITY_SCALE = 0.03
# With ``decoder.shape_moments``: skewness and kurtosis - 2 of the mask along x, y and the two
# diagonals (``mask_shape``), appended to the geometry.
SHAPE_FEATURES = 8


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


def mask_shape(weights: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Soft masks (B, T, N, h*w) in [0, 1] -> (B, T, N, SHAPE_FEATURES) shape of each mask.

    The standardised third and fourth moments (skewness, kurtosis - 2) of the mask's cells
    projected on x, y, (x + y) / sqrt(2) and (x - y) / sqrt(2), in cell units. They tell shapes
    apart whatever their size and place: a square's x and y projections are flat (kurtosis 1.8)
    and its diagonal ones peaked (2.4), a diamond's the reverse, a circle's all about 2.0, and a
    triangle's are skewed. Centre, area and motion (``mask_geometry``) say nothing of shape, nor
    does F_seg averaged under the mask.

    A cell weighs max(2 w - 1, 0): the cells the thresholded mask (w > 0.5) holds, without the
    faint background that would swamp the moments, and without a hard threshold, so the values
    move continuously with the mask logits (a cell that FP16 or INT8 logits push just past 0.5
    enters with a small weight, not a whole one). An empty mask
    gives zeros and -2. Coordinates are standardised by the mask's own spread before the
    powers, so the values stay small in FP16.
    """
    device, dtype = weights.device, weights.dtype
    ys = torch.arange(height, device=device, dtype=dtype) + 0.5
    xs = torch.arange(width, device=device, dtype=dtype) + 0.5
    x = xs[None, :].expand(height, width).reshape(-1)
    y = ys[:, None].expand(height, width).reshape(-1)
    axes = torch.stack((x, y, (x + y) * 0.5**0.5, (x - y) * 0.5**0.5), dim=-1)  # (hw, 4)
    solid = torch.relu(2.0 * weights - 1.0)  # (B, T, N, hw)
    share = solid / (solid.sum(-1, keepdim=True) + 1e-4)  # sums to 1 (0 for an empty mask)
    mean = share @ axes  # (B, T, N, 4)
    offset = axes - mean[..., None, :]  # (B, T, N, hw, 4)
    share = share[..., None]
    spread = ((share * offset * offset).sum(-2) + 1e-4).sqrt()  # (B, T, N, 4)
    # Clamped at 3: a square's, disc's or triangle's own cells lie within 2.8 of the mean, and
    # a faint speck of mask far from the object would otherwise dominate the fourth power
    # (FP16 logits flip such specks across the weight's threshold); off-mask cells (share 0)
    # stay finite, so that 0 * z^4 is 0 in FP16.
    z = (offset / spread[..., None, :]).clamp(-3.0, 3.0)
    z2 = z * z
    skew = (share * z2 * z).sum(-2)
    kurtosis = (share * z2 * z2).sum(-2)
    return torch.cat((skew, kurtosis - 2.0), dim=-1)


class VideoSelection(nn.Module):
    """Class scores from the whole video (``DecoderConfig.video_select``).

    Each query's per-frame input gains an embedding of its mask's geometry (``mask_geometry``,
    with ``shape`` also ``mask_shape``);
    then the video's T x N tokens attend to one another (with frame and query-slot positions,
    so a slot's track and the other objects can be compared), cross-attend to the expression,
    and pass an FFN. Motion and relative position are properties of the video, not of a frame.
    Besides the class MLP on the result, a bilinear term (token . W sentence) scores how well
    each query fits the expression's mean feature: an explicit text x geometry interaction,
    which the MLP on a sum of the two learns slowly.
    """

    def __init__(
        self, dim: int, num_queries: int, num_heads: int, ffn_dim: int, shape: bool = False
    ) -> None:
        super().__init__()
        self.shape = shape
        features = GEOMETRY_FEATURES + (SHAPE_FEATURES if shape else 0)
        self.geometry_proj = MLP(features, dim, dim, num_layers=2)
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
        geometry: torch.Tensor,  # (B, T, N, GEOMETRY_FEATURES [+ SHAPE_FEATURES])
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


class PredictionHeads(nn.Module):
    """Per query and frame: a referred-object logit, a box, and a mask from a dynamic kernel."""

    def __init__(
        self,
        dim: int,
        mask_dim: int,
        mask_pool: bool = False,
        selection: VideoSelection | None = None,
    ) -> None:
        super().__init__()
        self.selection = selection
        if mask_pool:  # scores [query ; F_seg pooled under the query's mask]
            self.pool_proj = nn.Linear(mask_dim, dim)
        else:
            self.pool_proj = None
        if mask_pool or selection is not None:
            self.class_head = MLP(dim, dim, 1, num_layers=2)
        else:
            self.class_head = nn.Linear(dim, 1)  # N_class = 1: "is this the referred object"
        self.box_head = MLP(dim, dim, 4, num_layers=3)
        self.kernel_head = MLP(dim, dim, mask_dim, num_layers=2)  # G_kernel, a 2-layer MLP

    @property
    def reads_masks(self) -> bool:
        """Whether the class path reads the (detached) soft masks: mask pooling or selection."""
        return self.pool_proj is not None or self.selection is not None

    def class_inputs(
        self, mask_logits: torch.Tensor, seg_features: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """What the class path reads besides the queries, from the stride-4 mask logits
        (B, T, N, h*w) and F_seg (B, T, D, h, w): ``pooled`` (B, T, N, D), F_seg averaged under
        each query's soft mask, and ``geometry`` (B, T, N, GEOMETRY_FEATURES) of that mask
        (followed by its ``mask_shape`` when the selection module reads shape).

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
            geometry = mask_geometry(weights, *seg_features.shape[-2:])
            if self.selection.shape:
                shape = mask_shape(weights, *seg_features.shape[-2:])
                geometry = torch.cat((geometry, shape), dim=-1)
            inputs["geometry"] = geometry
        return inputs

    def class_logits(
        self,
        queries: torch.Tensor,
        pooled: torch.Tensor | None = None,
        geometry: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The class path: queries (B, T, N, C) and ``class_inputs`` -> logits (B, T, N)."""
        class_input = queries
        if self.pool_proj is not None:
            class_input = queries + self.pool_proj(pooled)
        bilinear = None
        if self.selection is not None:
            if text is None or text_mask is None:
                raise ValueError("video-level selection (decoder.video_select) needs the text")
            class_input, bilinear = self.selection(class_input, geometry, text, text_mask.bool())
        logits = self.class_head(class_input).squeeze(-1)
        return logits if bilinear is None else logits + bilinear

    def forward(
        self,
        queries: torch.Tensor,
        seg_features: torch.Tensor,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        keep_class_inputs: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Queries (B, T, N, C) and F_seg (B, T, D, h, w) -> logits, boxes, mask logits.

        ``text`` (B, L, C) and ``text_mask`` (B, L) are needed with video-level selection.
        ``keep_class_inputs`` also returns the class path's inputs, ``class_queries`` and
        those of ``class_inputs`` as ``class_pooled`` / ``class_geometry``.
        """
        kernels = self.kernel_head(queries)  # (B, T, N, D)
        # Eq. 9 before upsampling: each frame's kernels applied to that frame's F_seg, as one
        # batched MatMul (btnd,btd(hw)->btn(hw)) rather than a grouped conv or an Einsum: shapes
        # stay dynamic in export, TensorRT runs it as a GEMM and INT8 calibration can quantise it.
        masks = kernels @ seg_features.flatten(-2)  # (B, T, N, hw)
        # The paper presets read no mask in the class path and skip the (B, T, N, hw) sigmoid.
        inputs = self.class_inputs(masks, seg_features)
        logits = self.class_logits(queries, **inputs, text=text, text_mask=text_mask)
        out = {
            "pred_logits": logits,  # (B, T, N)
            "pred_boxes": self.box_head(queries).sigmoid(),  # (B, T, N, 4) cx, cy, w, h
            "pred_masks": masks.unflatten(-1, seg_features.shape[-2:]),  # (B, T, N, h, w)
        }
        if keep_class_inputs:
            out["class_queries"] = queries
            out |= {f"class_{name}": value for name, value in inputs.items()}
        return out


class JointSemantics(nn.Module):
    """Eq. 7: s_{v&t} = ψ([GAP(F_v^K), GAP(F_t)]), ψ a linear layer on the concatenation."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.psi = nn.Linear(2 * dim, dim)

    def forward(self, video_gap: torch.Tensor, text_gap: torch.Tensor) -> torch.Tensor:
        return self.psi(torch.cat((video_gap, text_gap), dim=-1))  # (B, C)
