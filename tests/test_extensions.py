"""The options beyond the paper (``proxyformer/extensions``): where they are on, what each
does, and the migration of configs that held them in their ``decoder`` section."""

import json
import math

import pytest
import torch
from conftest import SHIPPED_CHECKPOINT, make_model, random_frames

from proxyformer.config import ProxyFormerConfig, get_preset
from proxyformer.decoder import DecoderLayer, SegFPN
from proxyformer.extensions.config import OPTION_NAMES
from proxyformer.extensions.model import ExtendedProxyFormer
from proxyformer.extensions.selection import mask_geometry
from proxyformer.heads import PredictionHeads
from proxyformer.model import ProxyFormer


@pytest.fixture(scope="module")
def synthetic_config():
    return get_preset("tiny-synthetic")


@pytest.fixture()
def synthetic_model(synthetic_config):
    return make_model(synthetic_config).eval()


def test_options_are_on_in_tiny_synthetic_and_off_in_tiny_and_the_paper_presets():
    synthetic = get_preset("tiny-synthetic")
    assert all(getattr(synthetic.extensions, name) for name in OPTION_NAMES)
    for preset in ("tiny", "paper-r50", "paper-swin-t", "paper-swin-b"):
        config = get_preset(preset)
        assert not config.extensions.enabled, preset
        model = make_model(config) if preset == "tiny" else None
        if model is not None:  # the paper's modules, exactly
            assert type(model) is ProxyFormer and type(model.heads) is PredictionHeads
            assert type(model.fpn) is SegFPN
            assert all(type(layer) is DecoderLayer for layer in model.decoder.layers)
            assert isinstance(model.heads.class_head, torch.nn.Linear)
    # tiny-synthetic is tiny plus the options: nothing else differs.
    assert get_preset("tiny").diff(synthetic)[0] == "extensions.mask_pool: a=False, b=True"
    assert all(line.startswith(("extensions.", "name:")) for line in get_preset("tiny").diff(synthetic))


def test_each_option_alone_builds_and_runs(text_inputs):
    for name in OPTION_NAMES:
        model = make_model(get_preset("tiny", **{f"extensions.{name}": True})).eval()
        assert isinstance(model, ExtendedProxyFormer), name
        with torch.no_grad():
            out = model(random_frames(2, 2, 64, 96), *text_inputs)
        assert out["pred_masks"].shape == (2, 2, 5, 16, 24), name
        assert torch.isfinite(out["pred_logits"]).all(), name


def test_old_configs_migrate_and_removed_options_are_refused():
    """A ``config.json`` or manifest written when the options lived in ``decoder`` loads;
    ``shape_moments: true`` (removed) is refused with a message saying what to do."""
    old = get_preset("tiny").to_dict()
    del old["extensions"]
    old["decoder"] |= {name: True for name in OPTION_NAMES} | {"shape_moments": False}
    config = ProxyFormerConfig.from_dict(json.loads(json.dumps(old)))
    assert config.extensions == get_preset("tiny-synthetic").extensions
    assert config.decoder == get_preset("tiny").decoder
    old["decoder"]["shape_moments"] = True
    with pytest.raises(ValueError, match="shape_moments .*removed.*retrain"):
        ProxyFormerConfig.from_dict(old)
    # --set decoder.video_select=true (the old flag) names the new key.
    with pytest.raises(ValueError, match="moved to extensions.video_select"):
        get_preset("tiny", **{"decoder.video_select": True})
    with pytest.raises(ValueError, match="decoder.shape_moments was removed"):
        get_preset("tiny", **{"decoder.shape_moments": True})


def test_the_shipped_checkpoint_uses_tiny_synthetic():
    from proxyformer.checkpoint import read_config

    assert read_config(SHIPPED_CHECKPOINT) == get_preset("tiny-synthetic")


def test_masked_attention_reads_only_inside_the_mask(synthetic_model, text_inputs):
    """Every decoder layer gets, per query, the video tokens inside its previous mask; a query
    whose mask is empty reads everything (no all-masked softmax row)."""
    seen = []
    decoder = synthetic_model.decoder
    original = type(decoder.layers[0]).forward

    def spy(layer, queries, memory, memory_pos, text=None, text_mask=None, attend=None):
        seen.append(attend)
        return original(layer, queries, memory, memory_pos, text, text_mask, attend)

    frames = random_frames(2, 3, 64, 96)
    try:
        for layer in decoder.layers:
            layer.forward = spy.__get__(layer)
        with torch.no_grad():
            out = synthetic_model(frames, *text_inputs)
    finally:
        for layer in decoder.layers:
            del layer.forward
    tokens = 2 * 3 + 4 * 6  # the CMIE levels, strides 32 and 16
    assert len(seen) == len(decoder.layers)
    for attend in seen:
        assert attend.dtype == torch.bool and attend.shape == (2 * 3, 5, tokens)
        assert bool(attend.any(dim=-1).all())  # never an empty row
    # The second layer's mask is the first layer's prediction at the CMIE token grids
    # (coarsest first, as the tokens are), thresholded at probability 0.5.
    first = out["aux_outputs"][0]["pred_masks"].flatten(0, 1)  # (B*T, N, h, w)
    inside = torch.cat(
        [
            torch.nn.functional.interpolate(first, size=size, mode="bilinear").flatten(-2)
            for size in [(2, 3), (4, 6)]
        ],
        dim=-1,
    ) > 0
    assert torch.equal(seen[1], inside | ~inside.any(dim=-1, keepdim=True))


def test_mask_pooled_class_scores_follow_the_mask(synthetic_model):
    """The class head reads F_seg under the query's own mask: moving the mask changes it."""
    heads = synthetic_model.heads
    text = torch.randn(1, 4, 64)
    text_mask = torch.ones(1, 4, dtype=torch.bool)
    queries = torch.randn(1, 1, 5, 64)
    seg = torch.randn(1, 1, 32, 8, 8)
    base = heads(queries, seg, text, text_mask)["pred_logits"]
    seg_moved = seg.clone()
    seg_moved[..., :4, :] = seg[..., 4:, :]  # only the features change, queries do not
    assert not torch.allclose(base, heads(queries, seg_moved, text, text_mask)["pred_logits"])


def test_mask_geometry_of_a_square_moving_right():
    """Centre, size and velocity of a 2x2 square stepping 2 cells right per frame on an 8x8
    grid, computed by hand: centres x = 1/8, 3/8, 5/8 (cell centres), y = 3/8; velocities are
    tanh(displacement per frame / 0.03)."""
    weights = torch.zeros(1, 3, 1, 8, 8)
    for t in range(3):
        weights[0, t, 0, 2:4, 2 * t : 2 * t + 2] = 1.0
    geometry = mask_geometry(weights.flatten(-2), 8, 8)[0, :, 0]
    vx = math.tanh(0.25 / 0.03)
    row = [3 / 8, 0.25, vx, 0.0, 3 / 8, 3 / 8, vx, 0.0]  # cy, sqrt(area), v, video centre, v
    expected = torch.tensor([[1 / 8, *row], [3 / 8, *row], [5 / 8, *row]])
    torch.testing.assert_close(geometry, expected, atol=1e-5, rtol=0)
    # One frame: no motion; the video-level centre is that frame's.
    single = mask_geometry(weights[:, 2:].flatten(-2), 8, 8)[0, 0, 0]
    torch.testing.assert_close(single[[3, 4, 7, 8]], torch.zeros(4))
    torch.testing.assert_close(single[5:7], torch.tensor([5 / 8, 3 / 8]))
    # Reversed in time, the square moves left; a slow drift is not saturated.
    backwards = mask_geometry(weights.flip(1).flatten(-2), 8, 8)[0, :, 0]
    torch.testing.assert_close(backwards[:, 3], torch.full((3,), -vx))
    slow = torch.zeros(1, 2, 1, 100, 100)
    slow[0, 0, 0, 40:60, 40:60] = 1.0
    slow[0, 1, 0, 40:60, 41:61] = 1.0  # 0.01 of the width in one frame
    drift = mask_geometry(slow.flatten(-2), 100, 100)[0, 0, 0, 3]
    assert abs(float(drift) - math.tanh(0.01 / 0.03)) < 1e-4


def test_video_selection_scores_read_the_other_frames_and_the_text(synthetic_config):
    """With ``video_select`` a frame's class scores depend on the other frames' masks and on
    the expression; without it (mask pooling alone) they depend on that frame only."""
    torch.manual_seed(0)
    text = torch.randn(1, 4, 64)
    text_mask = torch.ones(1, 4, dtype=torch.bool)
    queries = torch.randn(1, 3, 5, 64)
    seg = torch.randn(1, 3, 32, 8, 8)
    seg_later = seg.clone()
    seg_later[:, 1:] = seg[:, 1:].roll(3, dims=-1)  # frames 1 and 2 change, frame 0 does not
    for video_select in (True, False):
        config = synthetic_config.replace(**{"extensions.video_select": video_select})
        heads = make_model(config).heads
        with torch.no_grad():
            base = heads(queries, seg, text, text_mask)["pred_logits"]
            later = heads(queries, seg_later, text, text_mask)["pred_logits"]
            other_text = heads(queries, seg, torch.randn_like(text), text_mask)["pred_logits"]
        assert torch.allclose(base[:, 0], later[:, 0]) is not video_select
        assert torch.allclose(base, other_text) is not video_select
        # masks and boxes never depend on the selection
        torch.testing.assert_close(
            heads(queries, seg, text, text_mask)["pred_masks"][:, 0],
            heads(queries, seg_later, text, text_mask)["pred_masks"][:, 0],
        )
    with pytest.raises(ValueError, match="needs the text"):
        make_model(synthetic_config).heads(queries, seg)
