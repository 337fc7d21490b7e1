"""``ExtendedProxyFormer``: the paper's model with the decoder and heads of the extensions."""

from __future__ import annotations

from pathlib import Path

from ..backbone import STRIDES
from ..config import ProxyFormerConfig
from ..decoder import SegFPN
from ..heads import JointSemantics
from ..model import ProxyFormer, build_encoders
from .decoder import ExtendedQueryDecoder, PositionalSegFPN, masked_attention_fn
from .selection import ExtendedHeads, VideoSelection


class ExtendedProxyFormer(ProxyFormer):
    """ProxyFormer whose decoder also reads the text and, with ``masked_attn``, the masks its
    queries predict on F_seg (everything else is the paper's forward pass)."""

    def decode_queries(self, proxy, video, space_pos, text, text_mask, seg_flat, sizes):
        mask_fn = None
        if self.config.extensions.masked_attn:
            mask_fn = masked_attention_fn(self.heads.kernel_head, seg_flat, sizes)
        return self.decoder(proxy, video, space_pos, text, text_mask, mask_fn)


def build_extended_proxyformer(
    config: ProxyFormerConfig,
    backbone_weights: str | Path | None = None,
    text_weights: str | Path | None = None,
) -> ExtendedProxyFormer:
    """``build_proxyformer`` for a config with ``extensions`` on (``tiny-synthetic``)."""
    dim, options = config.hidden_dim, config.extensions
    fpn_type = PositionalSegFPN if options.seg_pos else SegFPN
    selection = None
    if options.video_select:
        selection = VideoSelection(
            dim, config.num_queries, config.decoder.num_heads, config.decoder.ffn_dim
        )
    return ExtendedProxyFormer(
        config,
        **build_encoders(config, backbone_weights, text_weights),
        fpn=fpn_type(dim, len(STRIDES), config.decoder.mask_dim),
        decoder=ExtendedQueryDecoder(dim, config.decoder, options),
        heads=ExtendedHeads(dim, config.decoder.mask_dim, options.mask_pool, selection),
        jsc=JointSemantics(dim),
    )
