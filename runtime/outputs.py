"""What ``python -m runtime segment`` writes for one video, written so that nothing is lost
and nothing is mixed.

One run's output for the video ``<name>`` in ``OUT``:

- ``OUT/Annotations/<name>/<expression>/<frame>.png``: the masks (Ref-YouTube-VOS layout);
- ``OUT/<name>_overlay.mp4`` (or ``.gif``): the overlay, unless turned off;
- ``OUT/<name>_result.json``: the run's summary and, under ``files``, every file the run wrote
  (path relative to ``OUT`` and size in bytes). It is written last: a result JSON whose
  ``files`` all exist with those sizes is a complete run.

Everything is written aside first (the masks into a staging directory beside
``Annotations/<name>``, the overlay into a hidden temporary file) and checked; only then are
the earlier outputs of that name replaced, as a whole (``runtime.files.replace_directory``).
A run that fails before that point leaves the earlier output as it was. An ``OUT`` that
already holds outputs of ``<name>`` is refused unless the run may overwrite them; outputs of
other names are never touched.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import tempfile
from pathlib import Path

from .files import (
    apply_umask,
    atomic_write_text,
    make_staging_dir,
    recover_directory,
    replace_directory,
)

log = logging.getLogger(__name__)

OVERLAY_SUFFIXES = (".mp4", ".gif")


class OutputError(ValueError):
    """An output directory or video name that cannot be used, or outputs already there."""


def check_name(name: str) -> str:
    """``name`` if it is a plain file name: the video's outputs are named after it, so a path
    separator or ``..`` would put them outside ``OUT``.

    Raises:
        OutputError: naming the value and what a name must be.
    """
    bad = (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or (os.altsep is not None and os.altsep in name)
        or "\0" in name
    )
    if bad:
        raise OutputError(
            f"--name {name!r} is not a plain name: the video's outputs are named after it, so "
            "it must be non-empty, not '.' or '..', and hold no '/' or '\\'"
        )
    return name


def default_name(video: str | Path) -> str:
    """The video's name in the output layout: a file's name without suffix, a folder's name."""
    path = Path(video)
    return path.resolve().name if path.is_dir() else path.stem


def check_out_dir(out: Path) -> None:
    """Refuse an ``OUT`` that cannot hold the outputs, before any work: an existing file, a
    path through a file, or a directory that cannot be written.

    Raises:
        OutputError: naming the path and what is wrong with it.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, expected a directory (or a path to create)")
    existing = out
    while not existing.exists():
        if existing.is_symlink():
            raise OutputError(f"--out {out}: {existing} is a broken symbolic link")
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"--out {out} cannot be created: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == out else f"cannot be created in {existing}"
        raise OutputError(f"--out {out} {what} (permission denied)")
    annotations = out / "Annotations"
    if annotations.exists() and not annotations.is_dir():
        raise OutputError(f"--out {out}: {annotations} is a file, expected a directory")


class RunOutput:
    """One video's outputs in ``out``, staged and then put in place as a whole.

    Use as a context manager; leaving it without ``commit`` (an error) removes what was
    staged and leaves any earlier output as it was::

        with RunOutput(out, name, overwrite) as output:
            write_masks(masks, names, output.masks_dir / "0")
            write_video(frames, output.overlay_path(".mp4"))
            output.commit(summary)

    Raises (on creation, before anything is written):
        OutputError: ``out`` cannot be used, or it already holds outputs of ``name`` and
            ``overwrite`` is False.
    """

    def __init__(self, out: str | Path, name: str, overwrite: bool = False) -> None:
        self.out, self.name = Path(out), check_name(name)
        check_out_dir(self.out)
        self.annotations = self.out / "Annotations" / self.name
        self.result = self.out / f"{self.name}_result.json"
        self._recover()
        found = self.existing()
        if found and not overwrite:
            shown = ", ".join(str(p.relative_to(self.out)) for p in found)
            raise OutputError(
                f"--out {self.out} already holds outputs of the video {self.name!r} ({shown}); "
                "pass --overwrite to replace them, or choose another --out or --name"
            )
        self.masks_dir: Path | None = None
        self._overlay: tuple[Path, Path] | None = None  # (temporary, final)

    def _recover(self) -> None:
        """Undo what a run of ``name`` killed part-way left, so that the check for earlier
        outputs sees (and ``overwrite`` replaces) a consistent state."""
        if self.annotations.parent.is_dir():
            # Killed while replacing Annotations/<name>: the earlier version is put back.
            recover_directory(self.annotations)
        if not self.out.is_dir():
            return
        for temporary in self.out.glob(f".{glob.escape(self.name)}_overlay.*"):
            log.info("removing %s, left by an interrupted run", temporary)
            temporary.unlink(missing_ok=True)
        aside = self.out / f".{self.result.name}.old"
        if aside.exists():
            # Killed during commit: whether the files the earlier result JSON lists were
            # replaced yet is unknown, so it is not put back; without a result JSON the
            # outputs of this name read as incomplete, which they may be.
            log.warning("%s: a run of %r was interrupted while replacing its outputs; they "
                        "may be incomplete (no result JSON)", self.out, self.name)  # fmt: skip
            aside.unlink()

    def existing(self) -> list[Path]:
        """The outputs of ``name`` already in ``out``."""
        candidates = [self.annotations, self.result]
        candidates += [self.out / f"{self.name}_overlay{s}" for s in OVERLAY_SUFFIXES]
        return [p for p in candidates if p.exists() or p.is_symlink()]

    def __enter__(self) -> RunOutput:  # noqa: PYI034 (typing.Self needs Python 3.11)
        self.masks_dir = make_staging_dir(self.annotations)
        return self

    def overlay_path(self, suffix: str) -> Path:
        """Where to write the overlay (a temporary file in ``out`` with ``suffix``, which
        chooses the format); ``commit`` moves it to ``<name>_overlay<suffix>``."""
        if suffix not in OVERLAY_SUFFIXES:
            raise ValueError(f"overlay suffix must be one of {OVERLAY_SUFFIXES}, got {suffix!r}")
        # Named after its destination, so that an error about it says which overlay it is.
        fd, temporary = tempfile.mkstemp(dir=self.out, prefix=f".{self.name}_overlay{suffix}.",
                                         suffix=suffix)  # fmt: skip
        os.close(fd)
        self._overlay = (Path(temporary), self.out / f"{self.name}_overlay{suffix}")
        return self._overlay[0]

    def destination(self, path: Path) -> Path:
        """Where a staged or temporary file of this run goes once committed."""
        path = Path(path)
        if self.masks_dir is not None and path.is_relative_to(self.masks_dir):
            return self.annotations / path.relative_to(self.masks_dir)
        if self._overlay is not None and path == self._overlay[0]:
            return self._overlay[1]
        return path

    def commit(self, summary: dict) -> dict:
        """Put the staged outputs in place, remove the earlier ones of ``name`` that this run
        did not write (an overlay of the other format), and write the result JSON, listing
        every file, last. Returns the summary as written.

        The earlier result JSON is moved aside first and put back if a step fails, so that a
        result JSON never describes files of another run."""
        assert self.masks_dir is not None, "commit outside the with block"
        aside = None
        if self.result.exists():
            aside = self.result.with_name(f".{self.result.name}.old")
            os.replace(self.result, aside)
        try:
            replace_directory(self.masks_dir, self.annotations)
        except BaseException:
            if aside is not None:
                os.replace(aside, self.result)
            raise
        self.masks_dir = None
        written = sorted(p for p in self.annotations.rglob("*") if p.is_file())
        overlays = [self.out / f"{self.name}_overlay{s}" for s in OVERLAY_SUFFIXES]
        if self._overlay is not None:
            temporary, final = self._overlay
            # mkstemp made it 0600 and the writers kept that mode: give it a plain file's.
            apply_umask(temporary, directory=False)
            os.replace(temporary, final)
            self._overlay = None
            written.append(final)
        for stale in overlays:
            if stale not in written and (stale.exists() or stale.is_symlink()):
                stale.unlink()
        summary = dict(summary)
        summary["files"] = [
            {"path": p.relative_to(self.out).as_posix(), "bytes": p.stat().st_size} for p in written
        ]
        atomic_write_text(self.result, json.dumps(summary, indent=2) + "\n")
        if aside is not None:
            aside.unlink(missing_ok=True)
        return summary

    def __exit__(self, *exc) -> None:
        # Nothing staged survives a failed run; the earlier outputs were never touched.
        if self.masks_dir is not None:
            import shutil

            shutil.rmtree(self.masks_dir, ignore_errors=True)
        if self._overlay is not None:
            self._overlay[0].unlink(missing_ok=True)
