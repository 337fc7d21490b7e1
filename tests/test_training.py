"""Training: the loss falls, resume is exact, SIGTERM saves, DDP runs, evaluation writes."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.config import TrainConfig
from training.data.collate import RVOSCollate
from training.data.transforms import ClipTransform, flip_expression, reverse_expression
from training.data.ytvos import RefYouTubeVOS, sample_clip_indices
from training.trainer import Trainer, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(make_synthetic):
    # 2 training videos, 1 validation video: a few steps per epoch, so runs cross epochs.
    return make_synthetic(videos=3, frames=4, seed=1)


def small_config(data, out, **changes):
    base = dict(
        preset="tiny", data=str(data), out=str(out), epochs=50, batch_size=2, num_frames=4,
        lr=1e-3, lr_backbone=1e-3, lr_drop=(1,), workers=0, train_scales=(64,), max_size=None,
        log_every=1, save_every=1000, seed=5,
    )  # fmt: skip
    return TrainConfig(**(base | changes))


def read_metrics(out):
    with open(Path(out) / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_a_few_steps_lower_the_loss(synth, tmp_path):
    # No flips: fewer distinct samples, so 60 steps show the trend through the batch noise
    # (measured: last-10 / first-10 mean loss 0.82 and 0.67 for two seeds).
    train(small_config(synth, tmp_path / "run", max_steps=60, lr_drop=(100,), flip_prob=0.0))
    losses = [float(r["loss"]) for r in read_metrics(tmp_path / "run")]
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < 0.9 * sum(losses[:10]) / 10


def test_resume_gives_the_weights_of_an_uninterrupted_run(synth, tmp_path):
    straight = train(small_config(synth, tmp_path / "straight", max_steps=9))
    interrupted = small_config(synth, tmp_path / "resumed", max_steps=4)
    train(interrupted)
    state = torch.load(tmp_path / "resumed/checkpoint/training_state.pt", weights_only=True)
    assert state["step"] == 4
    resumed = train(small_config(synth, tmp_path / "resumed", max_steps=9, resume=True))
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed weights differ in {different[:5]}"
    rows = read_metrics(tmp_path / "resumed")
    assert [int(r["step"]) for r in rows] == list(range(1, 10))  # no duplicated rows
    assert int(rows[-1]["epoch"]) >= 1  # the run crossed an epoch (and the lr drop)


def test_expression_pairs_are_the_same_in_every_process(synth):
    """The pairing of ``--pair-expressions`` is drawn per epoch from the seed alone: two
    interpreters with different string-hash salts (as two runs, or a run and its resumption,
    have) give the same pairs, so ``make checkpoint`` repeats its run."""
    code = (
        "import json, sys; from training.data.transforms import ClipTransform; "
        "from training.data.ytvos import RefYouTubeVOS; from training.sampling import expression_pairs; "
        "ds = RefYouTubeVOS(sys.argv[1], 'train', 4, ClipTransform(train=True, scales=(64,))); "
        "pairs = expression_pairs(ds, 5); print(json.dumps([pairs(0), pairs(1)]))"
    )
    runs = []
    for salt in ("1", "2"):
        env = os.environ | {"PYTHONHASHSEED": salt}
        result = subprocess.run([sys.executable, "-c", code, str(synth)], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=300, check=True)
        runs.append(json.loads(result.stdout))
    assert runs[0] == runs[1]
    assert runs[0][0] and runs[0][0] != runs[0][1]  # pairs exist and change with the epoch


class _StopAfter(Trainer):
    """A run that receives a stop request (as from SIGTERM) after the given step."""

    def __init__(self, config, stop_step):
        super().__init__(config)
        self.stop_step = stop_step

    def _log_row(self, row):
        super()._log_row(row)
        if row["step"] == self.stop_step:
            self._stop_signal = "SIGTERM"


def test_cosine_schedule_follows_the_formula_and_resumes_exactly(synth, tmp_path):
    config = dict(max_steps=8, lr=1e-3, lr_backbone=5e-4, lr_schedule="cosine", lr_min_ratio=0.1)
    straight = train(small_config(synth, tmp_path / "straight", **config))
    rows = read_metrics(tmp_path / "straight")
    for row in rows:  # the lr each step used, per parameter group; the epoch drop plays no part
        factor = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (int(row["step"]) - 1) / 8))
        assert float(row["lr_rest"]) == pytest.approx(1e-3 * factor)
        assert float(row["lr_backbone"]) == pytest.approx(5e-4 * factor)
    assert int(rows[-1]["epoch"]) >= 1  # crossed an epoch: lr_drop=(1,) is not applied

    stopped = _StopAfter(small_config(synth, tmp_path / "resumed", **config), stop_step=3)
    stopped.train()
    state = torch.load(tmp_path / "resumed/checkpoint/training_state.pt", weights_only=True)
    assert state["step"] == 3
    resumed = train(small_config(synth, tmp_path / "resumed", resume=True, **config))
    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(resumed / "model.safetensors"))
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed weights differ in {different[:5]}"


def test_cosine_schedule_refuses_step_drops_and_bad_ratios(synth, tmp_path):
    with pytest.raises(ValueError, match="lr_drop_steps"):
        small_config(synth, tmp_path, lr_schedule="cosine", lr_drop_steps=(5,))
    with pytest.raises(ValueError, match="lr_min_ratio"):
        small_config(synth, tmp_path, lr_schedule="cosine", lr_min_ratio=1.5)
    with pytest.raises(ValueError, match="lr_schedule"):
        small_config(synth, tmp_path, lr_schedule="linear")


def test_resume_refuses_other_options(synth, tmp_path):
    train(small_config(synth, tmp_path / "run", max_steps=2))
    with pytest.raises(ValueError, match=r"cannot resume .*'lr': \(0.001, 0.0005\)"):
        train(small_config(synth, tmp_path / "run", max_steps=4, resume=True, lr=5e-4))


def _command(synth, out, extra=()):
    return [sys.executable, str(ROOT / "training/train.py"), "--preset", "tiny", "--data", str(synth),
            "--out", str(out), "--batch-size", "2", "--num-frames", "4", "--workers", "0",
            "--train-scales", "64", "--log-every", "1", "--seed", "5", *extra]  # fmt: skip


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_finishes(synth, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(_command(synth, out, ["--max-steps", "10000"]), cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and not (out / "metrics.csv").exists():
        time.sleep(0.5)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert "SIGTERM received" in output
    state = torch.load(out / "checkpoint/training_state.pt", weights_only=True)
    assert state["step"] >= 1
    finish = subprocess.run(_command(synth, out, ["--max-steps", str(state["step"] + 2), "--resume"]),
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr[-2000:]
    assert (out / "final/model.safetensors").is_file()
    assert int(read_metrics(out)[-1]["step"]) == state["step"] + 2


@pytest.mark.slow
def test_two_process_ddp_on_cpu(synth, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", "29517", *_command(synth, out, ["--max-steps", "3", "--batch-size", "1"])[1:]]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_metrics(out)
    assert [int(r["step"]) for r in rows] == [1, 2, 3]  # one log, written by rank 0 only
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)
    # One clip per process, yet JSC has a batch of two: q and s are gathered across ranks.
    assert all(float(r["jsc"]) > 0 for r in rows)
    assert (out / "final/model.safetensors").is_file()


def test_collate_pads_and_renormalises_boxes(synth, tokenizer):
    dataset = RefYouTubeVOS(synth, "train", num_frames=2)
    small, large = dataset[0], dataset[1]
    small["frames"] = small["frames"][..., :48, :80]
    small["masks"] = small["masks"][..., :48, :80]
    small["boxes"] = torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 2)
    batch = RVOSCollate(tokenizer)([small, large])
    assert batch["frames"].shape[-2:] == large["frames"].shape[-2:]
    h, w = large["frames"].shape[-2:]
    expected = torch.tensor([0.5 * 80 / w, 0.5 * 48 / h, 0.2 * 80 / w, 0.2 * 48 / h])
    torch.testing.assert_close(batch["targets"][0]["boxes"][0], expected)
    assert batch["text_ids"].shape == batch["text_mask"].shape and batch["text_ids"].shape[0] == 2


def test_clip_sampling_and_flip():
    import random

    rng = random.Random(0)
    for reference in range(10):
        indices = sample_clip_indices(reference, 10, 5, rng)
        assert len(indices) == 5 and reference in indices and indices == sorted(indices)
    assert len(sample_clip_indices(0, 2, 5, rng)) == 5  # short videos repeat frames
    assert flip_expression("the circle to the left of the red square") == "the circle to the right of the red square"
    assert flip_expression("Left hand, rightmost cup") == "Right hand, leftmost cup"


def test_reverse_expression_swaps_motion_only():
    assert reverse_expression("the red circle moving left") == "the red circle moving right"
    assert reverse_expression("The square Moving Up on the left") == "The square Moving Down on the left"
    assert reverse_expression("a car driving towards the left") == "a car driving towards the right"
    for kept in ("the triangle that stays still", "the circle on the left",
                 "the dog running to the right of the car", "the cup left of the plate"):
        assert reverse_expression(kept) == kept


def test_reversed_clip_is_the_same_clip_backwards(synth):
    def item(reverse_prob, index):
        transform = ClipTransform(train=True, scales=(64,), max_size=None, flip_prob=0.0)
        return RefYouTubeVOS(synth, "train", 3, transform, 7, reverse_prob)[index]

    motion = next(i for i, r in enumerate(RefYouTubeVOS(synth, "train", 3).records)
                  if reverse_expression(r.expression) != r.expression)  # fmt: skip
    plain, backwards = item(0.0, motion), item(1.0, motion)
    assert torch.equal(backwards["frames"], plain["frames"].flip(0))
    assert torch.equal(backwards["masks"], plain["masks"].flip(0))
    assert torch.equal(backwards["boxes"], plain["boxes"].flip(0))
    assert backwards["frame_names"] == plain["frame_names"][::-1]
    assert backwards["expression"] == reverse_expression(plain["expression"]) != plain["expression"]
    with pytest.raises(ValueError, match="reverse_prob"):
        RefYouTubeVOS(synth, "train", 3, reverse_prob=1.5)


def test_reversal_is_refused_for_action_datasets(tmp_path):
    from training.data import build_dataset

    with pytest.raises(ValueError, match="not supported for 'a2d'"):
        build_dataset("a2d", tmp_path, "train", 4, reverse_prob=0.5)


def test_evaluate_writes_scores_and_a_submission(synth, tmp_path, tiny_model, tokenizer):
    from proxyformer.checkpoint import save_checkpoint
    from training.evaluate import main

    checkpoint = save_checkpoint(tiny_model, tmp_path / "ckpt", tokenizer=tokenizer)
    main(["--checkpoint", str(checkpoint), "--data", str(synth), "--split", "valid",
          "--out", str(tmp_path / "eval.json"), "--submission", str(tmp_path / "sub"), "--window", "3"])
    result = json.loads((tmp_path / "eval.json").read_text())
    summary = result["summary"]
    assert 0 <= summary["J"] <= 1 and 0 <= summary["F"] <= 1 and summary["expressions"] >= 1
    row = result["per_expression"][0]
    pngs = sorted((tmp_path / "sub/Annotations" / row["video"] / row["exp_id"]).glob("*.png"))
    assert len(pngs) == 4  # every frame, windows of 3 + 1


def test_query_oracle_scores_every_query(synth, tiny_model, tokenizer):
    from training.data import build_dataset
    from training.data.transforms import ClipTransform
    from training.evaluate import evaluate

    transform = ClipTransform(False, eval_short_side=None)
    dataset = build_dataset("ytvos", synth, "valid", None, transform)
    result = evaluate(tiny_model, tokenizer, dataset, window=3, query_oracle=True, limit=2)
    for row in result["per_expression"]:
        assert len(row["queries_J"]) == tiny_model.config.num_queries
        assert row["J_best_query"] == max(row["queries_J"]) >= row["J"] - 1e-9
        assert len(row["chosen_query"]) == 2  # one choice per window (4 frames, windows of 3)
        if len(set(row["chosen_query"])) == 1:  # one query for the whole video: its J exactly
            assert abs(row["queries_J"][row["chosen_query"][0]] - row["J"]) < 1e-9
    summary = result["summary"]
    assert 0 <= summary["selection_hit"] <= 1 and summary["J_best_query"] >= summary["J"] - 1e-9


def test_gradient_accumulation_counts_optimizer_steps(synth, tmp_path):
    train(small_config(synth, tmp_path / "run", max_steps=2, batch_size=1, accumulate=2))
    rows = read_metrics(tmp_path / "run")
    assert [int(r["step"]) for r in rows] == [1, 2]
    state = torch.load(tmp_path / "run/checkpoint/training_state.pt", weights_only=True)
    assert state["micro_in_epoch"] == 4  # two micro-batches per optimizer step


def test_fine_tuning_starts_from_a_checkpoints_weights(synth, tmp_path):
    """``--init-from`` a checkpoint without ``video_select``: its tensors are loaded, the new
    module's start fresh, and the run trains from there."""
    plain = {"extensions.video_select": False}
    first = train(small_config(synth, tmp_path / "first", max_steps=2, overrides=plain,
                               preset="tiny-synthetic"))  # fmt: skip
    trainer = Trainer(small_config(synth, tmp_path / "second", max_steps=1, init_from=str(first),
                                   preset="tiny-synthetic"))  # fmt: skip
    before = load_file(first / "model.safetensors")
    state = trainer.model.state_dict()
    assert any(k.startswith("heads.selection.") for k in state)
    assert not any(k.startswith("heads.selection.") for k in before)
    assert all(torch.equal(value, state[name]) for name, value in before.items())


def test_fine_tuning_refuses_a_checkpoint_that_does_not_fit(synth, tmp_path):
    first = train(small_config(synth, tmp_path / "first", max_steps=1, preset="tiny-synthetic"))
    with pytest.raises(ValueError, match="has no tensors"):  # the model lacks video_select
        train(small_config(synth, tmp_path / "a", max_steps=1, init_from=str(first),
                           preset="tiny-synthetic",
                           overrides={"extensions.video_select": False}))  # fmt: skip
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        train(small_config(synth, tmp_path / "c", max_steps=1, init_from=str(tmp_path / "none")))


@pytest.mark.parametrize(("flag", "instead"), [
    (["--train-only", "heads.class_head"], "train_selection.py"),
    (["--rank-weight", "2"], "--cls-target iou"),
])  # fmt: skip
def test_removed_flags_say_what_replaced_them(flag, instead, capsys):
    from training.train import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--data", "d", *flag])
    error = capsys.readouterr().err
    assert f"{flag[0]} was removed" in error and instead in error


def test_train_step_benchmark_times_every_phase(synth, tmp_path):
    import importlib.util

    path = ROOT / "benchmarks" / "train_step.py"
    spec = importlib.util.spec_from_file_location("benchmarks_train_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--steps", "3", "--warmup", "1", "--tag", "t", "--out-dir", str(tmp_path),
                        "--", "--preset", "tiny", "--data", str(synth), "--batch-size", "2",
                        "--num-frames", "2", "--train-scales", "64", "--workers", "0"]) == 0  # fmt: skip
    (report_path,) = tmp_path.glob("*/train-step-t.json")
    report = json.loads(report_path.read_text())
    assert set(report["seconds"]) == {"data", "forward", "loss", "backward", "optimizer"}
    assert all(len(v) == 3 and min(v) > 0 for v in report["seconds"].values())
    shares = sum(row["share"] for row in report["summary"]["phases"].values())
    assert shares == pytest.approx(1.0)
    assert report["train_config"]["batch_size"] == 2
    if (ROOT / ".git").exists():
        assert len(report["code"]["commit"]) == 40  # the repository's HEAD
    assert (report_path.parent / "train-step-t.md").read_text().startswith("Training step, t:")
    with pytest.raises(ValueError, match="accumulate"):
        module.main(["--steps", "1", "--out-dir", str(tmp_path), "--", "--data", str(synth),
                     "--preset", "tiny", "--accumulate", "2", "--train-scales", "64"])  # fmt: skip
