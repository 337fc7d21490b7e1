"""Inference post-processing in PyTorch: from raw outputs to one mask track per expression.

Per expression the query is chosen by the runtime's rule (``runtime.selection``: the best
frame-averaged class probability), and its mask logits are upsampled to the model input size
(Eq. 9), thresholded at 0.5 after a sigmoid, and resized to the original video size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from runtime.selection import select_queries


def upsample_mask_logits(
    mask_logits: torch.Tensor, input_size: tuple[int, int], output_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Eq. 9: stride-4 mask logits (K, h, w) -> (K, H, W) at the input size (bilinear, padding
    cropped), then resized to ``output_size`` when given."""
    full = F.interpolate(
        mask_logits[:, None].float(),
        size=(mask_logits.shape[-2] * 4, mask_logits.shape[-1] * 4),
        mode="bilinear",
        align_corners=False,
    )[..., : input_size[0], : input_size[1]]
    if output_size is not None and tuple(output_size) != tuple(input_size):
        full = F.interpolate(full, size=tuple(output_size), mode="bilinear", align_corners=False)
    return full[:, 0]


def select_masks(
    outputs: dict,
    input_size: tuple[int, int],
    output_size: tuple[int, int] | None = None,
    threshold: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best query per expression.

    Args:
        outputs: the model's ``pred_logits`` (E, T, N) and ``pred_masks`` (E, T, N, h, w).
        input_size: (H, W) of the frames given to the model.
        output_size: (H0, W0) of the original video; defaults to ``input_size``.
        threshold: probability above which a pixel is foreground.
    Returns:
        masks (E, T, H0, W0) bool, scores (E,) the chosen query's mean probability,
        and the chosen query indices (E,).
    """
    logits, mask_logits = outputs["pred_logits"], outputs["pred_masks"]
    chosen_queries, chosen_scores = select_queries(logits.detach().float().cpu().numpy())
    best = torch.from_numpy(chosen_queries).to(mask_logits.device)
    best_scores = torch.from_numpy(chosen_scores).float().to(logits.device)
    index = best[:, None, None, None, None].expand(-1, mask_logits.shape[1], 1, *mask_logits.shape[-2:])
    chosen = mask_logits.gather(2, index).squeeze(2)  # (E, T, h, w)
    full = upsample_mask_logits(chosen.flatten(0, 1), input_size, output_size)[:, None]
    masks = full.sigmoid() > threshold
    return masks[:, 0].unflatten(0, chosen.shape[:2]), best_scores, best
