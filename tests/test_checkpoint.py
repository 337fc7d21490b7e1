"""Checkpoints: exact round trip, atomic replacement, refusal of another preset."""

import json

import pytest
import torch

from conftest import make_model, random_frames
from proxyformer.checkpoint import (
    checkpoint_info,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)


def test_round_trip_is_exact(tiny_model, tokenizer, text_inputs, tmp_path):
    directory = save_checkpoint(tiny_model, tmp_path / "ckpt", tokenizer=tokenizer)
    assert sorted(p.name for p in directory.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json",
    ]  # fmt: skip
    loaded = load_checkpoint(directory)
    assert loaded.config == tiny_model.config
    original, restored = tiny_model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    frames = random_frames()
    with torch.no_grad():
        assert torch.equal(
            tiny_model(frames, *text_inputs)["pred_masks"], loaded(frames, *text_inputs)["pred_masks"]
        )
    info = checkpoint_info(directory)
    assert info["metadata"]["preset"] == "tiny" and info["config"]["name"] == "tiny"


def test_no_pickle_is_written(tiny_model, tmp_path):
    directory = save_checkpoint(tiny_model, tmp_path / "ckpt")
    raw = (directory / "model.safetensors").read_bytes()
    header_length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_length])  # safetensors: JSON header + raw tensors
    assert "backbone.stages.0.0.weight" in header


def test_saving_over_a_checkpoint_replaces_it_whole(tiny_config, tmp_path):
    first, second = make_model(tiny_config), make_model(tiny_config)
    with torch.no_grad():
        for p in second.parameters():
            p.add_(1.0)
    directory = tmp_path / "ckpt"
    save_checkpoint(first, directory, extra_files={"state.json": b"{}"})
    save_checkpoint(second, directory)
    assert not (directory / "state.json").exists()  # nothing of the old one lingers
    loaded = load_checkpoint(directory)
    assert torch.equal(loaded.cmie.proxy_embed.weight, second.cmie.proxy_embed.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging left behind


def test_a_failed_save_keeps_the_previous_checkpoint(tiny_model, tmp_path):
    directory = save_checkpoint(tiny_model, tmp_path / "ckpt")
    before = (directory / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="plain file names"):
        save_checkpoint(tiny_model, directory, extra_files={"../escape": b"x"})
    assert (directory / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_a_checkpoint_of_another_preset_is_refused(tiny_model, tiny_config, tmp_path):
    directory = save_checkpoint(tiny_model, tmp_path / "ckpt")
    other = make_model(tiny_config.replace(hidden_dim=32, **{"decoder.mask_dim": 16}))
    with pytest.raises(ValueError, match=r"preset 'tiny' and does not fit .* hidden_dim: model=32"):
        load_weights(other, directory)
    with pytest.raises(ValueError, match="is preset 'tiny', not 'paper-r50'"):
        load_checkpoint(directory, preset="paper-r50")


def test_damaged_checkpoints_name_the_file(tiny_model, tmp_path):
    directory = save_checkpoint(tiny_model, tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        load_checkpoint(tmp_path / "nowhere")
    (directory / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_checkpoint(directory)
    (directory / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(directory)


def test_weights_with_missing_tensors_are_refused(tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    directory = save_checkpoint(tiny_model, tmp_path / "ckpt")
    state = load_file(str(directory / "model.safetensors"))
    del state["cmie.proxy_embed.weight"]
    state["cmie.extra"] = torch.zeros(1)
    save_file(state, str(directory / "model.safetensors"))
    with pytest.raises(
        ValueError, match=r"missing keys \['cmie.proxy_embed.weight'\].*unexpected keys \['cmie.extra'\]"
    ):
        load_checkpoint(directory)
