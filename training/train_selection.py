"""Stage 2: train the class path of a frozen stage-1 model on cached features.

    python training/train_selection.py --init-from runs/tiny/stage1/final --data data/synth \\
        --out runs/tiny/stage2 --set extensions.video_select=true --epochs 20
    python training/train_selection.py ... --resume      # continue after the last whole epoch
    python training/train_selection.py ... --overwrite   # replace the run already in --out

Adds the modules the ``--set`` changes bring (the video-level selection module with
``extensions.video_select=true``), freezes everything but ``heads.selection``,
``heads.class_head`` and ``heads.pool_proj``, caches what they read on whole videos once
(``OUT/cache-<split>.pt``, reused while the checkpoint and data options are the same) and
trains them; the model is written to ``OUT/final``. See ``training.selection``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from training.cli import add_run_arguments, parse_overrides
from training.selection import SelectionConfig, SelectionTrainer


def parse_args(argv: list[str] | None = None) -> tuple[SelectionConfig, bool]:
    """``train_selection.py``'s command line -> its ``SelectionConfig`` and ``--resume``."""
    defaults = SelectionConfig(init_from="-")
    parser = argparse.ArgumentParser(description="Train the class path of a frozen checkpoint.")
    parser.add_argument("--init-from", required=True, metavar="CKPT_DIR",
                        help="the stage-1 checkpoint whose weights are frozen")
    add_run_arguments(parser, defaults, "extensions.video_select=true")
    parser.add_argument("--dataset", default=defaults.dataset, choices=("ytvos", "davis"))
    parser.add_argument("--split", default=defaults.split)
    parser.add_argument("--valid-split", default=None,
                        help="also cache this split and log its selection scores every epoch")
    parser.add_argument("--no-flip", dest="flip", action="store_false",
                        help="do not also cache each video mirrored (left/right swapped in the "
                        "text)")
    parser.add_argument("--short-side", type=int, default=None,
                        help="resize frames to this short side, as evaluate.py (default: native)")
    parser.add_argument("--max-size", type=int, default=defaults.max_size)
    args = vars(parser.parse_args(argv))
    overrides = parse_overrides(parser, args.pop("overrides"))
    resume = args.pop("resume")
    return SelectionConfig(**args, overrides=overrides), resume


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config, resume = parse_args(argv)
    final = SelectionTrainer(config).train(resume=resume)
    print(final)


if __name__ == "__main__":
    sys.exit(main())
