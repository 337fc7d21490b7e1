"""Segmentation metrics.

Ref-YouTube-VOS / Ref-DAVIS17 (DAVIS 2017 protocol): region similarity J (IoU) and contour
accuracy F (boundary F-measure: one-pixel boundary maps, matched within a tolerance of
ceil(0.008 * image diagonal) pixels by dilation with a disk), per frame, averaged per
expression and then over expressions; J&F is their mean.

``void`` (optional, a boolean map of the frame) excludes pixels from both measures as the
official DAVIS 2017 code does (github.com/davisvideochallenge/davis2017-evaluation,
davis2017/metrics.py): J counts intersection and union outside the void only; F takes the
boundaries of both masks after removing their void pixels. The Ref-DAVIS17 protocol
(training/davis.py) passes the annotations' 255 pixels; see docs/evaluation.md.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def region_similarity(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float:
    """J: intersection over union of two boolean masks, outside ``void`` pixels; 1 when the
    union (outside the void) is empty."""
    gt, pred = gt.astype(bool), pred.astype(bool)
    _check_void(gt, void)
    keep = True if void is None else ~void.astype(bool)
    union = (np.logical_or(gt, pred) & keep).sum()
    if union == 0:
        return 1.0
    return float((np.logical_and(gt, pred) & keep).sum() / union)


def _check_void(gt: np.ndarray, void: np.ndarray | None) -> None:
    if void is not None and void.shape != gt.shape:
        raise ValueError(f"void map is {void.shape}, the masks {gt.shape}")


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary of a boolean mask (DAVIS's seg2bmap at the mask's own size):
    a pixel is on the boundary if it differs from its right, bottom or bottom-right neighbour."""
    mask = mask.astype(bool)
    east = np.zeros_like(mask)
    south = np.zeros_like(mask)
    south_east = np.zeros_like(mask)
    east[:, :-1] = mask[:, 1:]
    south[:-1, :] = mask[1:, :]
    south_east[:-1, :-1] = mask[1:, 1:]
    boundary = (mask ^ east) | (mask ^ south) | (mask ^ south_east)
    boundary[-1, :] = mask[-1, :] ^ east[-1, :]
    boundary[:, -1] = mask[:, -1] ^ south[:, -1]
    boundary[-1, -1] = False
    return boundary


def disk(radius: int) -> np.ndarray:
    """A boolean disk structuring element of the given radius (skimage.morphology.disk)."""
    ys, xs = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return xs * xs + ys * ys <= radius * radius


def boundary_tolerance(shape: tuple[int, int], bound_th: float = 0.008) -> int:
    """Tolerance in pixels: ``bound_th`` below 1 is a fraction of the image diagonal."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(*shape)))


def contour_accuracy(
    gt: np.ndarray, pred: np.ndarray, bound_th: float = 0.008, void: np.ndarray | None = None
) -> float:
    """F: boundary F-measure of ``pred`` against ``gt`` (DAVIS 2017's f_measure); ``void``
    pixels are removed from both masks before their boundaries are taken, as DAVIS does."""
    if gt.shape != pred.shape:
        raise ValueError(f"masks differ in shape: gt {gt.shape}, prediction {pred.shape}")
    _check_void(gt, void)
    return boundary_f(boundaries(gt, void, bound_th), boundaries(pred, void, bound_th))


def boundaries(
    mask: np.ndarray, void: np.ndarray | None = None, bound_th: float = 0.008
) -> tuple[np.ndarray, np.ndarray]:
    """A mask's boundary map (void pixels removed first) and that map dilated by the tolerance
    disk: the two things F needs of each mask, computed once when a mask meets many others."""
    mask = mask.astype(bool)
    if void is not None:
        mask = mask & ~void.astype(bool)
    boundary = boundary_map(mask)
    return boundary, ndimage.binary_dilation(boundary, structure=disk(boundary_tolerance(mask.shape, bound_th)))


def boundary_f(gt: tuple[np.ndarray, np.ndarray], pred: tuple[np.ndarray, np.ndarray]) -> float:
    """F from the ``boundaries`` of the annotation and of the prediction."""
    (gt_boundary, gt_dilated), (pred_boundary, pred_dilated) = gt, pred
    n_pred, n_gt = pred_boundary.sum(), gt_boundary.sum()
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0  # precision or recall is 0 and the other 1
    precision = (pred_boundary & gt_dilated).sum() / n_pred
    recall = (gt_boundary & pred_dilated).sum() / n_gt
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def frame_jf(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, bound_th: float = 0.008
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F (each (T,)) of (T, H, W) masks, ``void`` (T, H, W) excluded if given."""
    if gt.shape != pred.shape:
        raise ValueError(f"masks differ in shape: gt {gt.shape}, prediction {pred.shape}")
    _check_void(gt, void)
    voids = [None] * len(gt) if void is None else void
    j = [region_similarity(g, p, v) for g, p, v in zip(gt, pred, voids)]
    f = [contour_accuracy(g, p, bound_th, v) for g, p, v in zip(gt, pred, voids)]
    return np.asarray(j, float), np.asarray(f, float)


def video_jf(gt: np.ndarray, pred: np.ndarray, bound_th: float = 0.008) -> tuple[float, float]:
    """Mean J and mean F over the frames of (T, H, W) masks."""
    j, f = frame_jf(gt, pred, bound_th=bound_th)
    return float(np.mean(j)), float(np.mean(f))


def summarize_jf(per_expression: list[dict]) -> dict:
    """Overall J, F and J&F (means over expressions) from rows with keys ``J`` and ``F``."""
    if not per_expression:
        raise ValueError("no expressions evaluated")
    j = float(np.mean([row["J"] for row in per_expression]))
    f = float(np.mean([row["F"] for row in per_expression]))
    return {"J": j, "F": f, "J&F": (j + f) / 2, "expressions": len(per_expression)}


# -- A2D-Sentences / JHMDB-Sentences ---------------------------------------------------------

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def frame_metrics(ious: list[float], intersections: list[int], unions: list[int]) -> dict:
    """P@0.5..0.9, overall IoU (sum I / sum U) and mean IoU over annotated frames."""
    if not ious:
        raise ValueError("no frames evaluated")
    ious_array = np.asarray(ious)
    result = {f"P@{t}": float((ious_array > t).mean()) for t in PRECISION_THRESHOLDS}
    result["overall_iou"] = float(np.sum(intersections) / max(np.sum(unions), 1))
    result["mean_iou"] = float(ious_array.mean())
    result["frames"] = len(ious)
    return result


def mask_average_precision(
    ground_truth: list[np.ndarray], predictions: list[tuple[np.ndarray, np.ndarray]]
) -> dict:
    """COCO mask AP (pycocotools) with one referred object per frame.

    Args:
        ground_truth: per frame, the (H, W) bool mask of the referred object.
        predictions: per frame, (masks (N, H, W) bool, scores (N,)) for all N queries.
    Returns:
        ``mAP`` (0.5:0.95), ``AP50``, ``AP75``.
    """
    import contextlib
    import io

    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def rle(mask: np.ndarray) -> dict:
        encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        encoded["counts"] = encoded["counts"].decode("ascii")
        return encoded

    images, annotations, detections = [], [], []
    for image_id, (gt, (masks, scores)) in enumerate(zip(ground_truth, predictions)):
        height, width = gt.shape
        images.append({"id": image_id, "height": height, "width": width})
        encoded = rle(gt)
        annotations.append({
            "id": image_id + 1, "image_id": image_id, "category_id": 1, "segmentation": encoded,
            "area": float(mask_utils.area(encoded)), "bbox": mask_utils.toBbox(encoded).tolist(),
            "iscrowd": 0,
        })  # fmt: skip
        for mask, score in zip(masks, scores):
            detections.append({"image_id": image_id, "category_id": 1, "segmentation": rle(mask),
                               "score": float(score)})  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco = COCO()
        coco.dataset = {"images": images, "annotations": annotations,
                        "categories": [{"id": 1, "name": "referred"}]}  # fmt: skip
        coco.createIndex()
        if not detections:
            return {"mAP": 0.0, "AP50": 0.0, "AP75": 0.0}
        evaluator = COCOeval(coco, coco.loadRes(detections), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return {"mAP": float(stats[0]), "AP50": float(stats[1]), "AP75": float(stats[2])}
