"""Command-line pieces shared by ``training/train.py`` and ``training/train_selection.py``."""

from __future__ import annotations

import argparse
import json


def add_run_arguments(parser: argparse.ArgumentParser, defaults, set_example: str) -> None:
    """The options both trainers have, with the same meaning; ``defaults`` is the trainer's
    config with its default values, ``set_example`` a ``--set`` for the help text."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"change a model config field, e.g. {set_example}")
    parser.add_argument("--data", default=defaults.data)
    parser.add_argument("--out", default=defaults.out)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--lr-min-ratio", type=float, default=defaults.lr_min_ratio,
                        help="the cosine schedule ends at lr * this")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--clip-max-norm", type=float, default=defaults.clip_max_norm)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its checkpoint (a directory with no "
                        "run yet starts one)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in --out (without this or --resume, an "
                        "existing run is refused)")


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


def add_removed(parser: argparse.ArgumentParser, flag: str, instead: str) -> None:
    """A flag that no longer exists: hidden from ``--help``, and passing it (with any values)
    ends with an error that says what to use ``instead``."""

    class Removed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            parser.error(f"{option_string} was removed: {instead}")

    parser.add_argument(flag, nargs="*", action=Removed, help=argparse.SUPPRESS,
                        default=argparse.SUPPRESS)  # fmt: skip
