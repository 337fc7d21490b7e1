"""Prediction heads (paper Sec. III-C, Eq. 7 and 9): dynamic kernels, reference head, JSC ψ."""

from __future__ import annotations

import torch
from torch import nn

from .layers import MLP


class PredictionHeads(nn.Module):
    """Per query and frame: a referred-object logit, a box, and a mask from a dynamic kernel.

    The class path (``class_inputs`` -> ``class_logits``) is split out so that an extension can
    widen what it reads, and so that stage-2 training can run it alone on cached inputs.
    """

    def __init__(self, dim: int, mask_dim: int) -> None:
        super().__init__()
        self.class_head = nn.Linear(dim, 1)  # N_class = 1: "is this the referred object"
        self.box_head = MLP(dim, dim, 4, num_layers=3)
        self.kernel_head = MLP(dim, dim, mask_dim, num_layers=2)  # G_kernel, a 2-layer MLP

    @property
    def reads_masks(self) -> bool:
        """Whether the class path reads the predicted masks (never in the paper)."""
        return False

    def class_inputs(
        self, mask_logits: torch.Tensor, seg_features: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """What the class path reads besides the queries and the text: nothing in the paper."""
        return {}

    def class_logits(self, queries: torch.Tensor, **context: torch.Tensor | None) -> torch.Tensor:
        """The class path: queries (B, T, N, C) -> logits (B, T, N). The paper's class head reads
        each query alone; ``context`` (an extension's pooled F_seg, mask geometry, text) is
        not read."""
        return self.class_head(queries).squeeze(-1)

    def forward(
        self,
        queries: torch.Tensor,
        seg_features: torch.Tensor,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        keep_class_inputs: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Queries (B, T, N, C) and F_seg (B, T, D, h, w) -> logits, boxes, mask logits.

        ``text`` (B, L, C) and ``text_mask`` (B, L) reach the class path of an extension that
        reads them. ``keep_class_inputs`` also returns the class path's inputs,
        ``class_queries`` and those of ``class_inputs`` prefixed ``class_``.
        """
        kernels = self.kernel_head(queries)  # (B, T, N, D)
        # Eq. 9 before upsampling: each frame's kernels applied to that frame's F_seg, as one
        # batched MatMul (btnd,btd(hw)->btn(hw)) rather than a grouped conv or an Einsum: shapes
        # stay dynamic in export, TensorRT runs it as a GEMM and INT8 calibration can quantise it.
        masks = kernels @ seg_features.flatten(-2)  # (B, T, N, hw)
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
