"""Train ProxyFormer.

    python training/train.py --preset tiny --data data/synth --out runs/tiny
    torchrun --nproc_per_node 2 training/train.py --preset paper-swin-t --data ref-youtube-vos \\
        --out runs/swin-t --backbone-weights swin_tiny_patch244_window877_kinetics400_1k.pth \\
        --text-weights roberta-base
    python training/train.py ... --resume      # continue an interrupted run
    python training/train.py ... --overwrite   # replace the run already in --out

See ``training.trainer`` for what is saved and how resuming stays exact.
"""

from __future__ import annotations

import argparse
import logging
import sys

from proxyformer.config import PRESETS
from training.cli import add_removed, add_run_arguments, parse_overrides
from training.config import TrainConfig
from training.data import DATASETS
from training.trainer import train


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """``train.py``'s command line -> its ``TrainConfig``."""
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description="Train ProxyFormer.")
    parser.add_argument("--preset", default=defaults.preset, choices=sorted(PRESETS))
    add_run_arguments(parser, defaults, "cmie.use_p2v=false")
    parser.add_argument("--dataset", default=defaults.dataset, choices=DATASETS)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--num-frames", type=int, default=defaults.num_frames)
    parser.add_argument("--lr-backbone", type=float, default=defaults.lr_backbone)
    parser.add_argument("--lr-text", type=float, default=defaults.lr_text,
                        help="lr of a trainable text encoder (default: --lr); RoBERTa is frozen by default")
    parser.add_argument("--lr-drop", type=int, nargs="*", default=list(defaults.lr_drop),
                        help="epochs after which the learning rate is multiplied by 0.1")
    parser.add_argument("--lr-drop-steps", type=int, nargs="*", default=[],
                        help="optimizer steps after which the learning rate is multiplied by 0.1")
    parser.add_argument("--lr-schedule", default=defaults.lr_schedule, choices=("step", "cosine"),
                        help="step: x0.1 at --lr-drop epochs / --lr-drop-steps (paper); cosine: "
                        "half a cosine down to --lr-min-ratio of each lr over the run")
    parser.add_argument("--accumulate", type=int, default=defaults.accumulate)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--save-every", type=int, default=defaults.save_every)
    parser.add_argument("--log-every", type=int, default=defaults.log_every)
    parser.add_argument("--amp", default=defaults.amp, choices=("auto", "on", "off"))
    parser.add_argument("--backbone-weights", default=None)
    parser.add_argument("--text-weights", default=None)
    parser.add_argument("--jsc-weight", type=float, default=defaults.jsc_weight)
    parser.add_argument("--cls-target", default=defaults.cls_target, choices=("matched", "iou"),
                        help="class target: the matched query (paper) or each query's mask IoU")
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
    add_removed(parser, "--train-only", "training/train_selection.py trains the class path of a "
                "frozen checkpoint on cached features (the recipe's stage 2: make checkpoint)")
    add_removed(parser, "--rank-weight", "the query-ranking loss did not help the tiny recipe "
                "(docs/experiments/tiny-synthetic.md); --cls-target iou trains the class score "
                "to rank the queries by their mask IoU")
    args = vars(parser.parse_args(argv))
    overrides = parse_overrides(parser, args.pop("overrides"))
    return TrainConfig.from_dict(args | {"overrides": overrides})


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = parse_args(argv)
    final = train(config)
    print(final)


if __name__ == "__main__":
    sys.exit(main())
