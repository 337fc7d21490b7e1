"""Issue items on reading checkpoints: a config value of the wrong JSON type is refused by name
(#10), so are weights holding NaN or of the wrong dtype (#10), and a config.json that does
not match its weights fails on the safetensors header before the model it describes is
allocated (#13). Every fixture is a real tiny checkpoint, saved and then edited on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from proxyformer.checkpoint import load_checkpoint, save_checkpoint
from proxyformer.config import ProxyFormerConfig, get_preset
from proxyformer.model import build_proxyformer

ROOT = Path(__file__).resolve().parents[2]
TENSOR = "cmie.proxy_embed.weight"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A real ``tiny`` checkpoint (6.3 MB of weights), saved once; tests edit copies."""
    torch.manual_seed(0)
    return save_checkpoint(build_proxyformer(get_preset("tiny")),
                           tmp_path_factory.mktemp("tiny") / "ckpt")  # fmt: skip


@pytest.fixture
def checkpoint(saved, tmp_path):
    import shutil

    return Path(shutil.copytree(saved, tmp_path / "ckpt"))


def edit_config(directory: Path, path: str, value) -> None:
    """Set ``path`` (dotted) in ``directory/config.json`` to ``value``, as a person would."""
    data = json.loads((directory / "config.json").read_text())
    *sections, key = path.split(".")
    node = data
    for section in sections:
        node = node[section]
    node[key] = value
    (directory / "config.json").write_text(json.dumps(data, indent=2))


def edit_weights(directory: Path, name: str, change) -> None:
    """Rewrite ``model.safetensors`` with tensor ``name`` replaced by ``change(tensor)``,
    keeping the header's metadata."""
    path = directory / "model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    state = load_file(str(path))
    state[name] = change(state[name])
    save_file(state, str(path), metadata=metadata)


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("text.freeze", "false", "a boolean (true/false), got 'false' (string)"),
    ("cmie.use_p2v", 0, "a boolean (true/false), got 0 (integer)"),
    ("hidden_dim", "64", "an integer, got '64' (string)"),
    ("backbone.window_size", [8, 7], "a list of 3 integers, got [8, 7] (list)"),
])  # fmt: skip
def test_a_config_value_of_the_wrong_type_is_refused_by_name(checkpoint, field, value, expected):
    edit_config(checkpoint, field, value)
    with pytest.raises(ValueError) as error:
        load_checkpoint(checkpoint)
    message = str(error.value)
    assert f"config.{field} must be {expected}" in message
    assert str(checkpoint / "config.json") in message


def test_a_python_style_false_in_set_is_refused():
    # --set cmie.use_p2v=False is not JSON, so the command line passes the string "False".
    with pytest.raises(ValueError, match=r"cmie.use_p2v must be a boolean .*got 'False'"):
        get_preset("tiny", **{"cmie.use_p2v": "False"})
    assert get_preset("tiny", **{"cmie.dropout": 0}).cmie.dropout == 0.0  # JSON's 0 is a number


def test_weights_holding_nan_are_refused_naming_the_tensor(checkpoint):
    def poison(tensor):
        tensor = tensor.clone()
        tensor[0, 0] = float("nan")
        tensor[1, 1] = float("inf")
        return tensor

    edit_weights(checkpoint, TENSOR, poison)
    with pytest.raises(ValueError, match=rf"NaN or infinite values: \['{TENSOR} \(2 of \d+ values\)'\]"):
        load_checkpoint(checkpoint)


def test_integer_weights_are_refused_naming_the_tensor(checkpoint):
    edit_weights(checkpoint, TENSOR, lambda tensor: (tensor * 100).to(torch.int64))
    with pytest.raises(ValueError, match=rf"dtype mismatches \['{TENSOR}: file int64 vs model float32'\]"):
        load_checkpoint(checkpoint)


def test_truncated_weights_are_refused_naming_the_file(checkpoint):
    path = checkpoint / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"{path} is \d+ bytes but its header describes \d+"):
        load_checkpoint(checkpoint)


# Loads checkpoints in a process whose address space is capped at 2 GiB above what torch itself
# maps, so that the old behaviour (building the 3.4 GB or 200 GB model that config.json
# describes) fails in the allocator there instead of taking the test machine's memory.
LOAD_CAPPED = """
import json, resource, sys
import torch
from proxyformer.checkpoint import load_checkpoint
status = open("/proc/self/status").read()
mapped = int(status.split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (mapped + (2 << 30), resource.RLIM_INFINITY))
outcomes = []
for directory in sys.argv[1:]:
    try:
        load_checkpoint(directory)
        outcomes.append({"error": None})
    except Exception as error:
        outcomes.append({"error": type(error).__name__, "message": str(error)})
# VmHWM: this process's own peak (ru_maxrss would include the parent's, inherited at fork).
peak = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
print(json.dumps({"outcomes": outcomes, "peak_rss_mb": int(peak) / 1024}))
"""


def test_a_config_larger_than_its_weights_fails_before_allocating(saved, tmp_path):
    import shutil

    sizes = (2048, 16384)  # 3.4 GB and about 200 GB of float32 weights for the tiny layout
    copies = []
    for hidden_dim in sizes:
        copy = Path(shutil.copytree(saved, tmp_path / f"hidden-{hidden_dim}"))
        # Still divisible by the 4 attention heads: a valid config on its own.
        edit_config(copy, "hidden_dim", hidden_dim)
        ProxyFormerConfig.from_json(copy / "config.json")
        copies.append(copy)
    run = subprocess.run([sys.executable, "-c", LOAD_CAPPED, *map(str, copies)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=False,
                         env=os.environ | {"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    for hidden_dim, copy, outcome in zip(sizes, copies, result["outcomes"]):
        assert outcome["error"] == "ValueError", outcome
        message = outcome["message"]
        assert "shape mismatches ['cmie.layers.0.ffn_proxy.net.0.weight: file (256, 64) vs " \
               f"model (256, {hidden_dim})'" in message
        assert f"probably: hidden_dim={hidden_dim} (from {copy / 'config.json'})" in message
    # Nothing of the models' size was allocated (torch and the meta model: about 400 MB).
    assert result["peak_rss_mb"] < 1500, result
