"""ProxyFormer, assembled from its parts, and ``build_proxyformer(config)``.

Data flow (shapes for B videos of T frames, one expression each):

    frames (B, T, 3, H, W) ─ backbone ─ input_proj ─> 4 levels (B, T, C, H/s, W/s), s = 4..32
    text ids/mask (B, L) ─ text encoder ─> F_t (B, L, C)
    levels at cmie.strides ─ flatten ─> F_v^0 (B, T, S, C)
    CMIE x K (Eq. 1-5) ─> F_v^K (B, T, S, C), Q^K (B, T, N, C)
    F_v^K + finer levels ─ FPN ─> F_seg (B, T, D, H/4, W/4)
    Q^K ─ decoder x L ─ heads ─> logits (B, T, N), boxes (B, T, N, 4), masks (B, T, N, H/4, W/4)
    JSC: Q_v = mean_T Q^K (B, N, C); s_{v&t} = ψ([GAP(F_v^K), GAP(F_t)]) (B, C)

The forward pass is split into ``encode_text``, ``encode_frames`` and ``decode`` so that export
can run the backbone once per video for any number of expressions.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .backbone import STRIDES, build_backbone
from .cmie import CMIE
from .config import ProxyFormerConfig
from .decoder import DecoderLayer, QueryDecoder, SegFPN, group_count
from .heads import JointSemantics, PredictionHeads
from .layers import TextFusion, masked_mean, sine_position_2d, temporal_position
from .text import TextEncoder

log = logging.getLogger(__name__)


class ProxyFormer(nn.Module):
    def __init__(
        self,
        config: ProxyFormerConfig,
        backbone: nn.Module,
        text_encoder: TextEncoder,
        cmie: CMIE,
        fpn: SegFPN,
        decoder: QueryDecoder,
        heads: PredictionHeads,
        jsc: JointSemantics,
    ) -> None:
        super().__init__()
        self.config = config
        dim = config.hidden_dim
        self.backbone = backbone
        self.text_encoder = text_encoder
        # 1x1 conv + GroupNorm from each backbone level to C (ReferFormer's input_proj).
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, dim, 1), nn.GroupNorm(group_count(dim), dim))
            for c in backbone.out_channels
        )
        self.cmie_levels = [STRIDES.index(s) for s in sorted(config.cmie.strides, reverse=True)]
        self.level_embed = nn.Parameter(torch.randn(len(self.cmie_levels), dim) * 0.02)
        self.text_fusion = (
            nn.ModuleList(TextFusion(dim, config.cmie.num_heads) for _ in backbone.out_channels)
            if config.text_fusion
            else None
        )
        self.cmie = cmie
        self.fpn = fpn
        self.decoder = decoder
        self.heads = heads
        self.jsc = jsc
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(3, 1, 1), False)

    # -- public API ----------------------------------------------------------------------

    def forward(
        self, frames: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor
    ) -> dict[str, torch.Tensor | list]:
        """Segment the object each video's expression refers to.

        Args:
            frames: (B, T, 3, H, W) float, normalised with ``config.pixel_mean/std``
                (``normalize`` does it for RGB in [0, 1] or uint8).
            text_ids: (B, L) int64 token ids of one expression per video.
            text_mask: (B, L) attention mask, 1/True for real tokens.

        Returns:
            ``pred_logits`` (B, T, N), ``pred_boxes`` (B, T, N, 4) as normalised cx, cy, w, h,
            ``pred_masks`` (B, T, N, ceil(H/4), ceil(W/4)) logits, ``aux_outputs`` (one dict
            of the three per earlier decoder layer), and for JSC ``video_queries`` (B, N, C)
            and ``joint_semantics`` (B, C).
        """
        check_inputs(frames, text_ids, text_mask, self.config)
        text_features = self.encode_text(text_ids, text_mask)
        levels = self.encode_frames(frames)
        return self.decode(levels, text_features, text_mask, tuple(frames.shape[-2:]))

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """RGB frames (..., 3, H, W), uint8 or float in [0, 1] -> normalised float."""
        if frames.dtype == torch.uint8:
            frames = frames.float() / 255.0
        return (frames - self.pixel_mean) / self.pixel_std

    def encode_text(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """(E, L) ids and mask -> F_t (E, L, C)."""
        return self.text_encoder(text_ids, text_mask.long())

    def encode_frames(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """(B, T, 3, H, W) -> four levels (B, T, C, H_pad/s, W_pad/s), H_pad = H rounded up
        to ``size_divisor`` (zero padding after normalisation, i.e. the mean colour)."""
        height, width = frames.shape[-2:]
        divisor = self.config.size_divisor
        pad_h, pad_w = (-height) % divisor, (-width) % divisor
        if pad_h or pad_w:
            frames = F.pad(frames, (0, pad_w, 0, pad_h))
        levels = []
        for feature, proj in zip(self.backbone(frames), self.input_proj):
            batch = feature.shape[0]
            flat = proj(rearrange(feature, "b t c h w -> (b t) c h w"))
            levels.append(rearrange(flat, "(b t) c h w -> b t c h w", b=batch))
        return levels

    def decode(
        self,
        levels: list[torch.Tensor],
        text_features: torch.Tensor,
        text_mask: torch.Tensor,
        image_size: tuple[int, int],
        aux: bool = True,
        keep_class_inputs: bool = False,
    ) -> dict[str, torch.Tensor | list]:
        """Backbone levels (B, T, C, h, w) and F_t (B, L, C) -> predictions (see ``forward``).

        ``aux=False`` skips the heads of the earlier decoder layers (``aux_outputs`` is empty),
        which inference and export do not need. ``keep_class_inputs`` adds what each layer's
        class path reads (``PredictionHeads.forward``), for training it on cached features.
        """
        text_mask = text_mask.bool()
        batch, frames = levels[0].shape[:2]
        dim = self.config.hidden_dim
        device = levels[0].device
        if self.text_fusion is not None:
            levels = [
                self._fuse_text(fusion, level, text_features, text_mask)
                for fusion, level in zip(self.text_fusion, levels)
            ]

        # F_v^0: tokens of the CMIE levels, coarsest first, with 2-D sine + level embeddings.
        cmie_maps = [levels[i] for i in self.cmie_levels]
        sizes = [tuple(m.shape[-2:]) for m in cmie_maps]
        video = torch.cat([rearrange(m, "b t c h w -> b t (h w) c") for m in cmie_maps], dim=2)
        space_pos = torch.cat(
            [
                sine_position_2d(h, w, dim, device) + self.level_embed[i]
                for i, (h, w) in enumerate(sizes)
            ]
        )  # (S, C)
        time_pos = temporal_position(frames, dim, device)  # (T, C)

        video, proxy = self.cmie(video, text_features, text_mask, space_pos, time_pos)

        # F_seg: CMIE levels back to maps, the other backbone levels as they are; coarse to fine.
        splits = torch.split(video, [h * w for h, w in sizes], dim=2)
        by_level = {
            level: rearrange(tokens, "b t (h w) c -> (b t) c h w", h=h, w=w)
            for level, tokens, (h, w) in zip(self.cmie_levels, splits, sizes)
        }
        maps = [
            by_level[i] if i in by_level else rearrange(levels[i], "b t c h w -> (b t) c h w")
            for i in range(len(levels) - 1, -1, -1)
        ]
        seg_flat = self.fpn(maps)  # (B*T, D, H/4, W/4)
        seg = rearrange(seg_flat, "(b t) d h w -> b t d h w", b=batch)

        # Without proxy interaction (use_proxy=False) CMIE returns the learned queries unchanged.
        layer_outputs = self.decode_queries(
            proxy, video, space_pos, text_features, text_mask, seg_flat, sizes
        )
        if not aux:
            layer_outputs = layer_outputs[-1:]  # inference: the heads on the last layer only
        out_h, out_w = math.ceil(image_size[0] / 4), math.ceil(image_size[1] / 4)
        predictions = []
        for queries in layer_outputs:
            pred = self.heads(queries, seg, text_features, text_mask, keep_class_inputs)
            pred["pred_masks"] = pred["pred_masks"][..., :out_h, :out_w]  # crop the padding
            predictions.append(pred)

        out: dict[str, torch.Tensor | list] = dict(predictions[-1])
        out["aux_outputs"] = predictions[:-1]
        # JSC (Eq. 6-7): video-level queries and the joint video-text semantics.
        out["video_queries"] = proxy.mean(dim=1)  # (B, N, C)
        video_gap = video.mean(dim=(1, 2))  # (B, C)
        text_gap = masked_mean(text_features, text_mask, dim=1)  # (B, C)
        out["joint_semantics"] = self.jsc(video_gap, text_gap)
        return out

    def decode_queries(self, proxy, video, space_pos, text, text_mask, seg_flat, sizes):
        """The decoder over the proxies Q^K (B, T, N, C) and F_v^K (B, T, S, C) -> one
        (B, T, N, C) output per layer. The paper's decoder reads neither the text nor F_seg;
        ``proxyformer.extensions`` overrides this to pass them on."""
        return self.decoder(proxy, video, space_pos)

    @staticmethod
    def _fuse_text(fusion, level, text, text_mask) -> torch.Tensor:
        """Gate one level (B, T, C, h, w) by the text, per frame, with 2-D sine positions."""
        batch, frames, dim, height, width = level.shape
        tokens = rearrange(level, "b t c h w -> b (t h w) c")
        pos = sine_position_2d(height, width, dim, level.device).repeat(frames, 1)  # (T*h*w, C)
        fused = fusion(tokens, text, text_mask, pos)
        return rearrange(fused, "b (t h w) c -> b t c h w", t=frames, h=height)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(
            p.numel() for p in self.parameters() if p.requires_grad or not trainable_only
        )


def check_inputs(
    frames: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor, config: ProxyFormerConfig
) -> None:
    """Raise ``ValueError`` naming the tensor, the expected and the received shape."""
    if _tracing():
        return  # shapes are symbolic during export; export checks its own dummy inputs
    if frames.dim() != 5:
        raise ValueError(
            f"frames must be (B, T, 3, H, W), got rank {frames.dim()} shape {tuple(frames.shape)}"
        )
    batch, num_frames, channels, height, width = frames.shape
    if num_frames == 0 or batch == 0:
        raise ValueError(f"frames must hold at least one video and frame, got {tuple(frames.shape)}")
    if channels != 3:
        raise ValueError(f"frames must have 3 (RGB) channels at dim 2, got {tuple(frames.shape)}")
    if not frames.is_floating_point():
        raise ValueError(
            f"frames must be normalised float (use model.normalize), got dtype {frames.dtype}"
        )
    if height < 32 or width < 32:
        raise ValueError(f"frames must be at least 32x32, got {height}x{width}")
    if text_ids.dim() != 2 or text_ids.shape[0] != batch:
        raise ValueError(
            f"text_ids must be (B={batch}, L), got shape {tuple(text_ids.shape)}"
        )
    if text_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"text_ids must be int64 token ids, got dtype {text_ids.dtype}")
    if text_mask.shape != text_ids.shape:
        raise ValueError(
            f"text_mask must match text_ids {tuple(text_ids.shape)}, got {tuple(text_mask.shape)}"
        )
    length = text_ids.shape[1]
    if length == 0 or length > config.text.max_length:
        raise ValueError(
            f"text length must be in [1, {config.text.max_length}], got L={length}"
        )
    if not bool(text_mask.bool().any(dim=1).all()):
        raise ValueError("text_mask has an expression with no real token (an all-zero row)")


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def build_encoders(
    config: ProxyFormerConfig,
    backbone_weights: str | Path | None = None,
    text_weights: str | Path | None = None,
) -> dict[str, nn.Module]:
    """The visual backbone, the text encoder and CMIE, which every variant of the model shares,
    built first and in this order (the random initialisation follows it)."""
    return {
        "backbone": build_backbone(config.backbone, backbone_weights),
        "text_encoder": TextEncoder(config.text, config.hidden_dim, text_weights),
        "cmie": CMIE(config.hidden_dim, config.num_queries, config.cmie),
    }


def build_proxyformer(
    config: ProxyFormerConfig,
    backbone_weights: str | Path | None = None,
    text_weights: str | Path | None = None,
) -> ProxyFormer:
    """Build a ProxyFormer from its config (SAM's ``_build_sam`` shape).

    Args:
        config: the model's frozen config (``proxyformer.config.get_preset("tiny")``...).
        backbone_weights: a local timm/torchvision/Kinetics Video-Swin state-dict file.
        text_weights: a local RoBERTa directory or a model id already in the HF cache.
            Without it RoBERTa starts from random weights; nothing is downloaded.
    """
    if config.extensions.enabled:
        # Options beyond the paper: a subclass with its own decoder and heads (imported here
        # because it subclasses ProxyFormer).
        from .extensions.model import build_extended_proxyformer

        return build_extended_proxyformer(config, backbone_weights, text_weights)
    dim = config.hidden_dim
    return ProxyFormer(
        config,
        **build_encoders(config, backbone_weights, text_weights),
        fpn=SegFPN(dim, len(STRIDES), config.decoder.mask_dim),
        decoder=QueryDecoder(
            dim, [DecoderLayer(dim, config.decoder) for _ in range(config.decoder.num_layers)]
        ),
        heads=PredictionHeads(dim, config.decoder.mask_dim),
        jsc=JointSemantics(dim),
    )
