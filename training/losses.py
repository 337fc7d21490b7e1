"""Losses of ProxyFormer (paper Sec. III-B/C, Eq. 6-11).

Only one object is referred to in a video, so matching is an argmin, not a Hungarian
assignment: for every video the query whose whole trajectory (all frames) costs least under
Eq. 10 is the positive,

    cost = 2 focal_cls + 5 L1 + 2 GIoU + 5 dice + 2 mask_focal          (weights of Sec. IV-B)

and the same terms, on the positive query, are the loss. Every decoder layer's auxiliary
output is matched and supervised the same way. The JSC loss (Eq. 8) is a symmetric
contrastive loss over the videos of a batch between the positive video-level query q (the
temporally pooled proxy of the matched index, Eq. 6) and the joint semantics s_{v&t} (Eq. 7).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss


@dataclass(frozen=True)
class LossWeights:
    cls: float = 2.0
    l1: float = 5.0
    giou: float = 2.0
    dice: float = 5.0
    focal: float = 2.0
    jsc: float = 5.0
    jsc_temperature: float = 0.07  # q and s are L2-normalised; see RVOSCriterion.jsc_loss
    aux: bool = True
    # "matched": the matched query is the positive on the frames where the object is visible
    # (the paper). "iou": every query's target is its own mask IoU on those frames, trained with
    # the quality focal loss (GFL), so the score ranks queries by the mask they would return.
    cls_target: str = "matched"

    def __post_init__(self) -> None:
        if self.cls_target not in ("matched", "iou"):
            raise ValueError(f"cls_target must be 'matched' or 'iou', got {self.cls_target!r}")


def outputs_to_float(outputs):
    """``outputs`` with every tensor in float32 (the losses' precision under AMP)."""
    if torch.is_tensor(outputs):
        return outputs.float()
    if isinstance(outputs, dict):
        return {k: outputs_to_float(v) for k, v in outputs.items()}
    if isinstance(outputs, list):
        return [outputs_to_float(v) for v in outputs]
    return outputs


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-item dice loss over the last two dims: (..., H, W) -> (...)."""
    probs = logits.sigmoid().flatten(-2)
    targets = targets.flatten(-2)
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


def quality_focal_loss(logits: torch.Tensor, targets: torch.Tensor, beta: float = 2.0):
    """GFL's quality focal loss: BCE against a soft target in [0, 1], scaled by |t - p|^beta."""
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return bce * (targets - prob).abs().pow(beta)


def mask_iou(mask_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of the binary masks (logit > 0) against boolean targets over the last two dims;
    a frame where both are empty counts 1, as the J of the DAVIS protocol does. Targets of
    shape (..., 1, H, W) against (..., N, H, W) masks take one matrix product per frame."""
    pred = (mask_logits > 0).flatten(-2).float()  # counts below 2**24 are exact in float32
    gt = (targets > 0.5).flatten(-2).float()
    if gt.shape[-2] == 1 and pred.shape[-2] != 1:
        inter = (pred @ gt.transpose(-1, -2)).squeeze(-1)
    else:
        inter = (pred * gt).sum(-1)
    union = pred.sum(-1) + gt.sum(-1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def iou_class_loss(
    logits: torch.Tensor, ious: torch.Tensor, visible: torch.Tensor, annotated: torch.Tensor
) -> torch.Tensor:
    """The "iou" class target (``LossWeights.cls_target``): the quality focal loss of each
    query's logits (..., T, N) against its mask IoU (..., T, N) on the frames where the object
    is ``visible`` (..., T) and 0 elsewhere, over the ``annotated`` frames (..., T), summed and
    divided by the number of visible frames -> (...)."""
    labels = ious * visible[..., None]
    per_item = quality_focal_loss(logits, labels) * annotated[..., None]
    return per_item.sum((-1, -2)) / visible.sum(-1).clamp(min=1)


def upsample_masks(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Eq. 9's bilinear upsampling of (..., h, w) mask logits to the target size (H, W)."""
    lead = mask_logits.shape[:-2]
    flat = mask_logits.reshape(-1, 1, *mask_logits.shape[-2:])
    return F.interpolate(flat, size=size, mode="bilinear", align_corners=False).reshape(*lead, *size)


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _annotated(target: dict, like: torch.Tensor) -> torch.Tensor:
    """(T,) float: 1 for frames with an annotation (all of them unless told otherwise)."""
    if "annotated" in target:
        return target["annotated"].to(like)
    return torch.ones(like.shape[0], dtype=like.dtype, device=like.device)


class RVOSCriterion(torch.nn.Module):
    """Matching (Eq. 10) and the total loss (Eq. 11) for a batch of videos.

    ``targets`` holds, per video: ``masks`` (T, H, W) bool/float at the input resolution,
    ``boxes`` (T, 4) normalised cx, cy, w, h, ``valid`` (T,) bool (object visible), and
    optionally ``annotated`` (T,) bool: frames without annotation (A2D's neighbours of the
    annotated frame) contribute to no term.
    """

    def __init__(self, weights: LossWeights = LossWeights()) -> None:
        super().__init__()
        self.weights = weights

    # -- per-query terms over a whole trajectory -------------------------------------------

    def query_costs(
        self, pred: dict, target: dict, b: int, query: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Each loss term for every query of video ``b``: a dict of (N,) tensors; with
        ``query`` (a (1,) long tensor) for that query alone, a dict of (1,) tensors."""
        logits = pred["pred_logits"][b]  # (T, N)
        boxes = pred["pred_boxes"][b]  # (T, N, 4)
        masks = pred["pred_masks"][b]  # (T, N, h, w)
        if query is not None:
            logits, boxes, masks = (x.index_select(1, query) for x in (logits, boxes, masks))
        annotated = _annotated(target, logits)  # (T,) float
        n_annotated = annotated.sum().clamp(min=1)
        validf = target["valid"].to(logits) * annotated
        gt_masks = target["masks"].to(masks.dtype)  # (T, H, W)
        num_frames, num_queries = logits.shape
        n_valid = validf.sum().clamp(min=1)

        # Class: the query is "referred" on frames where the object is visible, not elsewhere.
        cls_target = validf[:, None].expand(num_frames, num_queries)
        cls = sigmoid_focal_loss(logits, cls_target, reduction="none")
        cls = (cls * annotated[:, None]).sum(0) / n_annotated  # (N,)

        gt_boxes = target["boxes"].to(boxes.dtype)[:, None].expand_as(boxes)
        l1 = ((boxes - gt_boxes).abs().sum(-1) * validf[:, None]).sum(0) / n_valid
        giou = generalized_box_iou_loss(
            box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(gt_boxes), reduction="none"
        )
        giou = (giou * validf[:, None]).sum(0) / n_valid

        full = upsample_masks(masks, gt_masks.shape[-2:])  # (T, N, H, W)
        gt = gt_masks[:, None].expand_as(full)
        dice = (dice_loss(full, gt) * annotated[:, None]).sum(0) / n_annotated
        focal = sigmoid_focal_loss(full, gt, reduction="none").flatten(-2).mean(-1)
        focal = (focal * annotated[:, None]).sum(0) / n_annotated
        with torch.no_grad():  # (T, N) IoU of each query's binary mask, the "iou" class target
            iou = mask_iou(full, gt)
        return {"cls": cls, "l1": l1, "giou": giou, "dice": dice, "focal": focal, "iou": iou}

    def weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        w = self.weights
        return (
            w.cls * terms["cls"] + w.l1 * terms["l1"] + w.giou * terms["giou"]
            + w.dice * terms["dice"] + w.focal * terms["focal"]
        )  # fmt: skip

    # -- matching and losses ---------------------------------------------------------------

    @torch.no_grad()
    def match(self, pred: dict, targets: list[dict]) -> torch.Tensor:
        """Eq. 10: index of the positive query of every video, (B,) long."""
        return torch.stack(
            [self.weighted(self.query_costs(pred, t, b)).argmin() for b, t in enumerate(targets)]
        )

    def prediction_losses(self, pred: dict, targets: list[dict]) -> tuple[dict, torch.Tensor]:
        # The costs of every query, without gradients, give the match (Eq. 10) and the IoU
        # class targets; the loss terms are then computed again, with gradients, for the
        # matched query alone: the same values, without back-propagating through N - 1
        # full-resolution mask terms that do not enter the loss.
        with torch.no_grad():
            per_video = [self.query_costs(pred, t, b) for b, t in enumerate(targets)]
            matched = torch.stack([self.weighted(costs).argmin() for costs in per_video])
        chosen = [
            self.query_costs(pred, t, b, matched[b : b + 1]) for b, t in enumerate(targets)
        ]
        losses = {
            name: torch.cat([terms[name] for terms in chosen]).mean()
            for name in ("l1", "giou", "dice", "focal")
        }
        # The class loss covers every query: the unmatched ones are pushed to "not referred".
        cls = []
        for b, target in enumerate(targets):
            logits = pred["pred_logits"][b]
            annotated = _annotated(target, logits)
            visible = target["valid"].to(logits) * annotated
            n_pos = visible.sum().clamp(min=1)
            if self.weights.cls_target == "iou":
                cls.append(iou_class_loss(logits, per_video[b]["iou"], visible, annotated))
                continue
            labels = torch.zeros_like(logits)
            labels[:, matched[b]] = visible
            per_item = sigmoid_focal_loss(logits, labels, reduction="none") * annotated[:, None]
            cls.append(per_item.sum() / n_pos)
        losses["cls"] = torch.stack(cls).mean()
        return losses, matched

    def jsc_loss(self, video_queries: torch.Tensor, joint: torch.Tensor, matched: torch.Tensor):
        """Eq. 8 between q = Q_v[b, matched[b]] and s_{v&t}[b] over the videos of the batch.

        Both are L2-normalised and the dot products divided by a temperature (as CLIP does):
        raw dot products of 256-d vectors saturate the softmax at initialisation. Under DDP
        the batch is the global one: q and s are gathered from every process (differentiably),
        so one clip per GPU still has negatives.
        """
        q = video_queries[torch.arange(len(matched), device=matched.device), matched]  # (B, C)
        x = F.normalize(q, dim=-1)
        y = F.normalize(joint, dim=-1)
        offset = 0
        if _world_size() > 1:
            import torch.distributed as dist
            from torch.distributed.nn.functional import all_gather

            offset = dist.get_rank() * len(x)  # every rank holds the same number of videos
            x_all, y_all = torch.cat(all_gather(x)), torch.cat(all_gather(y))
        else:
            x_all, y_all = x, y
        labels = torch.arange(len(x), device=x.device) + offset
        temperature = self.weights.jsc_temperature
        q_to_s = F.cross_entropy(x @ y_all.t() / temperature, labels)  # local q against all s
        s_to_q = F.cross_entropy(y @ x_all.t() / temperature, labels)  # local s against all q
        return (q_to_s + s_to_q) / 2

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        """All loss terms, their weighted sum as ``loss`` and the matched indices as ``matched``."""
        if len(targets) != outputs["pred_logits"].shape[0]:
            raise ValueError(
                f"{len(targets)} targets for a batch of {outputs['pred_logits'].shape[0]} videos"
            )
        losses, matched = self.prediction_losses(outputs, targets)
        total = self.weighted(losses)
        if self.weights.aux:
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                aux_losses, _ = self.prediction_losses(aux, targets)
                total = total + self.weighted(aux_losses)
                losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        if self.weights.jsc > 0 and len(targets) * _world_size() > 1:
            losses["jsc"] = self.jsc_loss(outputs["video_queries"], outputs["joint_semantics"], matched)
            total = total + self.weights.jsc * losses["jsc"]
        losses["loss"] = total
        losses["matched"] = matched
        return losses

    def describe(self) -> dict:
        return asdict(self.weights)
