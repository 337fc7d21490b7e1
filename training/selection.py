"""Stage 2 on cached features: the class path of a frozen model (``training/train_selection.py``).

The tiny recipe trains in two stages. Stage 1 trains the whole model; stage 2 adds the
video-level selection module (``extensions.video_select``) and trains only the class path,
``heads.selection``, ``heads.class_head`` and ``heads.pool_proj``, on the frozen rest. Every
input of that path (each decoder layer's queries, F_seg pooled under each query's soft mask,
the masks' geometry, the text features) and its target (each query's mask IoU in every frame)
then depends on frozen weights only, so it is computed once per (video, expression), on the
whole video as inference sees it, and the class path trains on the cache: many epochs for the
time of a few hundred end-to-end steps, and clips of the same length as at inference.

The cache holds, per expression (and per horizontal flip of it, which swaps left and right in
the expression), in float16: ``text`` (L, C), ``text_mask`` (L,), ``visible`` and
``annotated`` (T,), and per decoder layer ``queries`` (T, N, C), ``pooled`` (T, N, D),
``geometry`` (T, N, 9) and ``iou`` (T, N). It is written next to the run
(``cache-<split>.pt``) with the checkpoint's weight digest, the model config and the data
options, and reused when they match.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from proxyformer.checkpoint import WEIGHTS_NAME, check_weights_fit, read_config
from proxyformer.model import build_proxyformer
from proxyformer.text import encode_texts, load_tokenizer
from runtime.manifest import sha256_file
from runtime.selection import select_queries
from training.data import build_dataset
from training.data.transforms import (
    ClipTransform,
    flip_expression,
    resize_clip,
    scaled_size,
    to_tensor_clip,
)
from training.finetune import freeze_except, init_weights
from training.losses import LossWeights, iou_class_loss, mask_iou, upsample_masks
from training.rundir import RunDirectory
from training.schedule import set_cosine_lr

log = logging.getLogger(__name__)

CLASS_PATH = ("heads.selection", "heads.class_head", "heads.pool_proj")
CACHE_VERSION = 2
STATE_NAME = "selection_state.pt"
# Options that may differ between an interrupted run and its resumption, and those naming
# files or directories (compared resolved: training.rundir).
RESUMABLE_CHANGES = ("device", "out", "overwrite")
PATH_OPTIONS = ("init_from", "data", "out")
_LAYER_KEYS = ("queries", "pooled", "geometry", "iou")


@dataclass(frozen=True)
class SelectionConfig:
    """Options of ``train_selection.py`` (its ``--help`` describes each)."""

    init_from: str = ""
    data: str = "data/synth"
    out: str = "runs/selection"
    dataset: str = "ytvos"
    split: str = "train"
    valid_split: str | None = None
    overrides: dict = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 8
    lr: float = 5e-4
    lr_min_ratio: float = 0.01
    weight_decay: float = 1e-4
    clip_max_norm: float = 0.1
    flip: bool = True
    short_side: int | None = None
    max_size: int | None = 640
    seed: int = 42
    device: str = "cpu"
    overwrite: bool = False  # replace a run already in out (otherwise it is refused)

    def __post_init__(self) -> None:
        if not self.init_from:
            raise ValueError("--init-from: the stage-1 checkpoint to freeze is required")
        if self.dataset not in ("ytvos", "davis"):
            raise ValueError(
                f"selection training caches whole annotated videos: dataset must be 'ytvos' or "
                f"'davis', got {self.dataset!r}"
            )
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}"
            )
        if not 0.0 <= self.lr_min_ratio <= 1.0:
            raise ValueError(f"lr_min_ratio must be in [0, 1], got {self.lr_min_ratio}")

    def cache_key(self, split: str, flip: bool, weights_digest: str, model_config: dict) -> dict:
        """What a cache depends on; a cache on disk is reused only when all of it matches. The
        model config decides what the class path reads (``extensions``: pooling, geometry)."""
        return {
            "version": CACHE_VERSION, "weights": weights_digest, "model": model_config,
            "overrides": self.overrides,
            "data": str(Path(self.data).resolve()), "dataset": self.dataset, "split": split,
            "flip": flip, "short_side": self.short_side, "max_size": self.max_size,
        }  # fmt: skip


def build_stage2_model(config: SelectionConfig):
    """The stage-1 checkpoint's model with ``config.overrides`` applied (e.g.
    ``extensions.video_select=true``), its weights loaded and everything but the class path
    frozen. Class-path tensors the checkpoint lacks start from a seeded initialisation."""
    model_config = read_config(config.init_from)
    if config.overrides:
        model_config = model_config.replace(**config.overrides)
    # The checkpoint's tensors against the shapes its config implies, before that model is
    # allocated (the class-path tensors the overrides add may be missing: not strict).
    check_weights_fit(model_config, config.init_from, strict=False)
    torch.manual_seed(config.seed)
    model = build_proxyformer(model_config)
    fresh = init_weights(model, config.init_from)
    outside = [name for name in fresh if not name.startswith(CLASS_PATH)]
    if outside:
        raise ValueError(
            f"--init-from {config.init_from} lacks {outside[:6]} ({len(outside)} tensors) outside "
            f"the class path ({', '.join(CLASS_PATH)}), which would stay frozen at random values"
        )
    names = [name for name, _ in model.named_parameters()]
    prefixes = tuple(p for p in CLASS_PATH if any(n.startswith(p) for n in names))
    freeze_except(model, prefixes)
    return model.to(config.device)


# -- the cache ---------------------------------------------------------------------------------


@torch.inference_mode()
def cache_video(model, tokenizer, frames: list[np.ndarray], gt_masks: list[np.ndarray],
                annotated: list[bool], expressions: list[str]) -> list[dict]:  # fmt: skip
    """The class-path inputs and IoU targets of one video's expressions.

    Args:
        frames: T RGB frames (H, W, 3) uint8 at the model's input size.
        gt_masks: per expression, (T, H, W) bool target masks at the same size.
        annotated: per frame, whether it has an annotation (unannotated frames enter no loss).
        expressions: one per entry of ``gt_masks``.
    """
    device = next(model.parameters()).device
    clip = to_tensor_clip(frames)[None].to(device)
    size = tuple(clip.shape[-2:])
    ids, text_mask = encode_texts(tokenizer, expressions)
    ids, text_mask = ids.to(device), text_mask.to(device)
    text = model.encode_text(ids, text_mask)
    levels = [lvl.expand(len(expressions), *lvl.shape[1:]) for lvl in model.encode_frames(clip)]
    out = model.decode(levels, text, text_mask, size, aux=True, keep_class_inputs=True)
    gt = torch.from_numpy(np.stack(gt_masks)).to(device)  # (E, T, H, W)
    layers = []
    for pred in [*out["aux_outputs"], out]:
        ious = mask_iou(upsample_masks(pred["pred_masks"], size), gt[:, :, None])  # (E, T, N)
        layers.append({
            "queries": pred["class_queries"], "pooled": pred.get("class_pooled"),
            "geometry": pred.get("class_geometry"), "iou": ious,
        })  # fmt: skip
    visible = gt.flatten(2).any(-1)  # (E, T)
    items = []
    for e in range(len(expressions)):
        items.append({
            "text": text[e][text_mask[e].bool()].half().cpu(),  # the real tokens, in order
            "visible": visible[e].cpu(),
            "annotated": torch.tensor(annotated),
            "layers": [
                {k: v[e].half().cpu() for k, v in layer.items() if v is not None}
                for layer in layers
            ],
        })  # fmt: skip
    return items


def build_cache(model, tokenizer, dataset, flip: bool, desc: str = "cache") -> list[dict]:
    """Every expression of ``dataset`` (built with ``num_frames=None``) on its whole video,
    resized as evaluation does; with ``flip`` also each video mirrored, left and right swapped
    in its expressions."""
    by_video: dict[str, list] = defaultdict(list)
    for record in dataset.records:
        by_video[record.video].append(record)
    transform = dataset.transform
    items = []
    for video in tqdm(sorted(by_video), desc=desc, unit="video"):
        records = by_video[video]
        names = list(records[0].frames)
        frames = [dataset.read_frame(video, name) for name in names]
        height, width = frames[0].shape[:2]
        masks = [
            [dataset.read_mask(video, name, r.obj_id, (height, width)) for name in names]
            for r in records
        ]
        if transform.eval_short_side is not None:
            target = scaled_size(height, width, transform.eval_short_side, transform.max_size)
            if target != (height, width):
                frames, _ = resize_clip(frames, [], target)
                masks = [resize_clip([], m, target)[1] for m in masks]
        annotated = [(dataset.label_dir / video / f"{name}.png").is_file() for name in names]
        expressions = [r.expression for r in records]
        gt = [np.stack(m) for m in masks]
        items += cache_video(model, tokenizer, frames, gt, annotated, expressions)
        if flip:
            items += cache_video(
                model, tokenizer, [np.ascontiguousarray(f[:, ::-1]) for f in frames],
                [np.ascontiguousarray(g[..., ::-1]) for g in gt], annotated,
                [flip_expression(x) for x in expressions],
            )  # fmt: skip
    return items


def load_or_build_cache(path: Path, key: dict, build) -> list[dict]:
    """The cache at ``path`` when its key matches ``key``; otherwise ``build()``, written
    atomically to ``path``."""
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") == key:
            log.info("reusing the feature cache %s (%d expressions)", path, len(saved["items"]))
            return saved["items"]
        log.info("the feature cache %s was built for other options or weights: rebuilding", path)
    started = time.perf_counter()
    items = build()
    log.info("cached %d expressions in %.0f s", len(items), time.perf_counter() - started)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"key": key, "items": items}, tmp)
    os.replace(tmp, path)
    return items


def collate(items: list[dict], layer: int, device) -> dict[str, torch.Tensor]:
    """One decoder layer's cached inputs of several expressions as a float32 batch; the text
    is right-padded to the longest expression."""
    length = max(len(item["text"]) for item in items)
    dim = items[0]["text"].shape[-1]
    text = torch.zeros(len(items), length, dim)
    text_mask = torch.zeros(len(items), length, dtype=torch.bool)
    for i, item in enumerate(items):
        text[i, : len(item["text"])] = item["text"].float()
        text_mask[i, : len(item["text"])] = True
    batch = {"text": text, "text_mask": text_mask}
    for key in ("visible", "annotated"):
        batch[key] = torch.stack([item[key] for item in items]).float()
    for key in items[0]["layers"][layer]:
        batch[key] = torch.stack([item["layers"][layer][key] for item in items]).float()
    return {k: v.to(device) for k, v in batch.items()}


def length_batches(order: list[int], lengths: list[int], size: int) -> list[list[int]]:
    """Batches of up to ``size`` indices taken in ``order`` among items with the same number
    of frames (a batch stacks whole videos, and Ref-YouTube-VOS videos differ in length),
    ordered by where their first index comes in ``order``: with one length, simply
    consecutive runs of ``order``."""
    groups: dict[int, list[int]] = defaultdict(list)
    for index in order:
        groups[lengths[index]].append(index)
    batches = [g[s : s + size] for g in groups.values() for s in range(0, len(g), size)]
    position = {index: p for p, index in enumerate(order)}
    return sorted(batches, key=lambda batch: position[batch[0]])


def class_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model.heads.class_logits(
        batch["queries"], batch.get("pooled"), batch.get("geometry"), batch["text"],
        batch["text_mask"],
    )  # fmt: skip


@torch.no_grad()
def selection_scores(model, items: list[dict], batch_size: int = 64) -> dict[str, float]:
    """How the class path picks on cached expressions, with inference's rule (the query with
    the best frame-averaged probability, ``select_masks``): ``J`` of the picked query (its mask
    IoU averaged over the annotated frames, at the model's input size), ``J_best_query`` and
    ``selection_hit`` (picked within 0.05 J of the best), as ``evaluate.py --query-oracle``."""
    was_training = model.training
    model.eval()
    last = len(items[0]["layers"]) - 1
    lengths = [len(item["visible"]) for item in items]
    picked, best = [], []
    for indices in length_batches(list(range(len(items))), lengths, batch_size):
        chunk = [items[i] for i in indices]
        batch = collate(chunk, last, next(model.parameters()).device)
        logits = class_logits(model, batch).float().cpu().numpy()  # (B, T, N)
        choice = torch.from_numpy(select_queries(logits)[0]).to(batch["iou"].device)  # (B,)
        weights = batch["annotated"] / batch["annotated"].sum(-1, keepdim=True).clamp(min=1)
        query_j = (batch["iou"] * weights[..., None]).sum(1)  # (B, N)
        picked.append(query_j.gather(1, choice[:, None])[:, 0])
        best.append(query_j.max(-1).values)
    model.train(was_training)
    picked, best = torch.cat(picked), torch.cat(best)
    return {
        "J": float(picked.mean()),
        "J_best_query": float(best.mean()),
        "selection_hit": float((picked >= best - 0.05).float().mean()),
    }


# -- training ----------------------------------------------------------------------------------


class SelectionTrainer:
    """Trains the class path on cached features, one checkpoint (with optimizer and epoch) per
    epoch under ``OUT/checkpoint``; ``resume`` continues from it with the same result as an
    uninterrupted run."""

    def __init__(self, config: SelectionConfig) -> None:
        self.config = config
        self.run = RunDirectory(config.out, "selection_config.json", STATE_NAME, "config", "epoch",
                                path_options=PATH_OPTIONS)  # fmt: skip
        self.out = self.run.out
        self.device = torch.device(config.device)
        weights = Path(config.init_from) / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"--init-from: checkpoint weights not found: {weights}")
        self.model = build_stage2_model(config)
        self.model.eval()  # the frozen part has no dropout/BatchNorm updates in caching
        tokenizer_file = Path(config.init_from) / "tokenizer.json"
        self.tokenizer = load_tokenizer(
            self.model.config, path=tokenizer_file if tokenizer_file.is_file() else None
        )
        self.weights_digest = sha256_file(weights)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=config.lr, weight_decay=config.weight_decay
        )
        self.cls_weight = LossWeights().cls
        self.epoch = 0

    def cache(self, split: str, flip: bool) -> list[dict]:
        config = self.config
        transform = ClipTransform(
            train=False, eval_short_side=config.short_side, max_size=config.max_size
        )
        key = config.cache_key(split, flip, self.weights_digest, self.model.config.to_dict())
        path = self.out / f"cache-{split}.pt"

        def build():
            dataset = build_dataset(config.dataset, config.data, split, None, transform)
            return build_cache(self.model, self.tokenizer, dataset, flip, desc=f"cache {split}")

        return load_or_build_cache(path, key, build)

    def loss(self, items: list[dict]) -> torch.Tensor:
        """The class loss (``iou_class_loss``, weight ``LossWeights.cls``) of every decoder
        layer, as the auxiliary losses of stage 1, averaged over the expressions."""
        total = 0.0
        for layer in range(len(items[0]["layers"])):
            batch = collate(items, layer, self.device)
            logits = class_logits(self.model, batch)
            visible = batch["visible"] * batch["annotated"]
            loss = iou_class_loss(logits, batch["iou"], visible, batch["annotated"]).mean()
            total = total + self.cls_weight * loss
        return total

    def save(self, directory: Path, with_state: bool) -> None:
        """Write the model to ``directory``, with the optimizer and epoch if asked."""
        self.run.save(
            self.model, directory, self.tokenizer,
            metadata={"epoch": str(self.epoch), "stage": "selection"},
            state={"optimizer": self.optimizer.state_dict(), "epoch": self.epoch} if with_state else None,
            options=asdict(self.config),
        )  # fmt: skip

    def restore(self, state: dict) -> None:
        """Continue from ``OUT/checkpoint`` and its training ``state`` (``RunDirectory.open``
        read and verified it): weights, optimizer and the epochs done."""
        self.run.load_weights(self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = state["epoch"]
        log.info("resumed %s after epoch %d", self.run.checkpoint, self.epoch)

    def train(self, resume: bool = False, stop_after: int | None = None) -> Path:
        """Cache, train, save ``OUT/final``; returns its path. ``stop_after`` ends the run
        after that many epochs with only ``OUT/checkpoint`` written, as an interruption
        between epochs would (``resume`` then finishes it); it returns that directory."""
        config = self.config
        # An existing run without --resume/--overwrite is refused, a resume checked, before
        # the features are cached (``training.rundir``).
        state = self.run.open(asdict(config), resume, config.overwrite, RESUMABLE_CHANGES)
        if state is not None:
            self.restore(state)
        self.run.begin(asdict(config), fresh=state is None)
        self.run.restart_metrics(self.epoch if state is not None else None)
        items = self.cache(config.split, config.flip)
        valid = self.cache(config.valid_split, False) if config.valid_split else None
        lengths = [len(item["visible"]) for item in items]
        steps_per_epoch = len(length_batches(list(range(len(items))), lengths, config.batch_size))
        total = config.epochs * steps_per_epoch
        self.model.train()
        for epoch in range(self.epoch, config.epochs):
            order = list(range(len(items)))
            random.Random(hash((config.seed, epoch))).shuffle(order)
            batches = length_batches(order, lengths, config.batch_size)
            losses = []
            started = time.perf_counter()
            bar = tqdm(batches, desc=f"selection epoch {epoch + 1}/{config.epochs}")
            for step, indices in enumerate(bar):
                bases = [config.lr] * len(self.optimizer.param_groups)
                set_cosine_lr(self.optimizer, bases, epoch * steps_per_epoch + step, total,
                              config.lr_min_ratio)  # fmt: skip
                loss = self.loss([items[i] for i in indices])
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.clip_max_norm > 0:
                    torch.nn.utils.clip_grad_norm_(self.params, config.clip_max_norm)
                self.optimizer.step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
            self.epoch = epoch + 1
            lr = self.optimizer.param_groups[0]["lr"]
            row = {"epoch": self.epoch, "loss": float(np.mean(losses)), "lr": lr,
                   "seconds": time.perf_counter() - started}  # fmt: skip
            if valid is not None:
                row |= {f"valid_{k}": v for k, v in selection_scores(self.model, valid).items()}
            log.info("epoch %d: %s", self.epoch, ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
            self.run.log_row(row)
            self.save(self.run.checkpoint, with_state=True)
            if stop_after is not None and self.epoch >= stop_after and self.epoch < config.epochs:
                log.info("stopping after epoch %d of %d", self.epoch, config.epochs)
                return self.run.checkpoint
        self.model.eval()
        final = self.run.final
        self.save(final, with_state=False)
        log.info("final class path written to %s", final)
        return final
