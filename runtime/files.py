"""File helpers shared by every writer of bundles and checkpoints: hashing, atomic writes, and
replacing a directory as a whole.

They live in ``runtime`` because the runtime owns the bundle contract (``runtime.manifest``
hashes and writes with them) and never imports torch; export, calibration, training and
``proxyformer.checkpoint`` use the same functions, so there is one rule for "written safely".
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

log = logging.getLogger(__name__)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in ``chunk``-byte blocks (graphs can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write through a temporary file in the same directory and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """``atomic_write_bytes`` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode())


def replace_directory(staging: str | Path, target: str | Path) -> None:
    """Move the directory ``staging`` to ``target``, replacing an existing ``target`` whole.

    An existing target is first renamed aside (``.<name>.old-<random>`` in its parent), then
    ``staging`` is renamed to ``target``; if that rename fails the old target is renamed back,
    so a failed replacement leaves the previous directory where it was. The aside copy is
    deleted only once the new directory is in place. Should putting it back fail too, the
    error names where the previous contents are.
    """
    staging, target = Path(staging), Path(target)
    if not target.exists():
        os.replace(staging, target)
        return
    aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(target, aside)
    try:
        os.replace(staging, target)
    except BaseException as error:
        try:
            os.replace(aside, target)
        except OSError as restore_error:
            raise OSError(
                f"moving {staging} to {target} failed ({error}) and so did putting the previous "
                f"{target.name} back ({restore_error}): its contents are in {aside}"
            ) from error
        raise
    shutil.rmtree(aside, ignore_errors=True)
    log.debug("replaced %s with %s", target, staging)
