"""Losses on constructed cases: a perfect prediction costs almost nothing, a swapped one a lot."""

import torch

from training.losses import (
    LossWeights,
    RVOSCriterion,
    dice_loss,
    mask_iou,
    quality_focal_loss,
)


def make_targets(batch=2, frames=3, size=(32, 48)):
    targets = []
    for b in range(batch):
        masks = torch.zeros(frames, *size, dtype=torch.bool)
        top, left = 4 + 8 * b, 6 + 10 * b
        masks[:, top : top + 12, left : left + 16] = True
        h, w = size
        box = torch.tensor([(left + 8) / w, (top + 6) / h, 16 / w, 12 / h])
        targets.append({"masks": masks, "boxes": box.expand(frames, 4).clone(), "valid": torch.ones(frames, dtype=torch.bool)})
    return targets


def prediction_for(targets, positive, queries=5, dim=16):
    """Outputs whose query ``positive[b]`` reproduces video b's target exactly."""
    batch, frames = len(targets), targets[0]["masks"].shape[0]
    h, w = targets[0]["masks"].shape[-2:]
    logits = torch.full((batch, frames, queries), -8.0)
    boxes = torch.full((batch, frames, queries, 4), 0.5)
    masks = torch.full((batch, frames, queries, h // 4, w // 4), -20.0)
    for b, target in enumerate(targets):
        n = positive[b]
        logits[b, :, n] = 8.0
        boxes[b, :, n] = target["boxes"]
        small = target["masks"].float()[:, None]
        small = torch.nn.functional.avg_pool2d(small, 4)[:, 0]
        masks[b, :, n] = (small * 2 - 1) * 20.0
    joint = torch.randn(batch, dim)
    video_queries = torch.randn(batch, queries, dim)
    for b in range(batch):
        video_queries[b, positive[b]] = joint[b] * 3  # aligned with its own video-text pair
    return {"pred_logits": logits, "pred_boxes": boxes, "pred_masks": masks,
            "video_queries": video_queries, "joint_semantics": joint, "aux_outputs": []}


def test_matching_finds_the_query_that_fits():
    targets = make_targets()
    outputs = prediction_for(targets, positive=[3, 1])
    assert RVOSCriterion().match(outputs, targets).tolist() == [3, 1]


def test_perfect_prediction_costs_almost_nothing_and_a_swapped_one_a_lot():
    criterion = RVOSCriterion()
    targets = make_targets()
    perfect = criterion(prediction_for(targets, [3, 1]), targets)
    for name in ("cls", "l1", "giou", "focal"):
        assert perfect[name] < 0.02, (name, perfect[name])
    assert perfect["dice"] < 0.05  # stride-4 masks upsampled bilinearly blur the edges a little
    swapped = criterion(prediction_for(targets[::-1], [3, 1]), targets)
    assert swapped["loss"] > 10 * perfect["loss"]
    assert swapped["l1"] > 0.2 and swapped["dice"] > 0.5


def test_jsc_prefers_aligned_pairs():
    criterion = RVOSCriterion()
    targets = make_targets(batch=4)
    outputs = prediction_for(targets, [0, 1, 2, 3])
    aligned = criterion(outputs, targets)["jsc"]
    outputs["joint_semantics"] = outputs["joint_semantics"][[1, 2, 3, 0]]
    misaligned = criterion(outputs, targets)["jsc"]
    assert aligned < 0.1 < misaligned


def test_invisible_frames_carry_no_box_loss():
    criterion = RVOSCriterion()
    targets = make_targets(batch=1)
    outputs = prediction_for(targets, [2])
    targets[0]["valid"][1] = False
    targets[0]["masks"][1] = False
    outputs["pred_boxes"][0, 1, 2] = torch.tensor([0.9, 0.9, 0.1, 0.1])  # wrong, but not visible
    costs = criterion.query_costs(outputs, targets[0], 0)
    assert costs["l1"][2] < 1e-6 and costs["giou"][2] < 1e-6


def test_dice_loss_bounds():
    target = torch.zeros(1, 8, 8)
    target[0, 2:6, 2:6] = 1
    assert dice_loss(target * 40 - 20, target) < 0.01
    assert dice_loss(-(target * 40 - 20), target) > 0.9


def test_mask_iou_against_counted_pixels():
    """Both paths (one target per frame against N masks, and same-shaped masks) against IoUs
    counted pixel by pixel; a frame where both masks are empty counts 1, an empty prediction of
    a present object 0."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 9, 11)
    logits[0, 0] = -1.0  # every mask of this frame empty ...
    targets = torch.rand(2, 3, 1, 9, 11) > 0.6
    targets[0, 0] = False  # ... and its target too
    targets[1, 2] = True
    logits[1, 2, 0] = -1.0  # nothing predicted for a full target
    expected = torch.empty(2, 3, 4)
    for index in torch.cartesian_prod(*(torch.arange(n) for n in expected.shape)).tolist():
        e, t, n = index
        pred, gt = logits[e, t, n] > 0, targets[e, t, 0]
        union = int((pred | gt).sum())
        expected[e, t, n] = 1.0 if union == 0 else int((pred & gt).sum()) / union
    assert expected[0, 0].eq(1).all() and expected[1, 2, 0] == 0
    assert torch.allclose(mask_iou(logits, targets), expected, atol=1e-6)
    assert torch.allclose(mask_iou(logits, targets.expand_as(logits)), expected, atol=1e-6)
    assert torch.allclose(mask_iou(logits[:, :, :1], targets), expected[:, :, :1], atol=1e-6)


def test_quality_focal_loss_is_smallest_at_the_target():
    target = torch.tensor([0.0, 0.3, 0.8, 1.0])
    at_target = quality_focal_loss(torch.logit(target.clamp(1e-4, 1 - 1e-4)), target)
    off_target = quality_focal_loss(torch.logit(torch.tensor([0.6, 0.9, 0.2, 0.1])), target)
    assert bool((off_target > at_target + 0.05).all())
    assert float(at_target[0]) < 1e-4 and float(at_target[3]) < 1e-4


def test_iou_class_target_scores_each_query_by_its_own_mask():
    targets = make_targets()
    outputs = prediction_for(targets, positive=[3, 1])
    # Query 0 of video 0 covers the object's left half: its target is IoU ~0.5, not 0.
    half = targets[0]["masks"].float().clone()
    half[..., 14:] = 0
    small = torch.nn.functional.avg_pool2d(half[:, None], 4)[:, 0]
    outputs["pred_masks"][0, :, 0] = (small * 2 - 1) * 20.0
    costs = RVOSCriterion().query_costs(outputs, targets[0], 0)
    assert costs["iou"].shape == (3, 5)
    # (stride-4 masks upsampled bilinearly: the object's unaligned edges cost a few pixels)
    assert bool((costs["iou"][:, 3] > 0.9).all())
    assert bool(((costs["iou"][:, 0] > 0.4) & (costs["iou"][:, 0] < 0.6)).all())
    assert float(costs["iou"][:, [1, 2, 4]].max()) == 0.0
    criterion = RVOSCriterion(LossWeights(cls_target="iou"))
    # Scores equal to the IoU give a lower class loss than the one-hot "matched" scores.
    outputs["pred_logits"][0, :, 0] = 0.0  # p = 0.5 = its IoU
    calibrated = criterion(outputs, targets)["cls"]
    outputs["pred_logits"][0, :, 0] = -8.0
    one_hot = criterion(outputs, targets)["cls"]
    assert calibrated < one_hot


def test_unknown_class_target_is_refused():
    import pytest

    with pytest.raises(ValueError, match="cls_target"):
        LossWeights(cls_target="soft")


def test_losses_are_the_matched_entries_of_the_costs_and_reach_only_the_matched_query():
    torch.manual_seed(0)
    targets = make_targets()
    outputs = prediction_for(targets, positive=[3, 1])
    for key in ("pred_logits", "pred_boxes", "pred_masks"):  # a noisy prediction, with grad
        noisy = outputs[key] + 0.5 * torch.randn_like(outputs[key])
        outputs[key] = (noisy.clamp(0.01, 0.99) if key == "pred_boxes" else noisy).requires_grad_()
    criterion = RVOSCriterion(LossWeights(cls_target="iou"))
    losses = criterion(outputs, targets)
    assert losses["matched"].tolist() == [3, 1]
    # The losses computed for the matched query alone equal the entries of the all-query costs.
    costs = [criterion.query_costs(outputs, t, b) for b, t in enumerate(targets)]
    for name in ("l1", "giou", "dice", "focal"):
        expected = (costs[0][name][3] + costs[1][name][1]) / 2
        torch.testing.assert_close(losses[name], expected, rtol=1e-5, atol=1e-6)
    losses["loss"].backward()
    grad = outputs["pred_masks"].grad  # (B, T, N, h, w): nonzero on the matched query only
    assert float(grad[0, :, 3].abs().sum()) > 0 and float(grad[1, :, 1].abs().sum()) > 0
    others = [q for q in range(5) if q != 3], [q for q in range(5) if q != 1]
    assert float(grad[0][:, others[0]].abs().sum()) == 0.0
    assert float(grad[1][:, others[1]].abs().sum()) == 0.0
    assert float(outputs["pred_boxes"].grad[0, :, 3].abs().sum()) > 0
