"""Issue items on training runs: an existing run is never replaced by accident (#1), a crash at
any point of a checkpoint save resumes from the newest complete checkpoint (#2), a damaged
training state is refused by name (#3), and a refused resume writes nothing while a moved run
or a relative path still resumes (#4). The runs are real (the tiny preset, a few steps on a
synthetic set); the crashes are real processes dying inside ``replace_directory``."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from proxyformer.checkpoint import save_checkpoint
from proxyformer.config import get_preset
from proxyformer.model import build_proxyformer
from proxyformer.text import load_tokenizer
from training.selection import SelectionConfig, SelectionTrainer
from training.train import main, parse_args
from training.trainer import Trainer, train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def synth(make_synthetic):
    return make_synthetic(videos=3, frames=4, seed=1)


def arguments(data, out, *extra) -> list[str]:
    """``training/train.py``'s command line for a tiny run of a few 64-pixel steps."""
    return ["--preset", "tiny", "--data", str(data), "--out", str(out), "--batch-size", "2",
            "--num-frames", "4", "--workers", "0", "--train-scales", "64", "--log-every", "1",
            "--lr", "1e-3", "--seed", "5", *extra]  # fmt: skip


def contents(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` with its bytes (what a refusal must leave alone)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def steps(out: Path) -> list[int]:
    import csv

    with open(out / "metrics.csv", newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def two_steps(synth, tmp_path_factory):
    """A finished run of 2 steps (checkpoint, final, metrics), copied by the tests that edit it."""
    out = tmp_path_factory.mktemp("run") / "run"
    main(arguments(synth, out, "--max-steps", "2"))
    return out


@pytest.fixture
def run(two_steps, tmp_path):
    return Path(shutil.copytree(two_steps, tmp_path / "run"))


# -- 1. an existing run needs --resume or --overwrite --------------------------------------------


def test_an_existing_run_is_refused_without_resume_or_overwrite(synth, run):
    before = contents(run)
    with pytest.raises(FileExistsError, match=r"already holds a run \(train_config.json, "
                       r"checkpoint, final, metrics.csv\): pass --resume .* or --overwrite"):
        main(arguments(synth, run, "--max-steps", "1"))
    assert contents(run) == before


def test_overwrite_replaces_the_earlier_run_wholly(synth, run):
    class SigtermAfterFirstStep(Trainer):  # a real SIGTERM, as from a scheduler, at step 1
        def _log_row(self, row):
            super()._log_row(row)
            os.kill(os.getpid(), signal.SIGTERM)

    SigtermAfterFirstStep(parse_args(arguments(synth, run, "--max-steps", "5", "--overwrite"))).train()
    # Nothing of the earlier 2-step run is left: no final/, the log starts at step 1 again.
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint", "metrics.csv", "train_config.json"]
    assert steps(run) == [1]
    assert torch.load(run / "checkpoint/training_state.pt", weights_only=True)["step"] == 1
    with pytest.raises(ValueError, match="--resume continues the run .* --overwrite replaces it"):
        parse_args(arguments(synth, run, "--resume", "--overwrite"))


def test_the_selection_trainer_refuses_an_existing_run_too(synth, tmp_path):
    config = get_preset("tiny-synthetic", **{"extensions.video_select": False})
    torch.manual_seed(0)
    stage1 = save_checkpoint(build_proxyformer(config), tmp_path / "stage1",
                             tokenizer=load_tokenizer(config))  # fmt: skip
    options = {"init_from": str(stage1), "data": str(synth), "out": str(tmp_path / "stage2"),
               "epochs": 1, "batch_size": 2, "flip": False,
               "overrides": {"extensions.video_select": True}}  # fmt: skip
    SelectionTrainer(SelectionConfig(**options)).train()
    before = contents(tmp_path / "stage2")
    with pytest.raises(FileExistsError, match="stage2 already holds a run"):
        SelectionTrainer(SelectionConfig(**options)).train()
    assert contents(tmp_path / "stage2") == before
    SelectionTrainer(SelectionConfig(**options, overwrite=True)).train()
    assert steps_of_selection(tmp_path / "stage2") == [1]


def steps_of_selection(out: Path) -> list[int]:
    return [int(line.split(",")[0]) for line in (out / "metrics.csv").read_text().splitlines()[1:]]


# -- 2. a crash during a checkpoint save -----------------------------------------------------------

# Runs training/train.py and dies (os._exit: no clean-up, no rollback) at one point of the
# second checkpoint save (--save-every 1), or of the first for "first-save".
CRASH_IN_SAVE = """
import os, shutil, sys
from pathlib import Path
point, out = sys.argv[1], Path(sys.argv[2])
real_replace, real_rmtree = os.replace, shutil.rmtree
def staging(path):
    return Path(path).name.startswith(".checkpoint.tmp-")
def replace(src, dst):
    aside = any(out.glob(".checkpoint.old-*"))
    if point == "first-save" and staging(src):
        os._exit(9)  # the first checkpoint staged, not yet in place
    if point == "before-renames" and Path(dst).name.startswith(".checkpoint.old-"):
        os._exit(9)  # the new checkpoint staged, the previous one untouched
    if point == "between-renames" and staging(src) and aside:
        os._exit(9)  # the previous checkpoint renamed aside, the new one not in place
    real_replace(src, dst)
def rmtree(path, *args, **kwargs):
    if point == "before-cleanup" and Path(path).name.startswith(".checkpoint.old-"):
        os._exit(9)  # the new checkpoint in place, the previous one still aside
    real_rmtree(path, *args, **kwargs)
os.replace, shutil.rmtree = replace, rmtree
from training.train import main
main(sys.argv[3:])
"""


def crash_in_save(point: str, synth, out: Path) -> list[str]:
    argv = arguments(synth, out, "--max-steps", "3", "--save-every", "1")
    threads = str(torch.get_num_threads())
    crashed = subprocess.run([sys.executable, "-c", CRASH_IN_SAVE, point, str(out), *argv],
                             cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
                             env=os.environ | {"OMP_NUM_THREADS": threads})  # fmt: skip
    assert crashed.returncode == 9, crashed.stderr[-3000:]
    return argv


@pytest.mark.parametrize(("point", "newest"), [
    ("between-renames", 1),
    pytest.param("before-renames", 1, marks=pytest.mark.slow),
    pytest.param("before-cleanup", 2, marks=pytest.mark.slow),
])  # fmt: skip
def test_a_crash_during_a_save_resumes_from_the_newest_complete_checkpoint(
    synth, tmp_path, caplog, point, newest
):
    out = tmp_path / "run"
    argv = crash_in_save(point, synth, out)
    assert any(out.glob(".checkpoint.*-*")), "the crash left no staging or aside copy"
    logged = (out / "metrics.csv").read_text().splitlines()
    with caplog.at_level(logging.INFO, logger="training.trainer"):
        final = train(parse_args([*argv, "--resume"]))
    assert f"at step {newest} (epoch" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint", "final", "metrics.csv", "train_config.json"
    ]  # the staging and aside copies are gone
    # The rows up to the resumed step are the interrupted run's own, the rest follow once.
    assert (out / "metrics.csv").read_text().splitlines()[: newest + 1] == logged[: newest + 1]
    assert steps(out) == [1, 2, 3]
    assert final == out / "final" and (final / "model.safetensors").is_file()


def test_a_run_that_died_in_its_first_save_is_not_silently_restarted(synth, tmp_path):
    out = tmp_path / "run"
    argv = crash_in_save("first-save", synth, out)
    with pytest.raises(FileNotFoundError, match=r"holds a run \(train_config.json, metrics.csv\) "
                       r"but no checkpoint/ .* --overwrite to start it again"):
        train(parse_args([*argv, "--resume"]))
    assert not any(out.glob(".checkpoint.*-*"))  # the incomplete staging copy was removed
    # A directory without any run may be resumed: a job script can always pass --resume.
    train(parse_args(arguments(synth, tmp_path / "new", "--max-steps", "1", "--resume")))
    assert steps(tmp_path / "new") == [1]


# -- 2/3. a missing or damaged training state ------------------------------------------------------


def test_a_checkpoint_without_its_training_state_is_an_error_naming_it(synth, run):
    (run / "checkpoint/training_state.pt").unlink()
    before = contents(run)
    with pytest.raises(FileNotFoundError, match=rf"{run}/checkpoint/training_state.pt is missing"):
        main(arguments(synth, run, "--max-steps", "4", "--resume"))
    assert contents(run) == before


def flip_bytes(data: bytes) -> bytes:
    """2,000 bytes in the middle of the file inverted (inside the optimizer's tensors)."""
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 2000]) + data[middle + 2000 :]


@pytest.mark.parametrize("damage", ["flipped", "truncated", "empty"])
def test_a_damaged_training_state_is_refused(synth, run, damage):
    path = run / "checkpoint/training_state.pt"
    data = path.read_bytes()
    path.write_bytes({"flipped": flip_bytes(data), "truncated": data[: len(data) // 2],
                      "empty": b""}[damage])  # fmt: skip
    before = contents(run)
    with pytest.raises(ValueError, match=rf"the training state {path} is damaged: its sha256 is"):
        main(arguments(synth, run, "--max-steps", "4", "--resume"))
    assert contents(run) == before


def test_an_unreadable_state_without_a_digest_names_the_file(synth, run):
    # A checkpoint saved before digests were recorded: its weights' metadata has none.
    weights = run / "checkpoint/model.safetensors"
    with safe_open(str(weights), framework="pt") as handle:
        metadata = {k: v for k, v in handle.metadata().items() if k != "training_state_sha256"}
    save_file(load_file(str(weights)), str(weights), metadata=metadata)
    path = run / "checkpoint/training_state.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=rf"the training state {path} cannot be read"):
        main(arguments(synth, run, "--max-steps", "4", "--resume"))


# -- 4. what a resume compares -----------------------------------------------------------------------


def test_a_refused_resume_writes_nothing(synth, run):
    before = contents(run)
    with pytest.raises(ValueError, match=r"cannot resume .*'lr': \(0.001, 0.0005\)"):
        main(arguments(synth, run, "--max-steps", "4", "--resume", "--lr", "5e-4"))
    assert contents(run) == before  # train_config.json still holds the run's own options


def test_a_moved_run_with_relative_paths_resumes(synth, two_steps, tmp_path, monkeypatch, caplog):
    # Trained with --data relative to the working directory, then the run moved elsewhere.
    monkeypatch.chdir(synth.parent)
    first = tmp_path / "first"
    main(arguments(synth.name, first, "--max-steps", "1"))
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    first.rename(moved)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="training.trainer"):
        main(arguments(synth.resolve(), moved, "--max-steps", "2", "--resume"))
    assert "at step 1 (epoch" in caplog.text
    assert steps(moved) == [1, 2]
