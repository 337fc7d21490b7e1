"""Train ProxyFormer.

    python training/train.py --preset tiny --data data/synth --out runs/tiny
    torchrun --nproc_per_node 2 training/train.py --preset paper-swin-t --data ref-youtube-vos \\
        --out runs/swin-t --backbone-weights swin_tiny_patch244_window877_kinetics400_1k.pth \\
        --text-weights roberta-base
    python training/train.py ... --resume      # continue an interrupted run

See ``training.trainer`` for what is saved and how resuming stays exact.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from proxyformer.config import PRESETS
from training.data import DATASETS
from training.trainer import TrainConfig, train


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description="Train ProxyFormer.")
    parser.add_argument("--preset", default=defaults.preset, choices=sorted(PRESETS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change a model config field, e.g. cmie.use_p2v=false")
    parser.add_argument("--data", default=defaults.data)
    parser.add_argument("--dataset", default=defaults.dataset, choices=DATASETS)
    parser.add_argument("--out", default=defaults.out)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--num-frames", type=int, default=defaults.num_frames)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--lr-backbone", type=float, default=defaults.lr_backbone)
    parser.add_argument("--lr-text", type=float, default=defaults.lr_text,
                        help="lr of a trainable text encoder (default: --lr); RoBERTa is frozen by default")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--lr-drop", type=int, nargs="*", default=list(defaults.lr_drop),
                        help="epochs after which the learning rate is multiplied by 0.1")
    parser.add_argument("--lr-drop-steps", type=int, nargs="*", default=[],
                        help="optimizer steps after which the learning rate is multiplied by 0.1")
    parser.add_argument("--lr-schedule", default=defaults.lr_schedule, choices=("step", "cosine"),
                        help="step: x0.1 at --lr-drop epochs / --lr-drop-steps (paper); cosine: "
                        "half a cosine down to --lr-min-ratio of each lr over the run")
    parser.add_argument("--lr-min-ratio", type=float, default=defaults.lr_min_ratio)
    parser.add_argument("--clip-max-norm", type=float, default=defaults.clip_max_norm)
    parser.add_argument("--accumulate", type=int, default=defaults.accumulate)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--save-every", type=int, default=defaults.save_every)
    parser.add_argument("--log-every", type=int, default=defaults.log_every)
    parser.add_argument("--amp", default=defaults.amp, choices=("auto", "on", "off"))
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--backbone-weights", default=None)
    parser.add_argument("--text-weights", default=None)
    parser.add_argument("--jsc-weight", type=float, default=defaults.jsc_weight)
    parser.add_argument("--cls-target", default=defaults.cls_target, choices=("matched", "iou"),
                        help="class target: the matched query (paper) or each query's mask IoU")
    parser.add_argument("--rank-weight", type=float, default=defaults.rank_weight,
                        help="weight of the query-ranking loss (softmax over the N queries of a "
                        "video towards the best mask IoU); 0 = off, as in the paper")
    parser.add_argument("--train-scales", type=int, nargs="+", default=list(defaults.train_scales))
    parser.add_argument("--max-size", type=int, default=defaults.max_size)
    parser.add_argument("--flip-prob", type=float, default=defaults.flip_prob)
    parser.add_argument("--reverse-prob", type=float, default=defaults.reverse_prob,
                        help="play a training clip backwards with this probability, swapping the "
                             "direction after a motion verb ('moving left' -> 'moving right'); "
                             "ytvos/davis only")
    parser.add_argument("--tensorboard", action="store_true", help="also log to OUT/tensorboard")
    parser.add_argument("--pair-expressions", action="store_true",
                        help="batch two expressions of one clip that refer to different objects")
    parser.add_argument("--init-from", default=None, metavar="CKPT_DIR",
                        help="start from this checkpoint's weights (fine-tuning); tensors it "
                        "lacks, e.g. of a module the config adds, keep their initialisation")
    parser.add_argument("--train-only", nargs="+", default=[], metavar="PREFIX",
                        help="train only parameters whose names start with these prefixes "
                        "(e.g. heads.selection heads.class_head); the rest is frozen")
    args = vars(parser.parse_args(argv))
    overrides = parse_overrides(parser, args.pop("overrides"))
    return TrainConfig.from_dict(args | {"overrides": overrides})


def parse_overrides(parser: argparse.ArgumentParser, items: list[str]) -> dict:
    """``--set KEY=VALUE`` items -> {key: value}, values read as JSON where they parse
    (``false``, ``2``, ``[32,64]``) and as strings otherwise."""
    overrides = {}
    for item in items:
        if "=" not in item:
            parser.error(f"--set needs KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = parse_args(argv)
    final = train(config)
    print(final)


if __name__ == "__main__":
    sys.exit(main())
