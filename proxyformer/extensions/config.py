"""Options beyond the paper, for small models trained from scratch (the ``extensions`` section).

Every option is off in the paper presets and on in ``tiny-synthetic``, the preset of the shipped
demo checkpoint. They let a ~1.7 M-parameter model trained for minutes on two CPU cores ground
an expression in the synthetic set; the paper's model (Sec. III) has none of them, and the
modules in ``proxyformer/`` read as the paper does. ``docs/model.md`` lists what each one buys
on the synthetic set (the ablations) and why none is tuned to that set's vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

# Keys that lived in the ``decoder`` section before the extensions had their own; a config of
# that age is migrated by ``migrate_decoder_options``.
OPTION_NAMES = ("value_pos", "seg_pos", "text_attn", "mask_pool", "masked_attn", "video_select")
# Removed: the masks' skewness and kurtosis along the diagonals, which encoded the synthetic
# generator's four shapes. A checkpoint trained with it cannot be rebuilt.
REMOVED_OPTIONS = ("shape_moments",)


@dataclass(frozen=True)
class ExtensionsConfig:
    """Decoder and class-path options that are not in the paper (all off: the paper's model)."""

    # Cross-attention values carry the 2-D position of the video tokens (value = F_v + pos), so
    # a query knows where the object it reads is (boxes, "on the left"); DETR adds pos to keys
    # only.
    value_pos: bool = False
    # F_seg gains a learned projection of its pixels' 2-D sine position (CoordConv-like, as
    # ReferFormer's relative coordinates), so a dynamic kernel can prefer a location.
    seg_pos: bool = False
    # Each decoder layer also cross-attends to the text features F_t, so the query that found
    # an object can check it against the expression before the class head scores it.
    text_attn: bool = False
    # The class head also reads F_seg pooled under the query's own (soft) mask, so it scores
    # the object the query segments rather than the query's slot.
    mask_pool: bool = False
    # Mask2Former's masked attention: each decoder layer's query reads only the video tokens
    # inside the mask predicted from its previous state (everywhere when that mask is empty).
    masked_attn: bool = False
    # The class head scores each query from the whole video rather than one frame: the centre,
    # size and motion of its (detached) mask in every frame are embedded into its class input,
    # then one attention layer over the video's T x N query tokens and a cross-attention to the
    # text precede the class MLP, and a bilinear term scores the result against the sentence's
    # mean feature. Masks and boxes are unchanged.
    video_select: bool = False

    @property
    def enabled(self) -> bool:
        """Whether any option is on (False: the paper's decoder and heads)."""
        return any(getattr(self, f.name) for f in fields(self))

    @property
    def class_path_reads_masks(self) -> bool:
        """Whether the class path reads the (detached) soft masks."""
        return self.mask_pool or self.video_select


def migrate_decoder_options(data: dict, where: str) -> dict:
    """A config mapping whose ``decoder`` section still holds the options -> the current layout.

    Configs written before the options moved to ``extensions`` (checkpoints' ``config.json``,
    bundles' manifests) keep loading. ``shape_moments: true`` is refused: that feature was
    removed, and its weights cannot be used without it.
    """
    decoder = data.get("decoder")
    if not isinstance(decoder, dict) or not set(decoder) & {*OPTION_NAMES, *REMOVED_OPTIONS}:
        return data
    decoder = dict(decoder)
    if decoder.pop("shape_moments", False):
        raise ValueError(
            f"{where}.decoder.shape_moments is true: that option was removed (it encoded the "
            "synthetic generator's shapes); retrain the checkpoint (make checkpoint) or use an "
            "older release to read it"
        )
    moved = {name: decoder.pop(name) for name in OPTION_NAMES if name in decoder}
    extensions = dict(data.get("extensions") or {})
    clash = sorted(set(moved) & set(extensions))
    if clash:
        raise ValueError(f"{where} sets {clash} in both 'decoder' and 'extensions'")
    return {**data, "decoder": decoder, "extensions": {**extensions, **moved}}


def tiny_synthetic_options() -> ExtensionsConfig:
    """The options of the ``tiny-synthetic`` preset (the demo checkpoint): all of them."""
    return ExtensionsConfig(**{name: True for name in OPTION_NAMES})
