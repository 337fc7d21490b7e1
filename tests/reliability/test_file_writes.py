"""Issue items on how bundles and checkpoints are written: permissions follow the user's umask
(#12), and a crash at any point of a directory replacement leaves something to recover from
(#2). Real files, real renames; the crash is a real interruption of ``replace_directory``."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.files import (
    atomic_write_text,
    leftovers,
    make_staging_dir,
    recover_directory,
    replace_directory,
)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_and_staging_follow_the_umask(tmp_path, umask_022):
    atomic_write_text(tmp_path / "manifest.json", "{}")
    assert mode(tmp_path / "manifest.json") == 0o644  # tempfile alone gives 0600
    staging = make_staging_dir(tmp_path / "bundle")
    assert mode(staging) == 0o755  # mkdtemp alone gives 0700
    replace_directory(staging, tmp_path / "bundle")
    assert mode(tmp_path / "bundle") == 0o755


def test_a_stricter_umask_is_honoured(tmp_path):
    old = os.umask(0o077)
    try:
        atomic_write_text(tmp_path / "private.json", "{}")
    finally:
        os.umask(old)
    assert mode(tmp_path / "private.json") == 0o600


# A process that dies (os._exit, no clean-up, no rollback) as replace_directory makes its
# second rename: the previous version is aside and nothing is at the target.
DIE_BETWEEN_RENAMES = """
import os, sys
from pathlib import Path
from runtime.files import make_staging_dir, replace_directory
target = Path(sys.argv[1])
staging = make_staging_dir(target)
(staging / "weights").write_text("new")
real_replace = os.replace
def replace(src, dst):
    if Path(src) == staging:
        os._exit(9)
    real_replace(src, dst)
os.replace = replace
replace_directory(staging, target)
"""


def test_crash_between_the_renames_is_recovered(tmp_path):
    target = tmp_path / "checkpoint"
    target.mkdir()
    (target / "weights").write_text("previous")
    run = subprocess.run([sys.executable, "-c", DIE_BETWEEN_RENAMES, str(target)],
                         check=False, cwd=Path(__file__).parents[2])  # fmt: skip
    assert run.returncode == 9
    assert not target.exists()
    assert leftovers(target)["old"] and leftovers(target)["tmp"]
    restored = recover_directory(target)
    assert restored is not None and (target / "weights").read_text() == "previous"
    assert leftovers(target) == {"tmp": [], "old": []}  # staging and aside copies are gone


def test_leftovers_beside_an_intact_target_are_removed(tmp_path):
    target = tmp_path / "final"
    target.mkdir()
    (target / "weights").write_text("current")
    for name in (".final.tmp-1234abcd", ".final.old-1234abcd"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "blob").write_bytes(os.urandom(1024))
    assert recover_directory(target) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    assert (target / "weights").read_text() == "current"


def test_a_saved_checkpoint_is_readable_by_others(tmp_path, umask_022):
    import torch

    from proxyformer.checkpoint import save_checkpoint
    from proxyformer.config import get_preset
    from proxyformer.model import build_proxyformer

    torch.manual_seed(0)
    directory = save_checkpoint(build_proxyformer(get_preset("tiny")), tmp_path / "ckpt")
    assert mode(directory) == 0o755
    assert {p.name: mode(p) for p in directory.iterdir()} == {
        "model.safetensors": 0o644, "config.json": 0o644
    }
