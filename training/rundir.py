"""A training run's output directory, the same for both trainers (``train.py`` and
``train_selection.py``)::

    OUT/<options file>   the run's options (train_config.json, selection_config.json)
    OUT/checkpoint/      the latest state: model.safetensors, config.json, tokenizer.json and
                         the training state (training_state.pt, selection_state.pt), written
                         in one atomic step (``proxyformer.checkpoint.save_checkpoint``)
    OUT/final/           the trained model: model.safetensors, config.json, tokenizer.json
    OUT/metrics.csv      one row per logged step or epoch

The training state is a ``torch.save``d dict holding, among the trainer's own entries, the
run's options as JSON; resuming refuses options that differ from them.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import torch

from proxyformer.checkpoint import load_weights, save_checkpoint

log = logging.getLogger(__name__)


class RunDirectory:
    """Saving, resuming and logging of one run under ``out``.

    Args:
        out: the run's directory.
        options_name: the file the options are written to (``begin``).
        state_name: the training state's file in a checkpoint.
        options_key: the state's entry holding the options as JSON.
        position_key: the metrics column that orders the rows (``step`` or ``epoch``).
        writes: False on the processes of a distributed run that write nothing (rank > 0).
    """

    def __init__(
        self, out: str | Path, options_name: str, state_name: str, options_key: str,
        position_key: str, writes: bool = True,
    ) -> None:  # fmt: skip
        self.out = Path(out)
        self.options_name, self.state_name = options_name, state_name
        self.options_key, self.position_key = options_key, position_key
        self.writes = writes
        self.checkpoint = self.out / "checkpoint"
        self.final = self.out / "final"
        self.metrics = self.out / "metrics.csv"

    def begin(self, options: dict) -> None:
        """Create the directory and write the options file."""
        if self.writes:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / self.options_name).write_text(json.dumps(options, indent=2))

    def has_state(self) -> bool:
        """Whether ``checkpoint/`` holds a training state to resume from."""
        return (self.checkpoint / self.state_name).is_file()

    def save(
        self, model: torch.nn.Module, directory: Path, tokenizer, metadata: dict[str, str],
        state: dict | None = None, options: dict | None = None,
    ) -> None:  # fmt: skip
        """Write ``model`` (weights, config, tokenizer) to ``directory`` atomically, with
        ``state`` and ``options`` as the training state file when a state is given."""
        if not self.writes:
            return
        extra = None
        if state is not None:
            buffer = io.BytesIO()
            torch.save(state | {self.options_key: json.dumps(options)}, buffer)
            extra = {self.state_name: buffer.getvalue()}
        save_checkpoint(model, directory, tokenizer=tokenizer, extra_files=extra, metadata=metadata)

    def restore(self, model: torch.nn.Module, options: dict, may_change: tuple[str, ...]) -> dict:
        """Load ``checkpoint/``'s weights into ``model`` and return its training state.

        Raises ``FileNotFoundError`` naming a missing state file and ``ValueError`` listing
        the options (other than ``may_change``) that differ from the saved ones.
        """
        path = self.checkpoint / self.state_name
        if not path.is_file():
            raise FileNotFoundError(f"no training state to resume from: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved = json.loads(state[self.options_key])
        now = json.loads(json.dumps(options))  # tuples as the saved lists
        differing = {
            k: (saved.get(k), v) for k, v in now.items() if k not in may_change and saved.get(k) != v
        }
        if differing:
            raise ValueError(
                f"cannot resume {self.checkpoint} with other options: {differing} (saved, now)"
            )
        load_weights(model, self.checkpoint)
        return state

    def restart_metrics(self, resumed_at: int | None) -> None:
        """A fresh run (``resumed_at`` None) starts a fresh log; a resumed one drops the rows
        logged after the position it resumes from (an interrupted run may have logged more)."""
        if not self.writes or not self.metrics.exists():
            return
        if resumed_at is None:
            self.metrics.unlink()
            return
        with open(self.metrics, newline="") as handle:
            rows = list(csv.DictReader(handle))
        kept = [r for r in rows if int(r[self.position_key]) <= resumed_at]
        if not kept:  # no header either: the next row writes it
            self.metrics.unlink()
            return
        with open(self.metrics, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(kept[0]))
            writer.writeheader()
            writer.writerows(kept)

    def log_row(self, row: dict) -> None:
        """Append a row to ``metrics.csv`` (with the header when the file is new)."""
        if not self.writes:
            return
        new = not self.metrics.exists()
        with open(self.metrics, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
