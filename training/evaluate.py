"""Evaluate a checkpoint: J, F and J&F per expression and overall (Ref-YouTube-VOS, the
synthetic set), Ref-DAVIS17 as ReferFormer scores it (training/davis.py), P@0.5..0.9, overall
and mean IoU and mAP for A2D/JHMDB-Sentences.

    python training/evaluate.py --checkpoint runs/tiny/final --data data/synth --split valid
    python training/evaluate.py ... --submission out/submission   # Ref-YouTube-VOS layout
    python training/evaluate.py --checkpoint CKPT --data ref-davis --dataset davis   # referformer
    python training/evaluate.py --checkpoint CKPT --data a2d_sentences --dataset a2d --split test

``--protocol`` says how J&F is computed (docs/evaluation.md): ``per-expression`` (every
expression's mask against its object, averaged over expressions; the default but for davis) or
``referformer`` (the default for davis: per annotator set, the expressions' masks merged into
one label map, DAVIS's unsupervised evaluation with void excluded, four runs averaged).

Every video is read once and its backbone features computed once for all its expressions.
Videos longer than ``--window`` frames run in consecutive windows. Predictions follow the
inference rule of docs/design.md (``proxyformer.postprocess.select_masks``) and are compared with
the annotations at the original resolution.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from proxyformer.checkpoint import load_checkpoint
from proxyformer.postprocess import select_masks, upsample_mask_logits
from proxyformer.text import encode_texts, load_tokenizer
from runtime.files import atomic_write_text
from runtime.selection import select_queries
from training.data import DATASETS, build_dataset
from training.data.transforms import ClipTransform, resize_clip, scaled_size, to_tensor_clip
from training.davis import check_dataset, evaluate_referformer
from training.metrics import (
    frame_metrics,
    mask_average_precision,
    region_similarity,
    summarize_jf,
    video_jf,
)

log = logging.getLogger("evaluate")

PROTOCOLS = ("per-expression", "referformer")


@torch.inference_mode()
def segment_video(
    model, tokenizer, frames: list[np.ndarray], expressions: list[str], window: int | None,
    every_query: bool = False,
    probability_size: tuple[int, int] | None = None,
):
    """Masks (E, T, H, W) bool and scores (E, n_windows) for RGB frames and expressions; with
    ``every_query`` also every query's masks (E, N, T, H, W) bool and the chosen query per
    window (E, n_windows). With ``probability_size`` (H0, W0) the masks are instead the chosen
    query's probabilities (E, T, H0, W0) float32, the logits upsampled to that size before the
    sigmoid (what ReferFormer's Ref-DAVIS17 inference merges)."""
    clip = to_tensor_clip(frames)  # (T, 3, H, W)
    device = next(model.parameters()).device
    ids, mask = encode_texts(tokenizer, expressions)
    ids, mask = ids.to(device), mask.to(device)
    text = model.encode_text(ids, mask)
    size = tuple(clip.shape[-2:])
    step = window or clip.shape[0]
    masks, scores, all_masks, chosen = [], [], [], []
    for start in range(0, clip.shape[0], step):
        chunk = clip[start : start + step].to(device)
        levels = model.encode_frames(chunk[None])  # the backbone once for every expression
        levels = [level.expand(len(expressions), *level.shape[1:]) for level in levels]
        outputs = model.decode(levels, text, mask, size, aux=False)
        chunk_masks, chunk_scores, best = select_masks(outputs, size)
        if probability_size is not None:
            logits = outputs["pred_masks"]  # (E, t, N, h, w)
            index = best[:, None, None, None, None].expand(-1, logits.shape[1], 1, *logits.shape[-2:])
            chosen = logits.gather(2, index).squeeze(2)  # (E, t, h, w)
            full = upsample_mask_logits(chosen.flatten(0, 1), size, probability_size).sigmoid()
            chunk_masks = full.unflatten(0, chosen.shape[:2])
        masks.append(chunk_masks.cpu())
        scores.append(chunk_scores.cpu())
        if every_query:
            logits = outputs["pred_masks"]  # (E, t, N, h, w)
            full = upsample_mask_logits(logits.flatten(0, 2), size) > 0  # sigmoid > 0.5
            all_masks.append(full.unflatten(0, logits.shape[:3]).transpose(1, 2).cpu())
            chosen.append(best.cpu())
    result = torch.cat(masks, dim=1).numpy(), torch.stack(scores, dim=1).numpy()
    if every_query:
        result += (torch.cat(all_masks, dim=2).numpy(), torch.stack(chosen, dim=1).numpy())
    return result


def evaluate(
    model,
    tokenizer,
    dataset,
    window: int | None = None,
    submission: Path | None = None,
    limit: int | None = None,
    segment=None,
    query_oracle: bool = False,
    protocol: str = "per-expression",
) -> dict:
    """J/F per expression and overall on a dataset built with ``num_frames=None``, or with
    ``protocol="referformer"`` Ref-DAVIS17's per-annotator protocol (``training.davis``):
    ``segment`` may then return probabilities (float in [0, 1]) instead of bool masks, and the
    result has ``per_object`` rows and ``summary["per_annotator"]``. Either result names its
    ``protocol``.

    ``segment(frames, expressions) -> (masks (E, T, H, W) bool, scores (E, windows))`` replaces
    the PyTorch model (``model`` and ``tokenizer`` are then unused): ``benchmarks/accuracy.py``
    passes the ONNX runtime's predictor through it, so every backend is scored by the same code.

    ``query_oracle`` (PyTorch only) also scores every one of the N queries: ``J_best_query``
    is the J of the query that would have been best, and ``selection_hit`` whether the query
    the class scores chose is within 0.05 J of it. It separates "the masks are poor" from "the
    right mask is there but the class head picks another".
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    if query_oracle and segment is not None:
        raise ValueError("query_oracle needs the PyTorch model, not a custom segment function")
    if query_oracle and protocol == "referformer":
        raise ValueError("query_oracle scores single expressions: use it with protocol='per-expression'")
    by_video: dict[str, list] = defaultdict(list)
    for record in dataset.records:
        by_video[record.video].append(record)
    videos = sorted(by_video)[:limit] if limit else sorted(by_video)
    if protocol == "referformer":

        def predict(originals, expressions):
            size = originals[0].shape[:2]
            frames = _model_frames(dataset, originals)
            if segment is None:
                return segment_video(model, tokenizer, frames, expressions, window, probability_size=size)[0]
            return _to_size(np.asarray(segment(frames, expressions)[0]), size)

        return {"protocol": protocol} | evaluate_referformer(dataset, predict, videos, submission)

    if segment is None:

        def segment(frames, expressions):
            return segment_video(model, tokenizer, frames, expressions, window, query_oracle)

    rows = []
    for video in tqdm(videos, desc="evaluate", unit="video"):
        records = by_video[video]
        names = list(records[0].frames)
        originals = [dataset.read_frame(video, n) for n in names]
        height, width = originals[0].shape[:2]
        annotated = [i for i, n in enumerate(names) if dataset.is_annotated(video, n)]
        # Each annotation is read once, and a bad one reported by its path, before the model
        # runs; void (255) never equals an object id, so it counts as background here.
        labels = np.stack([dataset.read_label(video, names[i], (height, width)) for i in annotated]
                          or [np.zeros((height, width), np.uint8)])[: len(annotated)]  # fmt: skip
        masks, scores, *every = segment(_model_frames(dataset, originals), [r.expression for r in records])
        masks = _to_size(masks, (height, width))
        for e, (record, pred, score) in enumerate(zip(records, masks, scores)):
            gt = labels == record.obj_id  # (annotated frames, H, W)
            j, f = video_jf(gt, pred[annotated])
            rows.append({"video": video, "exp_id": record.exp_id, "expression": record.expression,
                         "J": j, "F": f, "J&F": (j + f) / 2, "score": float(score.mean())})  # fmt: skip
            if every:
                query_j = [
                    float(np.mean([region_similarity(g, p) for g, p in zip(gt, q)]))
                    for q in _to_size(every[0][e], (height, width))[:, annotated]
                ]
                rows[-1] |= {
                    "J_best_query": max(query_j),
                    "selection_hit": j >= max(query_j) - 0.05,
                    "queries_J": query_j,
                    "chosen_query": every[1][e].tolist(),
                }
            if submission is not None:
                out_dir = submission / "Annotations" / video / record.exp_id
                out_dir.mkdir(parents=True, exist_ok=True)
                for name, frame_mask in zip(names, pred):
                    Image.fromarray(frame_mask.astype(np.uint8) * 255).save(out_dir / f"{name}.png")
    summary = summarize_jf(rows)
    if query_oracle:
        summary["J_best_query"] = float(np.mean([row["J_best_query"] for row in rows]))
        summary["selection_hit"] = float(np.mean([row["selection_hit"] for row in rows]))
    return {"protocol": protocol, "summary": summary, "per_expression": rows}


def _model_frames(dataset, originals: list[np.ndarray]) -> list[np.ndarray]:
    """The frames at the size the model sees them (the dataset's evaluation transform)."""
    height, width = originals[0].shape[:2]
    transform: ClipTransform = dataset.transform
    if transform.eval_short_side is not None:
        target = scaled_size(height, width, transform.eval_short_side, transform.max_size)
        if target != (height, width):
            return resize_clip(originals, [], target)[0]
    return originals


def _to_size(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(..., h, w) masks resized to ``size``, as the annotations are: bool masks nearest,
    probabilities (float) bilinear."""
    if masks.shape[-2:] == tuple(size):
        return masks
    binary = masks.dtype == bool
    flat = torch.from_numpy(masks.reshape(-1, 1, *masks.shape[-2:])).float()
    if binary:
        resized = torch.nn.functional.interpolate(flat, size=size, mode="nearest")
        return resized.numpy().reshape(*masks.shape[:-2], *size) > 0.5
    resized = torch.nn.functional.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return resized.numpy().reshape(*masks.shape[:-2], *size)


@torch.inference_mode()
def evaluate_frames(model, tokenizer, dataset, limit: int | None = None) -> dict:
    """A2D/JHMDB protocol: every sample is one annotated frame in the middle of its clip.

    IoU metrics use the query with the highest score on that frame; mAP ranks all N queries.
    """
    device = next(model.parameters()).device
    ious, intersections, unions, gts, predictions, rows = [], [], [], [], [], []
    count = min(len(dataset), limit) if limit else len(dataset)
    for index in tqdm(range(count), desc="evaluate", unit="sample"):
        item = dataset[index]
        centre = int(item["annotated"].nonzero()[0, 0])
        frames = item["frames"][None].to(device)
        ids, mask = encode_texts(tokenizer, [item["expression"]])
        outputs = model(frames, ids.to(device), mask.to(device))
        size = tuple(frames.shape[-2:])
        height, width = item["orig_size"]
        full = upsample_mask_logits(outputs["pred_masks"][0, centre], size, (height, width))  # (N, H0, W0)
        query_masks = (full.sigmoid() > 0.5).cpu().numpy()
        frame_logits = outputs["pred_logits"][:, centre : centre + 1].float().cpu().numpy()
        scores = outputs["pred_logits"][0, centre].sigmoid().cpu().numpy()
        gt = dataset.read_target(dataset.samples[index])
        best = int(select_queries(frame_logits)[0][0])  # the inference rule on the one frame
        inter = int(np.logical_and(gt, query_masks[best]).sum())
        union = int(np.logical_or(gt, query_masks[best]).sum())
        ious.append(inter / union if union else 1.0)
        intersections.append(inter)
        unions.append(union)
        gts.append(gt)
        predictions.append((query_masks, scores))
        rows.append({"video": item["video"], "frame": item["exp_id"], "expression": item["expression"],
                     "iou": ious[-1], "score": float(scores[best])})  # fmt: skip
    summary = frame_metrics(ious, intersections, unions) | mask_average_precision(gts, predictions)
    return {"summary": summary, "per_sample": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate a ProxyFormer checkpoint (J&F).")
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--data", required=True)
    parser.add_argument("--dataset", default="ytvos", choices=DATASETS)
    parser.add_argument("--split", default="valid")
    parser.add_argument("--protocol", default=None, choices=PROTOCOLS,
                        help="how J&F is computed (docs/evaluation.md): referformer (the default "
                             "for davis: four annotator runs, merged label maps, void excluded) or "
                             "per-expression (the default otherwise)")
    parser.add_argument("--short-side", type=int, default=None,
                        help="resize frames to this short side (360 for Ref-YouTube-VOS); default: native")
    parser.add_argument("--max-size", type=int, default=640)
    parser.add_argument("--window", type=int, default=None, help="frames per forward pass")
    parser.add_argument("--num-frames", type=int, default=8, help="A2D/JHMDB clip length")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N videos only")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--query-oracle", action="store_true",
                        help="also report the J of the best of the N queries and how often the "
                             "class scores pick it (selection vs mask quality)")
    parser.add_argument("--submission", type=Path, default=None,
                        help="write masks as Annotations/<video>/<exp_id>/<frame>.png here "
                             "(referformer: label maps as anno_<a>/<video>/<frame>.png)")
    args = parser.parse_args(argv)
    frame_sets = ("a2d", "jhmdb")
    protocol = args.protocol or ("referformer" if args.dataset == "davis" else "per-expression")
    if args.dataset in frame_sets and args.protocol is not None:
        parser.error(f"--protocol is for video sets; {args.dataset} is scored per annotated frame")
    if protocol == "referformer" and args.dataset != "davis":
        parser.error("--protocol referformer is Ref-DAVIS17's protocol: use it with --dataset davis")
    if protocol == "referformer" and args.query_oracle:
        parser.error("--query-oracle scores single expressions: add --protocol per-expression")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # The dataset first: a layout the protocol cannot read is refused before a model is loaded.
    if args.dataset in frame_sets:
        transform = ClipTransform(train=False, eval_short_side=args.short_side or 320, max_size=args.max_size)
        dataset = build_dataset(args.dataset, args.data, args.split, args.num_frames, transform)
    else:
        transform = ClipTransform(train=False, eval_short_side=args.short_side, max_size=args.max_size)
        dataset = build_dataset(args.dataset, args.data, args.split, None, transform)
        if protocol == "referformer":
            check_dataset(dataset)
    model = load_checkpoint(args.checkpoint, device=args.device)
    tokenizer = load_tokenizer(model.config, path=args.checkpoint / "tokenizer.json"
                               if (args.checkpoint / "tokenizer.json").is_file() else None)
    if args.dataset in frame_sets:
        result = evaluate_frames(model, tokenizer, dataset, args.limit)
        print("  ".join(f"{k} {v:.4f}" for k, v in result["summary"].items() if k != "frames"))
    else:
        result = evaluate(model, tokenizer, dataset, args.window, args.submission, args.limit,
                          query_oracle=args.query_oracle, protocol=protocol)  # fmt: skip
        summary = result["summary"]
        if protocol == "referformer":
            print(f"J&F {summary['J&F']:.4f}  J {summary['J']:.4f}  F {summary['F']:.4f}  (referformer "
                  f"protocol: mean of {summary['annotators']} annotator runs, {summary['objects']} "
                  f"objects, {args.split})")
            for run in summary["per_annotator"]:
                print(f"  annotator {run['annotator']}: J&F {run['J&F']:.4f}  J {run['J']:.4f}  F {run['F']:.4f}")
        else:
            print(f"J&F {summary['J&F']:.4f}  J {summary['J']:.4f}  F {summary['F']:.4f}  "
                  f"(per-expression protocol, {summary['expressions']} expressions, {args.split})")
        if args.query_oracle:
            print(f"best-query J {summary['J_best_query']:.4f}  "
                  f"class scores pick it (within 0.05 J): {summary['selection_hit']:.1%}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(result | {"checkpoint": str(args.checkpoint)}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
