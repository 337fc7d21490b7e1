"""The two exported graphs, as thin ``nn.Module`` wrappers around a trained ProxyFormer.

- ``TextGraph``: ``input_ids [E, L]`` int64, ``attention_mask [E, L]`` int64
  -> ``text_features [E, L, C]`` (RoBERTa and the resizer to C).
- ``VideoGraph``: the frames of one video, ``text_features [E, L, C]`` and
  ``attention_mask [E, L]`` -> ``pred_logits [E, T, N]``, ``pred_boxes [E, T, N, 4]``,
  ``pred_masks [E, T, N, h, w]`` (stride-4 mask logits, padding cropped). The backbone runs
  once for the video; its levels are broadcast to the E expressions before the
  text-dependent part (text fusion, CMIE, FPN, decoder, heads of the last layer only).

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

TEXT_INPUTS = ("input_ids", "attention_mask")
TEXT_OUTPUTS = ("text_features",)
VIDEO_INPUTS = ("frames", "text_features", "attention_mask")
VIDEO_OUTPUTS = ("pred_logits", "pred_boxes", "pred_masks")


class TextGraph(nn.Module):
    def __init__(self, model: ProxyFormer) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids, attention_mask)


class VideoGraph(nn.Module):
    def __init__(self, model: ProxyFormer, frame_format: str = "uint8-nhwc") -> None:
        super().__init__()
        if frame_format not in FRAME_FORMATS:
            raise ValueError(f"frame_format must be one of {FRAME_FORMATS}, got {frame_format!r}")
        self.model = model
        self.frame_format = frame_format

    def forward(
        self, frames: torch.Tensor, text_features: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.frame_format == "uint8-nhwc":
            # (T, H, W, 3) uint8 -> (T, 3, H, W) normalised float, inside the graph.
            frames = self.model.normalize(frames.permute(0, 3, 1, 2))
        height, width = frames.shape[-2:]
        levels = self.model.encode_frames(frames[None])  # one video: B = 1
        expressions = text_features.shape[0]
        levels = [level.expand(expressions, -1, -1, -1, -1) for level in levels]
        out = self.model.decode(
            levels, text_features, attention_mask, (int(height), int(width)), aux=False
        )
        return out["pred_logits"], out["pred_boxes"], out["pred_masks"]


def graph_specs(
    model: ProxyFormer, size: tuple[int, int], frame_format: str
) -> dict[str, tuple[list[TensorSpec], list[TensorSpec]]]:
    """Inputs and outputs of both graphs, with the named dynamic axes."""
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
    return {
        "text_encoder": (
            [TensorSpec("input_ids", "int64", ("E", "L")), attention_mask],
            [text_features],
        ),
        "video": (
            [frames, text_features, attention_mask],
            [
                TensorSpec("pred_logits", "float32", ("E", "T", queries)),
                TensorSpec("pred_boxes", "float32", ("E", "T", queries, 4)),
                TensorSpec("pred_masks", "float32", ("E", "T", queries, mask_h, mask_w)),
            ],
        ),
    }
