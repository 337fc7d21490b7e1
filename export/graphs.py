"""The exported graphs, as thin ``nn.Module`` wrappers around a trained ProxyFormer.

- ``TextGraph``: ``input_ids [E, L]`` int64, ``attention_mask [E, L]`` int64
  -> ``text_features [E, L, C]`` (RoBERTa and the resizer to C).
- ``VideoGraph``: the frames of one video, ``text_features [E, L, C]`` and
  ``attention_mask [E, L]`` -> ``pred_logits [E, T, N]``, ``pred_boxes [E, T, N, 4]``,
  ``pred_masks [E, T, N, h, w]`` (stride-4 mask logits, padding cropped). The backbone runs
  once for the video; its levels are broadcast to the E expressions before the
  text-dependent part (text fusion, CMIE, FPN, decoder, heads of the last layer only).

The video graph can also be exported in two parts (``export_bundle(split=True)``), so that a
memory budget can run the expressions in groups without running the backbone once per group
(``runtime.budget``):

- ``VideoEncoderGraph`` (per video): ``frames`` -> ``level0..level3 [T, C, h_i, w_i]``, the
  backbone's projected levels (strides 4, 8, 16 and 32 of the padded frames);
- ``VideoDecoderGraph`` (per expression): the levels, ``text_features`` and ``attention_mask``
  -> the video graph's outputs.

``video_decoder(video_encoder(frames), text)`` is ``video(frames, text)``: the same modules,
split where the levels are broadcast to the expressions.

Frames come either as ``uint8 [T, H, W, 3]`` RGB (the default: decoded video as it is, a
quarter of the bytes of float32, normalised inside the graph) or as ``float32 [T, 3, H, W]``
already normalised with the model's mean/std.

``graph_specs`` describes both graphs' inputs and outputs (names, dtypes, named dynamic axes) as
the manifest records them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from proxyformer.model import ProxyFormer
from runtime.manifest import FRAME_FORMATS, TensorSpec
from runtime.manifest_schema import LEVELS

TEXT_INPUTS = ("input_ids", "attention_mask")
TEXT_OUTPUTS = ("text_features",)
VIDEO_INPUTS = ("frames", "text_features", "attention_mask")
VIDEO_OUTPUTS = ("pred_logits", "pred_boxes", "pred_masks")


def _frames_to_model(model: ProxyFormer, frames: torch.Tensor, frame_format: str) -> torch.Tensor:
    """The frames input as the model takes them: uint8 [T, H, W, 3] RGB is normalised here,
    inside the graph; float [T, 3, H, W] is already normalised."""
    if frame_format == "uint8-nhwc":
        return model.normalize(frames.permute(0, 3, 1, 2))
    return frames


def _check_frame_format(frame_format: str) -> None:
    if frame_format not in FRAME_FORMATS:
        raise ValueError(f"frame_format must be one of {FRAME_FORMATS}, got {frame_format!r}")


class TextGraph(nn.Module):
    def __init__(self, model: ProxyFormer) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids, attention_mask)


class VideoGraph(nn.Module):
    def __init__(self, model: ProxyFormer, frame_format: str = "uint8-nhwc") -> None:
        super().__init__()
        _check_frame_format(frame_format)
        self.model = model
        self.frame_format = frame_format

    def forward(
        self, frames: torch.Tensor, text_features: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        frames = _frames_to_model(self.model, frames, self.frame_format)
        levels = self.model.encode_frames(frames[None])  # one video: B = 1
        return _decode(self.model, [level[0] for level in levels], text_features,
                       attention_mask, tuple(frames.shape[-2:]))  # fmt: skip


def _decode(model: ProxyFormer, levels: list[torch.Tensor], text_features: torch.Tensor,
            attention_mask: torch.Tensor, size) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """One video's levels (T, C, h, w), broadcast to the E expressions, -> the three outputs."""
    expressions = text_features.shape[0]
    levels = [level[None].expand(expressions, -1, -1, -1, -1) for level in levels]
    out = model.decode(levels, text_features, attention_mask, (int(size[0]), int(size[1])),
                       aux=False)  # fmt: skip
    return out["pred_logits"], out["pred_boxes"], out["pred_masks"]


class VideoEncoderGraph(nn.Module):
    """The per-video part of the split video graph: frames -> the backbone's levels."""

    def __init__(self, model: ProxyFormer, frame_format: str = "uint8-nhwc") -> None:
        super().__init__()
        _check_frame_format(frame_format)
        self.model = model
        self.frame_format = frame_format

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, ...]:
        frames = _frames_to_model(self.model, frames, self.frame_format)
        return tuple(level[0] for level in self.model.encode_frames(frames[None]))


class VideoDecoderGraph(nn.Module):
    """The per-expression part of the split video graph: levels and text -> predictions.

    ``size`` is the frames' (H, W) before padding: the mask logits are cropped to it, as in
    ``VideoGraph``.
    """

    def __init__(self, model: ProxyFormer, size: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        self.size = (int(size[0]), int(size[1]))

    def forward(
        self,
        level0: torch.Tensor,
        level1: torch.Tensor,
        level2: torch.Tensor,
        level3: torch.Tensor,
        text_features: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        # Named inputs, not *levels: torch.export's dynamic shapes are keyed by argument name.
        levels = [level0, level1, level2, level3]
        return _decode(self.model, levels, text_features, attention_mask, self.size)


def level_shapes(model: ProxyFormer, size: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(C, h, w) of each level at frame size (H, W), from one frame through the backbone."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        frame = torch.zeros(1, 1, 3, int(size[0]), int(size[1]))
        shapes = [tuple(int(d) for d in level.shape[2:]) for level in model.encode_frames(frame)]
    model.train(was_training)
    if len(shapes) != len(LEVELS):
        raise ValueError(f"the split video graph takes {len(LEVELS)} backbone levels; this "
                         f"model has {len(shapes)}")  # fmt: skip
    return shapes


def graph_specs(
    model: ProxyFormer, size: tuple[int, int], frame_format: str, split: bool = False
) -> dict[str, tuple[list[TensorSpec], list[TensorSpec]]]:
    """Inputs and outputs of the graphs, with the named dynamic axes; ``split`` adds the two
    parts of the video graph (``level_shapes`` runs the backbone once for their shapes)."""
    height, width = size
    dim, queries = model.config.hidden_dim, model.config.num_queries
    frames = (
        TensorSpec("frames", "uint8", ("T", height, width, 3))
        if frame_format == "uint8-nhwc"
        else TensorSpec("frames", "float32", ("T", 3, height, width))
    )
    mask_h, mask_w = math.ceil(height / 4), math.ceil(width / 4)
    text_features = TensorSpec("text_features", "float32", ("E", "L", dim))
    attention_mask = TensorSpec("attention_mask", "int64", ("E", "L"))
    predictions = [
        TensorSpec("pred_logits", "float32", ("E", "T", queries)),
        TensorSpec("pred_boxes", "float32", ("E", "T", queries, 4)),
        TensorSpec("pred_masks", "float32", ("E", "T", queries, mask_h, mask_w)),
    ]
    specs = {
        "text_encoder": (
            [TensorSpec("input_ids", "int64", ("E", "L")), attention_mask],
            [text_features],
        ),
        "video": ([frames, text_features, attention_mask], predictions),
    }
    if split:
        shapes = level_shapes(model, size)
        # The names the manifest's schema expects of the split graphs (level0 is the finest).
        levels = [TensorSpec(name, "float32", ("T", *shape))
                  for name, shape in zip(LEVELS, shapes)]  # fmt: skip
        specs["video_encoder"] = ([frames], levels)
        specs["video_decoder"] = ([*levels, text_features, attention_mask], predictions)
    return specs
