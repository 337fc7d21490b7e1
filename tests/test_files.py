"""runtime.files: hashing, atomic writes and directory replacement with rollback, on real files
whose renames really fail (no mocks)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from runtime import manifest
from runtime.files import atomic_write_bytes, atomic_write_text, replace_directory, sha256_file


def make_dir(path: Path, **files: str) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def contents(path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(path.iterdir())}


def leftovers(parent: Path) -> list[str]:
    """Names an interrupted replacement would leave behind (the aside copy)."""
    return sorted(p.name for p in parent.iterdir() if ".old-" in p.name)


def test_sha256_and_atomic_writes(tmp_path):
    data = os.urandom(3 << 20)  # several read chunks
    atomic_write_bytes(tmp_path / "sub" / "blob.bin", data)
    assert sha256_file(tmp_path / "sub" / "blob.bin") == hashlib.sha256(data).hexdigest()
    atomic_write_text(tmp_path / "note.txt", "héllo\n")
    assert (tmp_path / "note.txt").read_bytes() == "héllo\n".encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["note.txt", "sub"]  # no temp files


def test_atomic_write_that_cannot_rename_leaves_no_temp_file(tmp_path):
    (tmp_path / "taken").mkdir()  # a file cannot be renamed over a directory
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "taken", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_manifest_reexports_the_same_helpers():
    assert manifest.sha256_file is sha256_file
    assert manifest.atomic_write_bytes is atomic_write_bytes
    assert manifest.atomic_write_text is atomic_write_text


def test_replace_into_a_new_target(tmp_path):
    staging = make_dir(tmp_path / ".stage", a="new")
    replace_directory(staging, tmp_path / "out")
    assert contents(tmp_path / "out") == {"a": "new"}
    assert not staging.exists()


def test_replace_an_existing_target_whole(tmp_path):
    target = make_dir(tmp_path / "out", a="old", stale="old only")
    staging = make_dir(tmp_path / ".stage", a="new")
    replace_directory(staging, target)
    assert contents(target) == {"a": "new"}  # nothing of the old directory survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # aside copy deleted


def test_vanished_staging_puts_the_old_target_back(tmp_path):
    """The target is moved aside, then the rename of the (gone) staging fails: rollback."""
    target = make_dir(tmp_path / "out", a="old")
    with pytest.raises(FileNotFoundError):
        replace_directory(tmp_path / ".stage-gone", target)
    assert contents(target) == {"a": "old"}
    assert leftovers(tmp_path) == []


def test_rename_refused_by_the_os_puts_the_old_target_back(tmp_path):
    """Staging that contains the target: once the target is aside, renaming a directory into
    its own subtree fails (EINVAL) and the target must come back."""
    staging = make_dir(tmp_path / "stage", a="new")
    target = make_dir(staging / "out", a="old")
    with pytest.raises(OSError):
        replace_directory(staging, target)
    assert contents(target) == {"a": "old"}
    assert leftovers(staging) == []
    assert (staging / "a").read_text() == "new"


def test_cross_device_staging_puts_the_old_target_back(tmp_path):
    """Staging on another filesystem: rename gives EXDEV after the target went aside."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem at /dev/shm")
    staging = make_dir(shm / f"proxyformer-test-{os.getpid()}-{tmp_path.name}", a="new")
    try:
        target = make_dir(tmp_path / "out", a="old")
        with pytest.raises(OSError):
            replace_directory(staging, target)
        assert contents(target) == {"a": "old"}
        assert leftovers(tmp_path) == []
    finally:
        for file in staging.iterdir():
            file.unlink()
        staging.rmdir()


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores directory permissions"
)
def test_read_only_parent_leaves_target_and_staging(tmp_path):
    parent = make_dir(tmp_path / "parent")
    target = make_dir(parent / "out", a="old")
    staging = make_dir(tmp_path / ".stage", a="new")
    parent.chmod(0o555)
    try:
        with pytest.raises(PermissionError):
            replace_directory(staging, target)
    finally:
        parent.chmod(0o755)
    assert contents(target) == {"a": "old"}
    assert contents(staging) == {"a": "new"}
    assert leftovers(parent) == []
