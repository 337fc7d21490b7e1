"""A training run's output directory, the same for both trainers (``train.py`` and
``train_selection.py``)::

    OUT/<options file>   the run's options (train_config.json, selection_config.json)
    OUT/checkpoint/      the latest state: model.safetensors, config.json, tokenizer.json and
                         the training state (training_state.pt, selection_state.pt), written
                         in one atomic step (``proxyformer.checkpoint.save_checkpoint``)
    OUT/final/           the trained model: model.safetensors, config.json, tokenizer.json
    OUT/metrics.csv      one row per logged step or epoch

The training state is a ``torch.save``d dict holding, among the trainer's own entries, the
run's options as JSON; resuming refuses options that differ from them. Its sha256 is written
into the safetensors header of the weights saved with it (the same atomic step), and resuming
refuses a state file that does not match it.

Opening a run (``open``) decides what may happen to what is already in ``OUT``:

- without ``resume`` or ``overwrite``, a directory that holds a run is refused (nothing is
  touched); ``overwrite`` deletes that run's files first (``begin``), so nothing of it stays;
- with ``resume``, what an interrupted save left is recovered first
  (``runtime.files.recover_directory``: the previous checkpoint comes back if the crash fell
  between its two renames, staging copies are deleted); then ``checkpoint/`` must hold weights
  and a training state whose digest matches, or it is an error naming the file. A directory
  with no run in it at all starts fresh (so a job script may always pass ``--resume``); one
  that holds a run but no checkpoint (a run stopped before its first save) is an error, as
  starting over would discard it silently.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from proxyformer.checkpoint import WEIGHTS_NAME, load_weights, read_header, save_checkpoint
from runtime.files import atomic_write_text, leftovers, recover_directory, sha256_file

log = logging.getLogger(__name__)

DIGEST_KEY = "training_state_sha256"  # in model.safetensors' metadata, beside the state


class RunDirectory:
    """Saving, resuming and logging of one run under ``out``.

    Args:
        out: the run's directory.
        options_name: the file the options are written to (``begin``).
        state_name: the training state's file in a checkpoint.
        options_key: the state's entry holding the options as JSON.
        position_key: the metrics column that orders the rows (``step`` or ``epoch``).
        writes: False on the processes of a distributed run that write nothing (rank > 0).
        path_options: the options that name files or directories: recorded and compared in
            their resolved form, so ``data/synth`` and ``/abs/data/synth`` are the same.
    """

    def __init__(
        self, out: str | Path, options_name: str, state_name: str, options_key: str,
        position_key: str, writes: bool = True, path_options: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        self.out = Path(out)
        self.options_name, self.state_name = options_name, state_name
        self.options_key, self.position_key = options_key, position_key
        self.writes = writes
        self.path_options = path_options
        self.checkpoint = self.out / "checkpoint"
        self.final = self.out / "final"
        self.metrics = self.out / "metrics.csv"

    # -- what is there -------------------------------------------------------------------------

    def _entries(self) -> list[Path]:
        """Everything of a run that may be in ``out``, present or not (the feature caches of
        ``train_selection.py`` are not: they are keyed by what they were built from and
        reused by any run that matches)."""
        names = (self.options_name, "checkpoint", "final", "metrics.csv", "tensorboard")
        entries = [self.out / name for name in names]
        for target in (self.checkpoint, self.final):
            found = leftovers(target)
            entries += found["tmp"] + found["old"]
        return entries + self._partial_files()

    def _partial_files(self) -> list[Path]:
        """Temporary files of ``atomic_write_text`` calls a kill interrupted (the options
        file, a rewritten ``metrics.csv``): never complete, so never worth keeping."""
        if not self.out.is_dir():
            return []
        return [p for name in (self.options_name, "metrics.csv")
                for p in self.out.glob(f".{name}.*.tmp") if p.is_file()]  # fmt: skip

    def existing(self) -> list[str]:
        """The names of the files and directories of an earlier run in ``out``."""
        return [p.name for p in self._entries() if p.exists()]

    # -- opening -------------------------------------------------------------------------------

    def record(self, options: dict) -> dict:
        """``options`` as they are saved and compared: JSON values, path options resolved
        (one that names nothing on disk, such as a model id, stays as given)."""
        recorded = json.loads(json.dumps(options))  # tuples as the saved lists
        for key in self.path_options:
            recorded[key] = _resolved(recorded.get(key))
        return recorded

    def open(
        self, options: dict, resume: bool, overwrite: bool, may_change: tuple[str, ...],
        barrier: Callable[[], None] = lambda: None,
    ) -> dict | None:  # fmt: skip
        """Check ``out`` for a run with ``options``; returns the training state to resume
        from, or None for a fresh run. Writes nothing but the recovery of an interrupted save
        (with ``resume``), and nothing at all when it raises.

        Raises ``FileExistsError`` for an earlier run without ``resume`` or ``overwrite``,
        ``FileNotFoundError`` naming what a resume lacks, and ``ValueError`` for a damaged
        state or options (other than ``may_change``) that differ from the saved ones.
        ``barrier`` synchronises the processes of a distributed run after the recovery.
        """
        if resume and overwrite:
            raise ValueError(
                "--resume continues the run in OUT and --overwrite replaces it: pass one"
            )
        found = self.existing()
        if not resume:
            if found and not overwrite:
                raise FileExistsError(
                    f"{self.out} already holds a run ({', '.join(found)}): pass --resume to "
                    "continue it or --overwrite to replace it, or choose another --out"
                )
            return None
        if self.writes:
            for target in (self.checkpoint, self.final):
                recover_directory(target)
            for partial in self._partial_files():
                log.info("removing %s, left by an interrupted write", partial.name)
                partial.unlink()
        barrier()
        if not self.checkpoint.is_dir():
            if self.existing():
                raise FileNotFoundError(
                    f"--resume: {self.out} holds a run ({', '.join(self.existing())}) but no "
                    f"checkpoint/ to resume from (it stopped before its first save); pass "
                    "--overwrite to start it again"
                )
            log.warning("--resume: %s holds no run yet; starting a new one", self.out)
            return None
        state = self._read_state()
        self._compare(state, options, may_change)
        return state

    def _read_state(self) -> dict:
        """``checkpoint/``'s training state, verified against the digest saved with it."""
        weights, path = self.checkpoint / WEIGHTS_NAME, self.checkpoint / self.state_name
        for needed in (weights, path):
            if not needed.is_file():
                raise FileNotFoundError(
                    f"--resume: {needed} is missing, so {self.checkpoint} cannot be resumed "
                    "from; pass --overwrite to start the run again"
                )
        _, metadata = read_header(weights)
        expected = metadata.get(DIGEST_KEY)
        if expected is None:
            log.warning(
                "%s has no digest of %s (saved before digests were recorded): it is loaded "
                "unverified", weights, path.name,
            )  # fmt: skip
        else:
            actual = sha256_file(path)
            if actual != expected:
                raise ValueError(
                    f"--resume: the training state {path} is damaged: its sha256 is {actual}, "
                    f"the checkpoint recorded {expected} ({path.stat().st_size} bytes now)"
                )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError...
            raise ValueError(
                f"--resume: the training state {path} cannot be read ({type(error).__name__}: "
                f"{error}); pass --overwrite to start the run again"
            ) from error
        if not isinstance(state, dict) or not isinstance(state.get(self.options_key), str):
            raise ValueError(  # noqa: TRY004 (bad content, as the other refusals here)
                f"--resume: {path} is not a training state of this trainer (no "
                f"{self.options_key!r} entry)"
            )
        return state

    def _compare(self, state: dict, options: dict, may_change: tuple[str, ...]) -> None:
        """Raise ``ValueError`` listing the options that differ from the saved ones."""
        saved = json.loads(state[self.options_key])
        for key in self.path_options:  # a run saved before paths were recorded resolved
            if key in saved:
                saved[key] = _resolved(saved[key])
        now = self.record(options)
        differing = {
            k: (saved.get(k), v) for k, v in now.items() if k not in may_change and saved.get(k) != v
        }
        if differing:
            raise ValueError(
                f"cannot resume {self.checkpoint} with other options: {differing} (saved, now)"
            )

    def begin(self, options: dict, fresh: bool) -> None:
        """Start writing: for a ``fresh`` run, delete an earlier run's files (``open`` allowed
        it: ``overwrite``); then write the options file."""
        if not self.writes:
            return
        if fresh:
            for path in self._entries():
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
                else:
                    continue
                log.warning("--overwrite: removed %s of the earlier run", path)
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / self.options_name, json.dumps(self.record(options), indent=2))

    # -- saving and loading --------------------------------------------------------------------

    def save(
        self, model: torch.nn.Module, directory: Path, tokenizer, metadata: dict[str, str],
        state: dict | None = None, options: dict | None = None,
    ) -> None:  # fmt: skip
        """Write ``model`` (weights, config, tokenizer) to ``directory`` atomically, with
        ``state`` and ``options`` as the training state file when a state is given; the
        state's sha256 goes into the weights' metadata."""
        if not self.writes:
            return
        extra = None
        if state is not None:
            buffer = io.BytesIO()
            torch.save(state | {self.options_key: json.dumps(self.record(options or {}))}, buffer)
            data = buffer.getvalue()
            extra = {self.state_name: data}
            metadata = metadata | {DIGEST_KEY: hashlib.sha256(data).hexdigest()}
        save_checkpoint(model, directory, tokenizer=tokenizer, extra_files=extra, metadata=metadata)

    def load_weights(self, model: torch.nn.Module) -> None:
        """Load ``checkpoint/``'s weights into ``model`` (after ``open`` returned its state)."""
        load_weights(model, self.checkpoint)

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
        # A row cut short by a kill while it was appended has empty fields: dropped too.
        kept = [
            r for r in rows
            if None not in r.values() and _position(r[self.position_key]) <= resumed_at
        ]  # fmt: skip
        if not kept:  # no header either: the next row writes it
            self.metrics.unlink()
            return
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=list(kept[0]))
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(self.metrics, text.getvalue())  # a crash here keeps the old log

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


def _position(value: str) -> float:
    try:
        return int(value)
    except ValueError:
        return float("inf")


def _resolved(value):
    """A path option's recorded form: absolute and resolved when it names something on disk."""
    if not isinstance(value, str) or not value or not Path(value).expanduser().exists():
        return value
    return str(Path(value).expanduser().resolve())
