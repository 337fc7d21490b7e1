"""Prediction heads (paper Sec. III-C, Eq. 7 and 9): dynamic kernels, reference head, JSC ψ."""

from __future__ import annotations

import torch
from torch import nn

from .layers import MLP


class PredictionHeads(nn.Module):
    """Per query and frame: a referred-object logit, a box, and a mask from a dynamic kernel."""

    def __init__(self, dim: int, mask_dim: int, mask_pool: bool = False) -> None:
        super().__init__()
        if mask_pool:  # scores [query ; F_seg pooled under the query's mask]
            self.pool_proj = nn.Linear(mask_dim, dim)
            self.class_head = MLP(dim, dim, 1, num_layers=2)
        else:
            self.pool_proj = None
            self.class_head = nn.Linear(dim, 1)  # N_class = 1: "is this the referred object"
        self.box_head = MLP(dim, dim, 4, num_layers=3)
        self.kernel_head = MLP(dim, dim, mask_dim, num_layers=2)  # G_kernel, a 2-layer MLP

    def forward(self, queries: torch.Tensor, seg_features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Queries (B, T, N, C) and F_seg (B, T, D, h, w) -> logits, boxes, mask logits."""
        kernels = self.kernel_head(queries)  # (B, T, N, D)
        # Eq. 9 before upsampling: each frame's kernels applied to that frame's F_seg, as one
        # batched MatMul (btnd,btd(hw)->btn(hw)) rather than a grouped conv or an Einsum: shapes
        # stay dynamic in export, TensorRT runs it as a GEMM and INT8 calibration can quantise it.
        flat = seg_features.flatten(-2)  # (B, T, D, hw)
        masks = kernels @ flat  # (B, T, N, hw)
        class_input = queries
        if self.pool_proj is not None:
            # Soft mask pooling, detached so that the class loss does not bend the masks.
            weights = masks.detach().sigmoid()
            pooled = (weights @ flat.transpose(-1, -2)) / (weights.sum(-1, keepdim=True) + 1.0)
            class_input = queries + self.pool_proj(pooled)
        masks = masks.unflatten(-1, seg_features.shape[-2:])
        return {
            "pred_logits": self.class_head(class_input).squeeze(-1),  # (B, T, N)
            "pred_boxes": self.box_head(queries).sigmoid(),  # (B, T, N, 4) cx, cy, w, h
            "pred_masks": masks,  # (B, T, N, h, w)
        }


class JointSemantics(nn.Module):
    """Eq. 7: s_{v&t} = ψ([GAP(F_v^K), GAP(F_t)]), ψ a linear layer on the concatenation."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.psi = nn.Linear(2 * dim, dim)

    def forward(self, video_gap: torch.Tensor, text_gap: torch.Tensor) -> torch.Tensor:
        return self.psi(torch.cat((video_gap, text_gap), dim=-1))  # (B, C)
