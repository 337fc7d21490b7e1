"""Evaluate a checkpoint: J, F and J&F per expression and overall (Ref-YouTube-VOS, Ref-DAVIS17,
the synthetic set); P@0.5..0.9, overall and mean IoU and mAP for A2D/JHMDB-Sentences.

    python training/evaluate.py --checkpoint runs/tiny/final --data data/synth --split valid
    python training/evaluate.py ... --submission out/submission   # Ref-YouTube-VOS layout
    python training/evaluate.py --checkpoint CKPT --data a2d_sentences --dataset a2d --split test

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
from runtime.selection import select_queries
from training.data import DATASETS, build_dataset
from training.data.transforms import ClipTransform, resize_clip, scaled_size, to_tensor_clip
from training.metrics import (
    frame_metrics,
    mask_average_precision,
    region_similarity,
    summarize_jf,
    video_jf,
)

log = logging.getLogger("evaluate")


@torch.inference_mode()
def segment_video(
    model, tokenizer, frames: list[np.ndarray], expressions: list[str], window: int | None,
    every_query: bool = False,
):
    """Masks (E, T, H, W) bool and scores (E, n_windows) for RGB frames and expressions; with
    ``every_query`` also every query's masks (E, N, T, H, W) bool and the chosen query per
    window (E, n_windows)."""
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
) -> dict:
    """J/F per expression and overall on a dataset built with ``num_frames=None``.

    ``segment(frames, expressions) -> (masks (E, T, H, W) bool, scores (E, windows))`` replaces
    the PyTorch model (``model`` and ``tokenizer`` are then unused): ``benchmarks/accuracy.py``
    passes the ONNX runtime's predictor through it, so every backend is scored by the same code.

    ``query_oracle`` (PyTorch only) also scores every one of the N queries: ``J_best_query``
    is the J of the query that would have been best, and ``selection_hit`` whether the query
    the class scores chose is within 0.05 J of it. It separates "the masks are poor" from "the
    right mask is there but the class head picks another".
    """
    if query_oracle and segment is not None:
        raise ValueError("query_oracle needs the PyTorch model, not a custom segment function")
    if segment is None:

        def segment(frames, expressions):
            return segment_video(model, tokenizer, frames, expressions, window, query_oracle)

    by_video: dict[str, list] = defaultdict(list)
    for record in dataset.records:
        by_video[record.video].append(record)
    videos = sorted(by_video)[:limit] if limit else sorted(by_video)
    rows = []
    for video in tqdm(videos, desc="evaluate", unit="video"):
        records = by_video[video]
        names = list(records[0].frames)
        originals = [dataset.read_frame(video, n) for n in names]
        height, width = originals[0].shape[:2]
        frames = originals
        transform: ClipTransform = dataset.transform
        if transform.eval_short_side is not None:
            target = scaled_size(height, width, transform.eval_short_side, transform.max_size)
            if target != (height, width):
                frames, _ = resize_clip(originals, [], target)
        masks, scores, *every = segment(frames, [r.expression for r in records])
        masks = _to_size(masks, (height, width))
        for e, (record, pred, score) in enumerate(zip(records, masks, scores)):
            gt = np.stack([dataset.read_mask(video, n, record.obj_id, (height, width)) for n in names])
            annotated = [i for i, n in enumerate(names) if (dataset.label_dir / video / f"{n}.png").is_file()]
            j, f = video_jf(gt[annotated], pred[annotated])
            rows.append({"video": video, "exp_id": record.exp_id, "expression": record.expression,
                         "J": j, "F": f, "J&F": (j + f) / 2, "score": float(score.mean())})  # fmt: skip
            if every:
                query_j = [
                    float(np.mean([region_similarity(g, p) for g, p in zip(gt[annotated], q)]))
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
    return {"summary": summary, "per_expression": rows}


def _to_size(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Boolean (..., h, w) masks resized (nearest) to ``size``, as the annotations are."""
    if masks.shape[-2:] == tuple(size):
        return masks
    flat = torch.from_numpy(masks.reshape(-1, 1, *masks.shape[-2:])).float()
    resized = torch.nn.functional.interpolate(flat, size=size, mode="nearest")
    return resized.numpy().reshape(*masks.shape[:-2], *size) > 0.5


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
                        help="write masks as Annotations/<video>/<exp_id>/<frame>.png here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = load_checkpoint(args.checkpoint, device=args.device)
    tokenizer = load_tokenizer(model.config, path=args.checkpoint / "tokenizer.json"
                               if (args.checkpoint / "tokenizer.json").is_file() else None)
    transform = ClipTransform(train=False, eval_short_side=args.short_side, max_size=args.max_size)
    if args.dataset in ("a2d", "jhmdb"):
        transform = ClipTransform(train=False, eval_short_side=args.short_side or 320, max_size=args.max_size)
        dataset = build_dataset(args.dataset, args.data, args.split, args.num_frames, transform)
        result = evaluate_frames(model, tokenizer, dataset, args.limit)
        print("  ".join(f"{k} {v:.4f}" for k, v in result["summary"].items() if k != "frames"))
    else:
        dataset = build_dataset(args.dataset, args.data, args.split, None, transform)
        result = evaluate(model, tokenizer, dataset, args.window, args.submission, args.limit,
                          query_oracle=args.query_oracle)  # fmt: skip
        summary = result["summary"]
        print(f"J&F {summary['J&F']:.4f}  J {summary['J']:.4f}  F {summary['F']:.4f}  "
              f"({summary['expressions']} expressions, {args.split})")
        if args.query_oracle:
            print(f"best-query J {summary['J_best_query']:.4f}  "
                  f"class scores pick it (within 0.05 J): {summary['selection_hit']:.1%}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result | {"checkpoint": str(args.checkpoint)}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
