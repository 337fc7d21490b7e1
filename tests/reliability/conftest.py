"""Fixtures of the reliability tests: one toy bundle per session, and a fresh copy of it for
each test that edits a bundle (manifest, files, symlinks) as a user or a broken tool would."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bundles import write_numpy_toy


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> Path:
    return write_numpy_toy(tmp_path_factory.mktemp("toy") / "bundle").root


@pytest.fixture
def bundle(toy, tmp_path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(toy, copy)
    return copy
