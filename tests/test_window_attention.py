"""Video-Swin's window attention through ``F.scaled_dot_product_attention`` equals
torchvision's own code: outputs and gradients, shifted or not, padded or not, one video or two,
and with T below the temporal window (which shrinks it)."""

import copy
import pickle

import pytest
import torch
from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d

from proxyformer.backbone import FusedWindowAttention3d, VideoSwin
from proxyformer.config import get_preset


def _pair(shift):
    torch.manual_seed(0)
    reference = ShiftedWindowAttention3d(32, [8, 7, 7], shift, num_heads=2)
    with torch.no_grad():  # torchvision starts the table near 0: make the bias matter
        reference.relative_position_bias_table.normal_()
    fused = copy.deepcopy(reference)
    fused.__class__ = FusedWindowAttention3d
    return reference, fused


@pytest.mark.parametrize("shift", [[0, 0, 0], [4, 3, 3]])
@pytest.mark.parametrize("shape", [(1, 19, 23, 40, 32), (2, 9, 14, 21, 32), (1, 5, 10, 10, 32)])
def test_fused_window_attention_equals_torchvision(shift, shape):
    reference, fused = _pair(shift)
    x = torch.randn(*shape)
    x_ref, x_fused = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref, out_fused = reference(x_ref), fused(x_fused)
    torch.testing.assert_close(out_fused, out_ref, atol=1e-5, rtol=1e-5)
    out_ref.square().sum().backward()
    out_fused.square().sum().backward()
    torch.testing.assert_close(x_fused.grad, x_ref.grad, atol=1e-4, rtol=1e-4)
    for name, parameter in reference.named_parameters():
        other = dict(fused.named_parameters())[name]
        torch.testing.assert_close(other.grad, parameter.grad, atol=1e-3, rtol=1e-4)


def test_video_swin_uses_it_and_keeps_torchvision_state_dict_keys():
    config = get_preset("paper-mini").backbone
    backbone = VideoSwin(config).eval()
    attentions = [m for m in backbone.modules() if isinstance(m, ShiftedWindowAttention3d)]
    assert attentions and all(type(m) is FusedWindowAttention3d for m in attentions)
    keys = set(backbone.state_dict())
    assert any(k.endswith("attn.relative_position_bias_table") for k in keys)
    copied = pickle.loads(pickle.dumps(backbone))  # a copy keeps the class (Ray, DataLoader)
    frames = torch.randn(1, 3, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(backbone(frames), copied(frames)):
            torch.testing.assert_close(a, b)


def test_bf16_autocast_runs():
    _, fused = _pair([4, 3, 3])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused(torch.randn(1, 9, 14, 14, 32))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
