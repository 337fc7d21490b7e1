"""Pretrained weights from local files: timm/torchvision ResNet-50, torchvision and Kinetics
(mmaction layout) Video-Swin, and a local RoBERTa directory. Files are written by the real
libraries here; nothing is downloaded."""

import pytest
import torch

from proxyformer.backbone import build_backbone
from proxyformer.config import BackboneConfig, get_preset
from proxyformer.text import TextEncoder, load_tokenizer


def test_resnet50_from_a_torchvision_state_dict(tmp_path):
    import torchvision

    reference = torchvision.models.resnet50()
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)  # includes fc.*, which the backbone drops
    backbone = build_backbone(BackboneConfig(name="resnet50"), path)
    body = backbone.body.state_dict()
    assert torch.equal(body["conv1.weight"], reference.state_dict()["conv1.weight"])
    assert torch.equal(body["layer4.2.bn3.weight"], reference.state_dict()["layer4.2.bn3.weight"])


def test_wrong_weights_name_missing_and_unexpected_keys(tmp_path):
    import torchvision

    state = torchvision.models.resnet50().state_dict()
    del state["layer1.0.conv1.weight"]
    state["layer9.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError, match=r"missing keys \['layer1.0.conv1.weight'\].*'layer9.weight'"):
        build_backbone(BackboneConfig(name="resnet50"), path)
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        build_backbone(BackboneConfig(name="resnet50"), tmp_path / "nothing.pth")


def _kinetics_swin_t_state() -> dict:
    """A Video-Swin-T state dict in torchvision's layout, patch size (2, 4, 4) as on Kinetics."""
    from torchvision.models.video import swin3d_t

    return swin3d_t().state_dict()


def test_video_swin_from_torchvision_kinetics_weights(tmp_path):
    state = _kinetics_swin_t_state()
    assert state["patch_embed.proj.weight"].shape[2] == 2
    path = tmp_path / "swin3d_t.pth"
    torch.save(state, path)
    backbone = build_backbone(BackboneConfig(name="video-swin-t"), path)
    own = backbone.state_dict()
    # Temporal patch size 1: the 2-frame kernel is summed over time.
    torch.testing.assert_close(
        own["patch_embed.proj.weight"], state["patch_embed.proj.weight"].sum(2, keepdim=True)
    )
    key = "features.4.3.attn.relative_position_bias_table"
    assert torch.equal(own[key], state[key])


def test_video_swin_from_the_original_mmaction_layout(tmp_path):
    import re

    state = _kinetics_swin_t_state()
    # Rename to the original Video-Swin repository's keys, wrapped as mmaction saves them.
    original = {}
    for key, value in state.items():
        new = re.sub(r"^features\.(\d+)\.(\d+)\.", lambda m: f"layers.{int(m[1]) // 2}.blocks.{m[2]}.", key)
        new = re.sub(r"^features\.(\d+)\.", lambda m: f"layers.{int(m[1]) // 2}.downsample.", new)
        new = new.replace(".mlp.0.", ".mlp.fc1.").replace(".mlp.3.", ".mlp.fc2.")
        new = "cls_head.fc_cls." + new[5:] if new.startswith("head.") else "backbone." + new
        original[new] = value
    assert "backbone.layers.2.blocks.5.mlp.fc2.weight" in original
    path = tmp_path / "swin_tiny_patch244_window877_kinetics400_1k.pth"
    torch.save({"meta": {}, "state_dict": original}, path)
    backbone = build_backbone(BackboneConfig(name="video-swin-t"), path)
    own = backbone.state_dict()
    assert torch.equal(own["features.4.5.mlp.3.weight"], state["features.4.5.mlp.3.weight"])
    assert torch.equal(own["features.5.reduction.weight"], state["features.5.reduction.weight"])


def test_video_swin_b_refuses_swin_t_weights(tmp_path):
    path = tmp_path / "swin3d_t.pth"
    torch.save(_kinetics_swin_t_state(), path)
    with pytest.raises(ValueError, match="shape mismatches"):
        build_backbone(BackboneConfig(name="video-swin-b"), path)


def test_text_encoder_from_a_local_directory(tmp_path):
    from transformers import RobertaConfig, RobertaModel

    config = get_preset("tiny")
    text = config.text
    saved = RobertaModel(
        RobertaConfig(
            vocab_size=text.vocab_size, hidden_size=text.hidden_size,
            num_hidden_layers=text.num_layers, num_attention_heads=text.num_heads,
            intermediate_size=text.intermediate_size, max_position_embeddings=text.max_length + 2,
            type_vocab_size=1, pad_token_id=1,
        ),
        add_pooling_layer=False,
    )  # fmt: skip
    saved.save_pretrained(tmp_path / "roberta")
    encoder = TextEncoder(text, config.hidden_dim, pretrained=tmp_path / "roberta")
    key = "embeddings.word_embeddings.weight"
    assert torch.equal(encoder.body.state_dict()[key], saved.state_dict()[key])
    # Pretrained weights without their tokenizer are refused rather than mis-tokenized.
    with pytest.raises(FileNotFoundError, match="no tokenizer.json with the text weights"):
        load_tokenizer(config, text_weights=tmp_path / "roberta")
    load_tokenizer(config).save(str(tmp_path / "roberta" / "tokenizer.json"))
    assert load_tokenizer(config, text_weights=tmp_path / "roberta").get_vocab_size() > 0

    wrong = get_preset("paper-r50").text
    with pytest.raises(ValueError, match="hidden size 64 and 2 layers; the config expects 768 and 12"):
        TextEncoder(wrong, 256, pretrained=tmp_path / "roberta")
