import json

import pytest

from proxyformer.config import PRESETS, ProxyFormerConfig, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_round_trip_through_json(name, tmp_path):
    config = get_preset(name)
    path = tmp_path / "config.json"
    path.write_text(config.to_json())
    assert ProxyFormerConfig.from_json(path) == config
    assert ProxyFormerConfig.from_dict(json.loads(config.to_json())) == config


@pytest.mark.parametrize("name", ["paper-r50", "paper-swin-t", "paper-swin-b"])
def test_paper_hyper_parameters(name):
    config = get_preset(name)  # Sec. IV-B
    assert config.hidden_dim == 256
    assert config.cmie.num_layers == 4
    assert config.num_queries == 5
    assert config.cmie.num_heads == 8 and config.decoder.num_heads == 8
    assert config.decoder.num_layers == 3
    assert config.text.name == "roberta" and config.text.hidden_size == 768
    assert config.text.num_layers == 12 and config.text.freeze


def test_replace_with_dotted_keys():
    config = get_preset("tiny", **{"cmie.use_p2v": False, "num_queries": 3})
    assert config.cmie.use_p2v is False and config.num_queries == 3
    assert get_preset("tiny").cmie.use_p2v is True  # presets are not mutated
    assert config.diff(get_preset("tiny"), ("new", "old")) == [
        "cmie.use_p2v: new=False, old=True",
        "num_queries: new=3, old=5",
    ]


def test_bad_configs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        get_preset("nope")
    with pytest.raises(ValueError, match=r"unknown keys in config.cmie: \['bogus'\]"):
        data = get_preset("tiny").to_dict()
        data["cmie"]["bogus"] = 1
        ProxyFormerConfig.from_dict(data)
    with pytest.raises(ValueError, match="cmie.mode must be one of"):
        get_preset("tiny", **{"cmie.mode": "sideways"})
    with pytest.raises(ValueError, match="divisible by cmie.num_heads"):
        get_preset("tiny", hidden_dim=66)
    with pytest.raises(ValueError, match="num_queries"):
        get_preset("tiny", num_queries=0)
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ProxyFormerConfig.from_json(bad)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        ProxyFormerConfig.from_json(tmp_path / "missing.json")
