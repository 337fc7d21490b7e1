"""Stage 2 on cached features (training/selection.py): the cache reproduces the model's class
scores and IoU targets, training lowers the loss, resume is exact, bad options are refused."""


import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from proxyformer.checkpoint import load_checkpoint, save_checkpoint
from proxyformer.config import get_preset
from proxyformer.model import build_proxyformer
from proxyformer.text import encode_texts, load_tokenizer
from training.data.transforms import flip_expression
from training.data.ytvos import RefYouTubeVOS
from training.losses import LossWeights, RVOSCriterion, iou_class_loss
from training.selection import (
    SelectionConfig,
    SelectionTrainer,
    build_cache,
    class_logits,
    collate,
    length_batches,
    selection_scores,
)
from training.train_selection import parse_args


@pytest.fixture(scope="module")
def synth(make_synthetic):
    return make_synthetic(videos=4, frames=4, seed=2)


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """A stage-1 checkpoint as the recipe has it: tiny-synthetic without video selection."""
    torch.manual_seed(0)
    config = get_preset("tiny-synthetic", **{"extensions.video_select": False})
    out = tmp_path_factory.mktemp("stage1") / "final"
    save_checkpoint(build_proxyformer(config).eval(), out, tokenizer=load_tokenizer(config))
    return out


def selection_config(synth, stage1, out, **changes):
    base = dict(init_from=str(stage1), data=str(synth), out=str(out), epochs=3, batch_size=2,
                overrides={"extensions.video_select": True}, seed=3)  # fmt: skip
    return SelectionConfig(**(base | changes))


@pytest.fixture(scope="module")
def cached(synth, stage1, tmp_path_factory):
    """The trainer (its frozen model) and the training split cached with mirrored copies."""
    out = tmp_path_factory.mktemp("cached") / "run"
    trainer = SelectionTrainer(selection_config(synth, stage1, out))
    dataset = RefYouTubeVOS(synth, "train", None)
    return trainer, dataset, build_cache(trainer.model, trainer.tokenizer, dataset, flip=True)


def _model_outputs(trainer, samples, mirror: bool):
    clip = torch.stack([s["frames"] for s in samples])
    texts = [s["expression"] for s in samples]
    if mirror:
        clip, texts = clip.flip(-1), [flip_expression(t) for t in texts]
    ids, mask = encode_texts(trainer.tokenizer, texts)
    with torch.no_grad():
        return trainer.model(clip, ids, mask)


@pytest.mark.parametrize("mirror", [False, True])
def test_cache_reproduces_the_models_class_scores_and_iou_targets(cached, mirror):
    trainer, dataset, items = cached
    model = trainer.model
    assert len(items) == 2 * len(dataset.records)
    assert len(items[0]["layers"]) == model.config.decoder.num_layers
    # Per video: its expressions, then the same on the mirrored video with left/right swapped
    # in the text. Compare the first video's with the whole model as training would run it.
    video = dataset.records[0].video
    samples = [dataset[i] for i, r in enumerate(dataset.records) if r.video == video]
    first = items[len(samples) : 2 * len(samples)] if mirror else items[: len(samples)]
    out = _model_outputs(trainer, samples, mirror)
    for layer, pred in enumerate([*out["aux_outputs"], out]):
        batch = collate(first, layer, "cpu")
        with torch.no_grad():
            logits = class_logits(model, batch)
        # float16 storage of the cached inputs: agreement to ~1e-2 on logits of order 1.
        torch.testing.assert_close(logits, pred["pred_logits"], atol=3e-2, rtol=3e-2)
    criterion = RVOSCriterion(LossWeights(cls_target="iou"))
    for b, sample in enumerate(samples):
        masks = sample["masks"].flip(-1) if mirror else sample["masks"]
        target = {"masks": masks, "boxes": sample["boxes"], "valid": sample["valid"]}
        iou = criterion.query_costs(out, target, b)["iou"]
        visible = target["valid"].float()[:, None]
        # The same target on visible frames (empty frames: J counts 1, the loss masks them).
        torch.testing.assert_close(batch["iou"][b] * visible, iou * visible, atol=1e-3, rtol=0)
    assert torch.equal(batch["visible"].bool(), torch.stack([s["valid"] for s in samples]))


def test_training_lowers_the_loss_and_resume_is_exact(synth, stage1, tmp_path):
    straight = SelectionTrainer(selection_config(synth, stage1, tmp_path / "straight", epochs=4))
    final = straight.train()
    with open(tmp_path / "straight/metrics.csv") as handle:
        losses = [float(line.split(",")[1]) for line in handle.read().splitlines()[1:]]
    assert len(losses) == 4 and losses[-1] < losses[0]
    # Interrupted after epoch 2, then resumed by a new process-like trainer.
    config = selection_config(synth, stage1, tmp_path / "resumed", epochs=4)
    stopped = SelectionTrainer(config).train(stop_after=2)
    assert stopped.name == "checkpoint" and not (tmp_path / "resumed/final").exists()
    resumed = SelectionTrainer(config).train(resume=True)
    a = load_file(str(final / "model.safetensors"))
    b = load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # Only the class path moved; the frozen stage-1 tensors are the checkpoint's.
    start = load_file(str(stage1 / "model.safetensors"))
    moved = {n for n in start if not torch.equal(start[n], a[n])}
    assert moved and all(n.startswith(("heads.class_head", "heads.pool_proj")) for n in moved)
    assert any(n.startswith("heads.selection") for n in a) and not any(
        n.startswith("heads.selection") for n in start
    )
    # The result loads as a checkpoint with video selection and scores a cached split.
    model = load_checkpoint(final)
    assert model.config.extensions.video_select
    items = straight.cache("valid", False)
    scores = selection_scores(straight.model, items)
    assert 0.0 <= scores["J"] <= scores["J_best_query"] <= 1.0


def test_the_cache_is_reused_only_for_the_same_weights_and_options(synth, stage1, tmp_path):
    config = selection_config(synth, stage1, tmp_path / "run", flip=False)
    first = SelectionTrainer(config).cache("valid", False)
    path = tmp_path / "run/cache-valid.pt"
    stamp = path.stat().st_mtime_ns
    again = SelectionTrainer(config).cache("valid", False)
    assert path.stat().st_mtime_ns == stamp and len(again) == len(first)
    for a, b in zip(first, again):
        assert torch.equal(a["layers"][-1]["queries"], b["layers"][-1]["queries"])
    flipped = SelectionTrainer(config).cache("valid", True)  # another key: rebuilt
    assert len(flipped) == 2 * len(first) and path.stat().st_mtime_ns != stamp


def test_the_loss_is_the_class_term_of_stage_one():
    logits = torch.randn(2, 3, 4)
    ious = torch.rand(2, 3, 4)
    visible = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    annotated = torch.ones(2, 3)
    batched = iou_class_loss(logits, ious, visible, annotated)
    for b in range(2):
        one = iou_class_loss(logits[b], ious[b], visible[b], annotated[b])
        torch.testing.assert_close(batched[b], one)
    # A perfect score (probability = IoU target) costs nothing; the opposite costs more.
    target = (ious * visible[..., None]).clamp(1e-4, 1 - 1e-4)
    perfect = iou_class_loss(torch.logit(target), ious, visible, annotated)
    assert float(perfect.max()) < 1e-6
    assert bool((iou_class_loss(-torch.logit(target), ious, visible, annotated) > 0.1).all())


def test_batches_hold_videos_of_one_length_in_the_shuffled_order():
    order = [5, 0, 3, 1, 4, 2, 6]
    lengths = [12, 12, 36, 12, 36, 12, 36]  # Ref-YouTube-VOS videos differ in length
    batches = length_batches(order, lengths, 2)
    assert batches == [[5, 0], [3, 1], [4, 2], [6]]  # 12, 12 | 12, 12 | 36, 36 | 36
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert all(len({lengths[i] for i in b}) == 1 for b in batches)
    # One length: consecutive runs of the order, as a plain batching would give.
    assert length_batches(order, [8] * 7, 3) == [[5, 0, 3], [1, 4, 2], [6]]


def test_bad_options_are_refused(synth, stage1, tmp_path):
    with pytest.raises(ValueError, match="dataset must be 'ytvos' or 'davis'"):
        selection_config(synth, stage1, tmp_path, dataset="a2d")
    with pytest.raises(ValueError, match="init-from"):
        SelectionConfig(init_from="")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        SelectionTrainer(selection_config(synth, tmp_path / "missing", tmp_path / "run"))
    # A checkpoint lacking tensors outside the class path (another architecture).
    other = tmp_path / "other"
    small = get_preset("tiny-synthetic", **{"extensions.video_select": False, "decoder.num_layers": 1})
    save_checkpoint(build_proxyformer(small), other, tokenizer=load_tokenizer(small))
    with pytest.raises(ValueError, match="outside the class path"):
        SelectionTrainer(selection_config(synth, other, tmp_path / "run2",
                                          overrides={"extensions.video_select": True,
                                                     "decoder.num_layers": 2}))  # fmt: skip
    # Resuming with other options.
    config = selection_config(synth, stage1, tmp_path / "run3", epochs=2, flip=False)
    SelectionTrainer(config).train(stop_after=1)
    with pytest.raises(ValueError, match="cannot resume"):
        SelectionTrainer(selection_config(synth, stage1, tmp_path / "run3", epochs=2, lr=1e-3,
                                          flip=False)).train(resume=True)  # fmt: skip


def test_command_line_parses_the_recipe(stage1):
    config, resume = parse_args([
        "--init-from", str(stage1), "--data", "d", "--out", "o", "--set",
        "extensions.video_select=true", "--epochs", "5", "--no-flip", "--resume",
    ])  # fmt: skip
    assert config.overrides == {"extensions.video_select": True}
    assert config.epochs == 5 and not config.flip and resume
    assert np.isclose(config.lr, 5e-4)
