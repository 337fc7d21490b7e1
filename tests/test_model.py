"""The model: shapes for every preset, gradients, ablation switches, input checks."""

import math

import pytest
import torch
from conftest import make_model, random_frames

from proxyformer.config import get_preset
from proxyformer.text import encode_texts, load_tokenizer


def check_output_shapes(out, batch, frames, queries, height, width, dim, decoder_layers):
    h4, w4 = math.ceil(height / 4), math.ceil(width / 4)
    assert out["pred_logits"].shape == (batch, frames, queries)
    assert out["pred_boxes"].shape == (batch, frames, queries, 4)
    assert out["pred_masks"].shape == (batch, frames, queries, h4, w4)
    assert out["video_queries"].shape == (batch, queries, dim)
    assert out["joint_semantics"].shape == (batch, dim)
    assert len(out["aux_outputs"]) == decoder_layers - 1
    for aux in out["aux_outputs"]:
        assert aux["pred_masks"].shape == out["pred_masks"].shape
    boxes = out["pred_boxes"]
    assert bool(((boxes >= 0) & (boxes <= 1)).all())
    for key in ("pred_logits", "pred_boxes", "pred_masks", "joint_semantics"):
        assert torch.isfinite(out[key]).all(), key


@pytest.mark.parametrize(
    "preset", ["tiny", "tiny-synthetic", "paper-r50", "paper-swin-t", "paper-swin-b"]
)
def test_every_preset_at_a_small_input(preset):
    config = get_preset(preset)
    model = make_model(config).eval()
    # Real layer counts: 12-layer RoBERTa, K=4 CMIE, 3 decoder layers.
    assert len(model.cmie.layers) == config.cmie.num_layers
    assert model.text_encoder.body.config.num_hidden_layers == config.text.num_layers
    tokenizer = load_tokenizer(config)
    ids, mask = encode_texts(tokenizer, ["the person holding the red surfboard"])
    with torch.no_grad():
        out = model(random_frames(1, 2, 64, 64), ids, mask)
    check_output_shapes(
        out, 1, 2, config.num_queries, 64, 64, config.hidden_dim, config.decoder.num_layers
    )


@pytest.mark.parametrize("height,width", [(64, 96), (70, 100), (33, 45)])
def test_sizes_not_multiple_of_32_are_padded_and_cropped(tiny_model, text_inputs, height, width):
    ids, mask = text_inputs
    with torch.no_grad():
        out = tiny_model(random_frames(2, 2, height, width), ids, mask)
    check_output_shapes(out, 2, 2, 5, height, width, 64, 2)


def test_padding_does_not_change_the_unpadded_part_much(tiny_model, text_inputs):
    # The model pads to a multiple of 32 itself; padding by hand to the same size must give
    # the very same result (the padding is the mean colour, i.e. zero after normalisation).
    ids, mask = text_inputs
    frames = random_frames(2, 2, 70, 100)
    padded = torch.nn.functional.pad(frames, (0, 28, 0, 26))
    with torch.no_grad():
        a = tiny_model(frames, ids, mask)["pred_masks"]
        b = tiny_model(padded, ids, mask)["pred_masks"][..., : a.shape[-2], : a.shape[-1]]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_decode_without_aux_gives_the_same_final_prediction(tiny_model, text_inputs):
    frames = random_frames()
    with torch.no_grad():
        full = tiny_model(frames, *text_inputs)
        text = tiny_model.encode_text(*text_inputs)
        lean = tiny_model.decode(tiny_model.encode_frames(frames), text, text_inputs[1], (64, 96), aux=False)
    assert lean["aux_outputs"] == []
    for key in ("pred_logits", "pred_boxes", "pred_masks", "video_queries", "joint_semantics"):
        torch.testing.assert_close(lean[key], full[key])


def test_output_is_deterministic_in_eval(tiny_model, text_inputs):
    frames = random_frames()
    with torch.no_grad():
        a = tiny_model(frames, *text_inputs)
        b = tiny_model(frames, *text_inputs)
    assert torch.equal(a["pred_masks"], b["pred_masks"])


def all_outputs_sum(out):
    total = out["video_queries"].sum() + out["joint_semantics"].sum()
    for pred in [out, *out["aux_outputs"]]:
        total = total + sum(pred[k].sum() for k in ("pred_logits", "pred_boxes", "pred_masks"))
    return total


@pytest.mark.parametrize(
    "preset,overrides",
    [("tiny", {}), ("tiny", {"cmie.mode": "full"}), ("tiny", {"cmie.use_p2v": False}),
     ("tiny", {"cmie.use_proxy": False}), ("tiny-synthetic", {})],
    ids=["cmie", "cmie-full", "no-p2v", "no-proxy", "extensions"],
)  # fmt: skip
def test_gradients_reach_every_trainable_parameter(text_inputs, preset, overrides):
    model = make_model(get_preset(preset, **overrides)).train()
    out = model(random_frames(), *text_inputs)
    all_outputs_sum(out).backward()
    dead = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert not dead, f"no gradient reaches {dead}"


def test_paper_text_encoder_is_frozen_and_stays_in_eval():
    model = make_model(get_preset("paper-r50"))
    model.train()
    assert not any(p.requires_grad for p in model.text_encoder.body.parameters())
    assert not model.text_encoder.body.training  # dropout off in a frozen encoder
    assert all(p.requires_grad for p in model.text_encoder.resizer.parameters())
    assert model.backbone.training


# -- ablation switches ------------------------------------------------------------------


def module_names(model):
    return {name.split(".")[-1] for name, _ in model.cmie.named_modules()}


def test_no_p2v_equals_cmie_with_silent_p2v(tiny_config, text_inputs):
    """CMIE w/o P2V (Table IV row 4) is exactly CMIE whose P2V attention outputs zero."""
    full = make_model(tiny_config).eval()
    no_p2v = make_model(tiny_config.replace(**{"cmie.use_p2v": False})).eval()
    assert {"p2v_s", "p2v_t"} <= module_names(full)
    assert not {"p2v_s", "p2v_t"} & module_names(no_p2v)
    missing, unexpected = no_p2v.load_state_dict(full.state_dict(), strict=False)
    assert not missing and all(".p2v_" in k or "norm_p2v" in k for k in unexpected)
    frames = random_frames()
    with torch.no_grad():
        before = full(frames, *text_inputs)["pred_masks"]
        reference = no_p2v(frames, *text_inputs)["pred_masks"]
        assert (before - reference).abs().max() > 1e-3  # P2V does change the output
        for layer in full.cmie.layers:
            for attention in (layer.p2v_s, layer.p2v_t):
                torch.nn.init.zeros_(attention.out_proj.weight)
                torch.nn.init.zeros_(attention.out_proj.bias)
            layer.norm_p2v.load_state_dict(layer.norm_sa.state_dict())
        silenced = full(frames, *text_inputs)["pred_masks"]
    # (x + 0) + (x + 0) = 2x; LayerNorm(2x) = LayerNorm(x) up to its epsilon.
    torch.testing.assert_close(silenced, reference, rtol=1e-3, atol=1e-3)


def test_full_cmie_star_attends_jointly_and_costs_more(tiny_config, monkeypatch):
    """The attention FLOPs of the CMIE (QK^T and AV of every F.scaled_dot_product_attention call
    inside it, counted from the operands' shapes: torch's FlopCounterMode misses the fused CPU
    kernel in some releases)."""
    decoupled = make_model(tiny_config).eval().requires_grad_(False)
    full = make_model(tiny_config.replace(**{"cmie.mode": "full"})).eval().requires_grad_(False)
    assert {"sa_t", "p2v_t", "v2p_t"} <= module_names(decoupled)
    assert not {"sa_t", "p2v_t", "v2p_t"} & module_names(full)
    tokenizer = load_tokenizer(tiny_config)
    ids, mask = encode_texts(tokenizer, ["a red circle"])
    sdpa = torch.nn.functional.scaled_dot_product_attention
    inside, flops = [False], [0]

    def counted(q, k, v, *args, **kwargs):
        if inside[0]:
            flops[0] += 2 * q.shape[:-1].numel() * k.shape[-2] * (q.shape[-1] + v.shape[-1])
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    cost = {}
    for name, model in (("decoupled", decoupled), ("full", full)):
        model.cmie.register_forward_pre_hook(lambda *_: inside.__setitem__(0, True))
        model.cmie.register_forward_hook(lambda *_: inside.__setitem__(0, False))
        flops[0] = 0
        model(random_frames(1, 8, 128, 128), ids, mask)
        cost[name] = flops[0]
    # Attention cost: (T*S)^2 jointly against T*S^2 + S*T^2 decoupled; T=8, S=16+4 tokens.
    assert cost["decoupled"] > 0 and cost["full"] > 3 * cost["decoupled"], cost


def test_no_proxy_keeps_queries_fixed_and_lets_text_reach_the_video(tiny_config, tokenizer):
    model = make_model(tiny_config.replace(**{"cmie.use_proxy": False})).eval()
    assert "t2v" in module_names(model) and not {"t2p", "v2p_s", "p2v_s"} & module_names(model)
    frames = random_frames(1)
    with torch.no_grad():
        a = model(frames, *encode_texts(tokenizer, ["the red circle"]))
        b = model(frames, *encode_texts(tokenizer, ["a big blue square moving up"]))
    expected = model.cmie.proxy_embed.weight[None]  # never updated by the encoder
    torch.testing.assert_close(a["video_queries"], expected)
    assert (a["pred_masks"] - b["pred_masks"]).abs().max() > 1e-4  # text acts through t2v


def test_text_and_other_frames_change_the_masks(tiny_model, tokenizer):
    """Text conditions the masks; temporal attention carries information across frames."""
    frames = random_frames(1, 4)
    with torch.no_grad():
        base = tiny_model(frames, *encode_texts(tokenizer, ["the red circle"]))["pred_masks"]
        other_text = tiny_model(frames, *encode_texts(tokenizer, ["a blue square"]))["pred_masks"]
        changed = frames.clone()
        changed[:, 3] = torch.randn_like(changed[:, 3])
        other_frame = tiny_model(changed, *encode_texts(tokenizer, ["the red circle"]))["pred_masks"]
    assert (base - other_text).abs().max() > 1e-4
    assert (base[:, 0] - other_frame[:, 0]).abs().max() > 1e-4  # frame 3 reaches frame 0


def test_text_fusion_switch(tiny_config, tokenizer):
    """ReferFormer's early fusion gates every backbone level by the text; off, it is gone."""
    fused = make_model(tiny_config).eval()
    plain = make_model(tiny_config.replace(text_fusion=False)).eval()
    assert len(fused.text_fusion) == 4 and plain.text_fusion is None
    assert not any(name.startswith("text_fusion.") for name, _ in plain.named_parameters())
    frames = random_frames(1)
    ids, mask = encode_texts(tokenizer, ["the red circle"])
    with torch.no_grad():
        levels = fused.encode_frames(frames)
        text = fused.encode_text(ids, mask)
        gated = fused._fuse_text(fused.text_fusion[0], levels[0], text, mask.bool())
        ids2, mask2 = encode_texts(tokenizer, ["a big blue square moving up"])
        other = fused._fuse_text(fused.text_fusion[0], levels[0], fused.encode_text(ids2, mask2), mask2.bool())
    assert gated.shape == levels[0].shape
    assert (gated - other).abs().max() > 1e-4  # the gate depends on the expression


@pytest.mark.parametrize("queries,layers", [(1, 1), (3, 3), (7, 2)])
def test_number_of_queries_and_cmie_modules(tiny_config, text_inputs, queries, layers):
    config = tiny_config.replace(num_queries=queries, **{"cmie.num_layers": layers})
    model = make_model(config).eval()
    assert len(model.cmie.layers) == layers
    with torch.no_grad():
        out = model(random_frames(), *text_inputs)
    check_output_shapes(out, 2, 3, queries, 64, 96, 64, 2)


# -- bad inputs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frames,ids_shape,mask_shape,match",
    [
        (torch.randn(3, 3, 64, 64), (1, 8), (1, 8), r"frames must be \(B, T, 3, H, W\), got rank 4"),
        (torch.randn(1, 0, 3, 64, 64), (1, 8), (1, 8), "at least one video and frame"),
        (torch.randn(1, 2, 4, 64, 64), (1, 8), (1, 8), "3 \\(RGB\\) channels"),
        (torch.randn(1, 2, 3, 16, 64), (1, 8), (1, 8), "at least 32x32, got 16x64"),
        (torch.randn(1, 2, 3, 64, 64), (2, 8), (2, 8), r"text_ids must be \(B=1, L\)"),
        (torch.randn(1, 2, 3, 64, 64), (1, 8), (1, 7), r"text_mask must match text_ids \(1, 8\)"),
        (torch.randn(1, 2, 3, 64, 64), (1, 0), (1, 0), r"text length must be in \[1, 64\]"),
        (torch.randn(1, 2, 3, 64, 64), (1, 65), (1, 65), "got L=65"),
    ],
)
def test_bad_inputs_fail_with_a_clear_message(tiny_model, frames, ids_shape, mask_shape, match):
    with pytest.raises(ValueError, match=match):
        tiny_model(frames, torch.ones(ids_shape, dtype=torch.long), torch.ones(mask_shape))


def test_bad_dtypes_and_empty_masks(tiny_model):
    ids = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="normalised float .* got dtype torch.uint8"):
        tiny_model(torch.zeros(1, 2, 3, 64, 64, dtype=torch.uint8), ids, torch.ones_like(ids))
    with pytest.raises(ValueError, match="int64 token ids"):
        tiny_model(torch.zeros(1, 2, 3, 64, 64), ids.float(), torch.ones_like(ids))
    with pytest.raises(ValueError, match="no real token"):
        tiny_model(torch.zeros(1, 2, 3, 64, 64), ids, torch.zeros_like(ids))


def test_normalize_accepts_uint8_and_unit_floats(tiny_model):
    clip = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    torch.testing.assert_close(tiny_model.normalize(clip), tiny_model.normalize(clip / 255.0))
