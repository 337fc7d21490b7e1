import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from proxyformer.config import get_preset
from proxyformer.flops import attention_flops, attention_rules, flop_counter
from proxyformer.layers import Attention
from proxyformer.model import build_proxyformer
from proxyformer.summary import main, parse_size, summarize


def test_components_add_up_and_parameters_match():
    result = summarize("tiny", frames=2, size=(64, 96), text_length=8)
    rows = {r["component"]: r for r in result["rows"]}
    assert abs(sum(r["gflops"] for r in result["rows"]) - result["total_gflops"]) < 1e-6
    assert rows["other"]["gflops"] < 0.01 * result["total_gflops"]  # components cover it all
    assert all(rows[c]["gflops"] > 0 for c in ("backbone", "input_proj", "text_encoder", "cmie", "fpn", "decoder", "heads"))
    assert abs(sum(r["params_m"] for r in result["rows"]) - result["total_params_m"]) < 1e-6
    assert result["total_gmacs"] == pytest.approx(result["total_gflops"] / 2)


def test_compute_grows_with_frames():
    two = summarize("tiny", frames=2, size=(64, 64), text_length=8)["total_gflops"]
    four = summarize("tiny", frames=4, size=(64, 64), text_length=8)["total_gflops"]
    assert 1.8 * two < four < 2.2 * two


def test_command_line(capsys):
    main(["--preset", "tiny", "--frames", "2", "--size", "64x64", "--set", "cmie.use_p2v=false"])
    out = capsys.readouterr().out
    assert "| cmie |" in out and "use_p2v" in out
    with pytest.raises(SystemExit):
        main(["--preset", "tiny", "--size", "64by64"])
    with pytest.raises(Exception, match="at least 32x32"):
        parse_size("16x64")


# -- Attention is counted from its operand shapes, whichever kernel runs it ---------------------

B, H, LQ, LK, D = 2, 3, 5, 7, 8
HAND_FLOPS = 2 * (B * H * LQ * LK * D + B * H * LQ * LK * D)  # q @ kᵀ and attn @ v, 2 per MAC


def _qkv(device: str = "cpu", requires_grad: bool = False):
    shapes = ((B, H, LQ, D), (B, H, LK, D), (B, H, LK, D))
    return [torch.randn(s, device=device, requires_grad=requires_grad) for s in shapes]


class _SDPA(torch.nn.Module):
    def forward(self, q, k, v, mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class _Explicit(torch.nn.Module):
    """The same attention as two explicit matrix products (what the math path runs)."""

    def forward(self, q, k, v, mask=None):
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(-1) @ v


def _count(module, *inputs) -> int:
    with flop_counter() as counter:
        module(*inputs)
    return counter.get_total_flops()


MASKS = {
    "no mask": None,
    "bool mask": torch.rand(B, 1, LQ, LK) > 0.3,
    "key padding": torch.tensor([[True] * LK, [True] * 4 + [False] * (LK - 4)])[:, None, None, :],
}


@pytest.mark.parametrize(
    "backend", [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH], ids=["flash", "math"]
)
@pytest.mark.parametrize("mask", MASKS.values(), ids=MASKS.keys())
def test_sdpa_count_equals_the_hand_count_on_every_cpu_kernel(backend, mask):
    """The fused CPU kernel (which torch 2.14's counter does not know) and the math path (which
    decomposes into bmm, counted once, not twice) both give 2·B·H·Lq·Lk·(Dq + Dv) FLOPs."""
    q, k, v = _qkv()
    with sdpa_kernel([backend]):  # only this kernel: torch raises rather than fall back
        assert _count(_SDPA(), q, k, v, mask) == HAND_FLOPS
    assert _count(_Explicit(), q, k, v, mask) == HAND_FLOPS


def test_sdpa_count_with_other_value_width_and_broadcast_batch():
    q, k = torch.randn(4, LQ, D), torch.randn(4, LK, D)
    v = torch.randn(4, LK, 5)  # Dv != Dq
    expected = 2 * 4 * LQ * LK * (D + 5)
    assert _count(_SDPA(), q, k, v) == expected == attention_flops(q.shape, k.shape, v.shape)
    assert _count(_Explicit(), q, k, v) == expected


def test_training_step_counts_the_same_on_the_fused_and_the_math_path():
    """Backward of the fused CPU kernel counts what autograd of the math path's bmm counts
    (twice the forward), so a training step is release-independent too."""
    totals = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
        q, k, v = _qkv(requires_grad=True)
        with sdpa_kernel([backend]), flop_counter() as counter:
            F.scaled_dot_product_attention(q, k, v).sum().backward()
        totals[backend] = counter.get_total_flops()
    assert totals[SDPBackend.FLASH_ATTENTION] == totals[SDPBackend.MATH] == 3 * HAND_FLOPS


@pytest.mark.parametrize(
    "name, extra",
    [
        ("_scaled_dot_product_flash_attention", ()),
        ("_scaled_dot_product_flash_attention_for_cpu", ()),
        ("_scaled_dot_product_efficient_attention", (None, False)),
        ("_scaled_dot_product_cudnn_attention", (None, False)),
        ("_scaled_dot_product_fused_attention_overrideable", ()),
        ("_scaled_dot_product_attention_math_for_mps", ()),
    ],
)
def test_every_fused_kernel_is_counted_from_its_shapes(name, extra):
    """The GPU/MPS kernels, called on the meta device (shapes only), count like the CPU one."""
    if not hasattr(torch.ops.aten, name):
        pytest.skip(f"this torch has no aten.{name}")
    q, k, v = _qkv("meta")
    with flop_counter() as counter:
        getattr(torch.ops.aten, name)(q, k, v, *extra)
    assert counter.get_total_flops() == HAND_FLOPS


def test_every_fused_attention_kernel_of_this_torch_has_a_rule():
    """A torch release that adds an attention kernel fails here instead of counting it as 0."""
    names = {
        op.split("::", 1)[1].split(".")[0]
        for op in torch._C._dispatch_get_all_op_names()
        if op.startswith("aten::_scaled_dot_product_")
        # composite ops reach the counter as the ops they are made of (the math path's bmm)
        and not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CompositeImplicitAutograd")
    }
    assert names, "no fused attention kernel found: the dispatcher lookup is broken"
    covered = {packet.__name__ for packet in attention_rules()}
    assert names <= covered, f"no counting rule for {sorted(names - covered)}"


def test_attention_shapes_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match=r"key \(2, 3, 7, 4\)"):
        attention_flops((2, 3, 5, 8), (2, 3, 7, 4), (2, 3, 7, 8))


# -- The summary's attention-bearing components equal their hand count ---------------------------


def _hand_count(model: torch.nn.Module, frames: int, size: tuple[int, int], text_length: int):
    """MACs of each attention-bearing component, from the shapes its layers see: every Linear
    (rows · in · out) and every Attention (B·Lq·Lk·C for q @ kᵀ, as much again for attn @ v)."""
    macs = {"cmie": 0, "decoder": 0, "text_fusion": 0}

    def watch(component: str, module: torch.nn.Module) -> None:
        def on_linear(layer, args, _out):
            rows = args[0].numel() // layer.in_features
            macs[component] += rows * layer.in_features * layer.out_features

        def on_attention(layer, args, _out):
            query, key = args[0], args[1]
            batch, length_q, dim = query.shape
            macs[component] += 2 * batch * length_q * key.shape[1] * dim

        for sub in module.modules():
            if isinstance(sub, torch.nn.Linear):
                sub.register_forward_hook(on_linear)
            elif isinstance(sub, Attention):
                sub.register_forward_hook(on_attention)

    for component in macs:
        watch(component, getattr(model, component))
    ids = torch.randint(5, 500, (1, text_length))
    with torch.no_grad():
        model(torch.randn(1, frames, 3, *size), ids, torch.ones_like(ids))
    return macs


def test_summary_counts_cmie_decoder_and_fusion_as_their_hand_count():
    """These components are Linear layers and attention only (LayerNorm and softmax are not
    counted), so each row must equal its hand count exactly; before attention was counted from
    its shapes, torch 2.14 left the fused CPU kernel out and each row fell short."""
    frames, size, text_length = 2, (64, 96), 8
    hand = _hand_count(build_proxyformer(get_preset("tiny")).eval(), frames, size, text_length)
    rows = {r["component"]: r for r in summarize("tiny", frames, size, text_length)["rows"]}
    for component, macs in hand.items():
        assert macs > 0
        assert rows[component]["gmacs"] * 1e9 == pytest.approx(macs, rel=1e-12), component
