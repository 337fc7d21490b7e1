"""Ref-DAVIS17 scored as the field scores it: ReferFormer's protocol.

ReferFormer (github.com/wjn922/ReferFormer: inference_davis.py, scripts/dist_test_davis.sh,
eval_davis.py) does not score Ref-DAVIS17 per expression. Its conversion of the dataset
(tools/data/convert_davis_to_ytvos.py) numbers each video's expressions object-major, four per
object: annotator 1 first-frame, annotator 1 full-video, annotator 2 first-frame, annotator 2
full-video, so expression ``4 * k + a`` describes object ``k`` for annotator set ``a``. Then,
for each annotator set separately:

1. every object's expression is segmented; its mask probabilities below 0.5 are set to 0, a
   background plane of 0.1 is put in front, and the argmax over the planes gives one exclusive
   label map per frame (0 background, ``k + 1`` object ``k``);
2. those label maps are scored by the official DAVIS 2017 *unsupervised* evaluation
   (github.com/davisvideochallenge/davis2017-evaluation, davis2017/evaluation.py and
   metrics.py): the predicted objects (ids 1..max id of the label maps, at most 20, padded with
   empty ones) are matched one-to-one to the annotated objects (ids 1..max id of the first
   annotation) by the Hungarian algorithm on the frame-mean of (J + F) / 2; void pixels (255 in
   the annotations) are left out of J and F; each annotated object scores the frame mean of
   its match's J and F; J and F of the run are the means over all objects of all videos.

That gives four runs (``per_annotator``); the headline numbers are their means. This module is
our own code following those files; docs/evaluation.md compares it with the per-expression
protocol.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from training.metrics import boundaries, boundary_f, region_similarity

log = logging.getLogger(__name__)

ANNOTATORS = 4  # 2 annotators x (first-frame, full-video) expression sets
MAX_PROPOSALS = 20  # davis2017/evaluation.py: more predicted ids than this is refused
VOID = 255
THRESHOLD = 0.5
BACKGROUND_SCORE = 0.1  # inference_davis.py: the background plane before the argmax


def annotator_groups(video: str, records: list) -> list[list]:
    """The video's expression records as ``groups[a][k]``: object ``k``'s expression in
    annotator set ``a``, from records in expression-id order (expression ``4 * k + a``)."""
    records = sorted(records, key=lambda r: int(r.exp_id))
    if not records or len(records) % ANNOTATORS:
        raise ValueError(
            f"video {video}: {len(records)} expressions; the ReferFormer protocol expects four per "
            f"object (two annotators, first-frame and full-video), numbered 4*object+annotator. "
            f"Use --protocol per-expression for a set without that structure"
        )
    objects = len(records) // ANNOTATORS
    if objects > MAX_PROPOSALS:
        raise ValueError(
            f"video {video}: {objects} objects; the DAVIS evaluation takes at most {MAX_PROPOSALS}"
        )
    for k in range(objects):
        ids = {records[ANNOTATORS * k + a].obj_id for a in range(ANNOTATORS)}
        if len(ids) > 1:  # ReferFormer ignores obj_id; a mix suggests a shifted numbering
            log.warning("video %s: expressions %d-%d name objects %s, expected one object",
                        video, ANNOTATORS * k, ANNOTATORS * k + 3, sorted(ids))  # fmt: skip
    return [records[a::ANNOTATORS] for a in range(ANNOTATORS)]


def records_by_video(dataset) -> dict[str, list]:
    by_video: dict[str, list] = defaultdict(list)
    for record in dataset.records:
        by_video[record.video].append(record)
    return by_video


def check_dataset(dataset) -> None:
    """Refuse, before a model is loaded, a dataset whose expressions the protocol cannot group."""
    for video, records in records_by_video(dataset).items():
        annotator_groups(video, records)


def merge_label_map(probabilities: np.ndarray) -> np.ndarray:
    """One exclusive label map from per-object probabilities (O, ..., H, W) in [0, 1] (bool
    masks count as 0 or 1): below 0.5 is dropped, a 0.1 background plane goes first, and the
    argmax picks the label (0 background, k + 1 object k; ties go to the lower object)."""
    scores = np.asarray(probabilities, dtype=np.float32)
    if scores.ndim < 3:
        raise ValueError(f"expected (objects, ..., H, W) probabilities, got shape {scores.shape}")
    if len(scores) >= VOID:
        raise ValueError(f"{len(scores)} objects do not fit a uint8 label map with 255 void")
    scores = np.where(scores < THRESHOLD, 0.0, scores)
    background = np.full((1, *scores.shape[1:]), BACKGROUND_SCORE, np.float32)
    return np.concatenate([background, scores]).argmax(0).astype(np.uint8)


def ground_truth(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Annotated objects (G, T, H, W) bool and void (T, H, W) bool of (T, H, W) id maps; G is
    the largest id of the first annotated frame, as davis2017/davis.py counts objects."""
    void = labels == VOID
    ids = np.where(void, 0, labels)
    count = int(ids[0].max())
    return ids[None] == np.arange(1, count + 1).reshape(-1, 1, 1, 1), void


def proposals(labels: np.ndarray) -> np.ndarray:
    """Predicted objects (P, T, H, W) bool of (T, H, W) label maps: ids 1..max, as
    davis2017/results.py reads them."""
    count = int(labels.max())
    if count > MAX_PROPOSALS:
        raise ValueError(
            f"{count} predicted objects; the DAVIS evaluation takes at most {MAX_PROPOSALS}"
        )
    return labels[None] == np.arange(1, count + 1).reshape(-1, 1, 1, 1)


def match_objects(
    objects: np.ndarray, predicted: np.ndarray, void: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DAVIS's unsupervised matching: per annotated object (G, T, H, W) the per-frame J and F
    (G, T) of the predicted object (P, T, H, W) the Hungarian algorithm assigns it, and that
    object's index (G,) (-1: an empty padding proposal, so no prediction at all)."""
    count, frames = objects.shape[:2]
    if count == 0:
        return np.zeros((0, frames)), np.zeros((0, frames)), np.zeros(0, int)
    real = len(predicted)
    if real < count:  # padded with empty proposals, as DAVIS does
        empty = np.zeros((count - len(predicted), *objects.shape[1:]), bool)
        predicted = np.concatenate([predicted.astype(bool), empty])
    voids = [None] * frames if void is None else void
    # Boundaries of each mask once: F then costs P + G dilations per frame, not P * G.
    gt_edges = [[boundaries(o[t], voids[t]) for t in range(frames)] for o in objects]
    pred_edges = [[boundaries(p[t], voids[t]) for t in range(frames)] for p in predicted]
    j = np.zeros((len(predicted), count, frames))
    f = np.zeros_like(j)
    for p in range(len(predicted)):
        for g in range(count):
            for t in range(frames):
                j[p, g, t] = region_similarity(objects[g, t], predicted[p, t], voids[t])
                f[p, g, t] = boundary_f(gt_edges[g][t], pred_edges[p][t])
    rows, cols = linear_sum_assignment(-(j.mean(2) + f.mean(2)) / 2)
    matched = np.full(count, -1)
    j_out, f_out = np.zeros((count, frames)), np.zeros((count, frames))
    for p, g in zip(rows, cols):
        j_out[g], f_out[g] = j[p, g], f[p, g]
        matched[g] = p if p < real else -1
    return j_out, f_out, matched


def evaluate_referformer(
    dataset, predict, videos: list[str], submission: Path | None = None
) -> dict:
    """The protocol on ``videos`` of a Ref-DAVIS17-layout ``dataset``.

    ``predict(frames, expressions)`` gives per-expression mask probabilities (E, T, H, W) in
    [0, 1], or bool masks, at the frames' size. With ``submission`` the label maps are written
    as ``anno_<a>/<video>/<frame>.png``, the folders ReferFormer hands to the DAVIS code.
    Returns ``summary`` (means over the annotator runs and ``per_annotator``) and
    ``per_object`` (one row per annotated object and annotator run).
    """
    by_video = records_by_video(dataset)
    groups = {
        video: annotator_groups(video, by_video[video]) for video in videos
    }  # before any work
    rows = []
    for video in tqdm(videos, desc="evaluate (referformer)", unit="video"):
        names = list(by_video[video][0].frames)
        frames = [dataset.read_frame(video, n) for n in names]
        size = frames[0].shape[:2]
        annotated = [i for i, n in enumerate(names) if dataset.is_annotated(video, n)]
        if not annotated:
            raise FileNotFoundError(
                f"video {video} has no annotation under {dataset.label_dir / video}"
            )
        labels = np.stack([dataset.read_label(video, names[i], size) for i in annotated])
        objects, void = ground_truth(labels)
        if len(objects) == 0:
            log.warning("video %s: no object in its first annotation; it scores nothing", video)
        for a, records in enumerate(groups[video]):
            scores = np.asarray(predict(frames, [r.expression for r in records]))
            if scores.shape[0] != len(records) or scores.shape[-2:] != tuple(size):
                raise ValueError(
                    f"video {video}: predictions of shape {scores.shape}, expected "
                    f"({len(records)}, {len(names)}, {size[0]}, {size[1]})"
                )
            predicted = merge_label_map(scores)  # (T, H, W)
            if submission is not None:
                _write_labels(submission / f"anno_{a}" / video, names, predicted)
            j, f, matched = match_objects(objects, proposals(predicted[annotated]), void)
            for g in range(len(objects)):
                hit = records[matched[g]] if matched[g] >= 0 else None
                rows.append({
                    "video": video, "object": g + 1, "annotator": a,
                    "J": float(j[g].mean()), "F": float(f[g].mean()),
                    "J&F": float((j[g].mean() + f[g].mean()) / 2),
                    "matched_exp_id": hit.exp_id if hit else None,
                    "matched_expression": hit.expression if hit else None,
                })  # fmt: skip
    return {"summary": summarize_annotators(rows), "per_object": rows}


def summarize_annotators(rows: list[dict]) -> dict:
    """Per annotator run J, F (means over objects) and J&F, and their means over the runs."""
    if not rows:
        raise ValueError("no annotated objects evaluated")
    runs = []
    for a in sorted({row["annotator"] for row in rows}):
        mine = [row for row in rows if row["annotator"] == a]
        j = float(np.mean([row["J"] for row in mine]))
        f = float(np.mean([row["F"] for row in mine]))
        runs.append({"annotator": a, "J": j, "F": f, "J&F": (j + f) / 2, "objects": len(mine)})
    j = float(np.mean([run["J"] for run in runs]))
    f = float(np.mean([run["F"] for run in runs]))
    return {
        "J": j, "F": f, "J&F": float(np.mean([run["J&F"] for run in runs])),
        "objects": runs[0]["objects"], "annotators": len(runs), "per_annotator": runs,
    }  # fmt: skip


def _write_labels(folder: Path, names: list[str], labels: np.ndarray) -> None:
    from training.data.synthetic import palette

    folder.mkdir(parents=True, exist_ok=True)
    for name, label in zip(names, labels):
        png = Image.fromarray(label, mode="P")
        png.putpalette(palette())
        png.save(folder / f"{name}.png")
