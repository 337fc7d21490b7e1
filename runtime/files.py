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


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back: POSIX has no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | Path, directory: bool | None = None) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have: 0666 or 0777 less the
    umask. ``tempfile`` creates private files (0600) and directories (0700) on purpose; a
    bundle or checkpoint staged through them must not stay private once it is in place, or
    another user of a shared model store cannot read it."""
    path = Path(path)
    if directory is None:
        directory = path.is_dir()
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def make_staging_dir(target: str | Path, kind: str = "tmp") -> Path:
    """A fresh directory beside ``target`` (``.<name>.<kind>-<random>``), with the umask's
    permissions, to be filled and then moved into place by ``replace_directory``.

    The name pattern is what ``recover_directory`` recognises as a leftover."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{kind}-", dir=target.parent))
    apply_umask(staging, directory=True)
    return staging


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write through a temporary file in the same directory and rename it into place; the
    file gets the umask's permissions, as an ordinary write would give it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        apply_umask(tmp, directory=False)
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


def leftovers(target: str | Path) -> dict[str, list[Path]]:
    """What interrupted ``replace_directory`` calls on ``target`` left beside it: staging
    directories (``.<name>.tmp-*``) and previous versions renamed aside (``.<name>.old-*``),
    each list newest first."""
    target = Path(target)
    found: dict[str, list[Path]] = {"tmp": [], "old": []}
    if not target.parent.is_dir():
        return found
    for kind in found:
        paths = [p for p in target.parent.glob(f".{target.name}.{kind}-*") if p.is_dir()]
        found[kind] = sorted(paths, key=lambda p: p.stat().st_mtime, reverse=True)
    return found


def recover_directory(target: str | Path) -> Path | None:
    """Undo what a crash during ``replace_directory(staging, target)`` left, and return the
    previous version put back, if any.

    - ``target`` missing but renamed aside (the crash fell between the two renames): the
      newest aside copy becomes ``target`` again.
    - Staging directories (a crash before the moves) and aside copies of a ``target`` that is
      in place (a crash before the final clean-up) are deleted: they are never the newest
      complete version. A staging directory is incomplete by definition, since it is only
      moved once every file in it is written.
    """
    target = Path(target)
    found = leftovers(target)
    restored = None
    if not target.exists() and found["old"]:
        restored = found["old"].pop(0)
        os.replace(restored, target)
        log.warning(
            "%s was missing after an interrupted replacement; restored the previous version "
            "from %s", target, restored.name,
        )
    for path in found["tmp"] + found["old"]:
        log.info("removing %s, left by an interrupted write of %s", path.name, target.name)
        shutil.rmtree(path, ignore_errors=True)
    return restored
