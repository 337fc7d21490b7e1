"""Issue item 14 (the manifest's part): a malformed ``manifest.json`` is refused with a message
that names the field (its JSON path), what it must be and what it is — never a traceback.

Each case is a real edit of a copy of one toy bundle (``bundles.write_numpy_toy``: real ONNX
graphs, a real tokenizer, a manifest written by ``runtime.manifest``): the manifest is read as
JSON, changed and written back, as a user's editor or a broken tool would. The checks run
through the real command line (``python -m runtime info``: ``error:`` and exit code 2) or, for
files that only fail when loaded, through the real predictor.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.__main__ import main
from runtime.files import sha256_file
from runtime.manifest import BundleError
from runtime.predictor import RVOSPredictor

# toy and bundle (a fresh copy of the toy per test) are tests/reliability/conftest.py's.


class TopLevel(list):
    """Returned by an edit to replace the whole manifest with this list."""


def edit(root: Path, change: Callable[[dict, Path], object]) -> None:
    """Rewrite ``root/manifest.json`` with ``change(data, root)`` applied to its JSON."""
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    result = change(data, root)
    path.write_text(json.dumps(result if isinstance(result, TopLevel) else data, indent=2))


def rehash(data: dict, root: Path, name: str) -> None:
    """Make the manifest match the file as it is now (a manifest rewritten for a bad file)."""
    data["files"][name] |= {"bytes": (root / name).stat().st_size,
                            "sha256": sha256_file(root / name)}  # fmt: skip


def video_outputs(data: dict) -> list:
    return data["graphs"]["video"]["outputs"]


def drop_output(data, _):
    data["graphs"]["video"]["outputs"] = [o for o in video_outputs(data)
                                          if o["name"] != "pred_masks"]  # fmt: skip


def drop_input(data, _):
    inputs = data["graphs"]["video"]["inputs"]
    data["graphs"]["video"]["inputs"] = [i for i in inputs if i["name"] != "attention_mask"]


def unlisted_tokenizer(data, root):
    shutil.copy(root / "tokenizer.json", root / "vocab.json")  # present, but never hashed
    data["preprocessing"]["tokenizer"] = "vocab.json"


# (case, edit, what the message must say). Every one of these loaded on the code before the
# issue and then either ran on a bad value or failed with a traceback deep inside a reader.
CASES = [
    ("top level a list", lambda d, _: TopLevel([d]), r"manifest\.json: the top level must be a JSON object"),
    ("profiles a list", lambda d, _: d.update(profiles=list(d["profiles"].values())),
     r"profiles must be an object, got \[\{"),
    ("profile not an object", lambda d, _: d["profiles"].update(T="1:2:4"),
     r'profiles\.T must be an object with min, opt and max, got "1:2:4"'),
    ("profile max a string", lambda d, _: d["profiles"]["T"].update(max="8"),
     r'profiles\.T\.max must be an int >= opt \(2\), got "8"'),
    ("axis without a profile", lambda d, _: d["profiles"].pop("L"),
     r'graphs\.text_encoder\.inputs\[0\]\.shape\[1\] is the axis .L., which has no range'),
    ("file without bytes", lambda d, _: d["files"]["video.onnx"].pop("bytes"),
     r'files\["video\.onnx"\]\.bytes is missing'),
    ("file entry a string", lambda d, _: d["files"].update({"tokenizer.json": "abc"}),
     r'files\["tokenizer\.json"\] must be an object with bytes and sha256, got "abc"'),
    ("sha256 not hex", lambda d, _: d["files"]["video.onnx"].update(sha256="xyz"),
     r'files\["video\.onnx"\]\.sha256 must be 64 lowercase hex digits, got "xyz"'),
    ("mask threshold 1.0", lambda d, _: d["preprocessing"].update(mask_threshold=1.0),
     r"preprocessing\.mask_threshold must be a number strictly between 0 and 1, got 1\.0"),
    ("mask threshold a string", lambda d, _: d["preprocessing"].update(mask_threshold="0.5"),
     r'preprocessing\.mask_threshold must be a number strictly between 0 and 1, got "0\.5"'),
    ("size 0x0", lambda d, _: d["preprocessing"].update(size=[0, 0]),
     r"preprocessing\.size must be \[height, width\], two positive ints, got \[0, 0\]"),
    ("unknown frame format", lambda d, _: d["preprocessing"].update(frame_format="bgr"),
     r'preprocessing\.frame_format must be one of uint8-nhwc, float-nchw, got "bgr"'),
    ("missing tokenizer", lambda d, _: d["preprocessing"].pop("tokenizer"),
     r"preprocessing\.tokenizer is missing"),
    ("tokenizer not listed", unlisted_tokenizer,
     r'preprocessing\.tokenizer names "vocab\.json", which is not listed in files'),
    ("dropped output", drop_output,
     r'graphs\.video\.outputs has no "pred_masks", which the runtime reads'),
    ("dropped input", drop_input,
     r'graphs\.video\.inputs has no "attention_mask", which the runtime feeds'),
    ("unknown dtype", lambda d, _: d["graphs"]["video"]["inputs"][0].update(dtype="uint9"),
     r'graphs\.video\.inputs\[0\]\.dtype must be one of .*, got "uint9"'),
    ("variants a list", lambda d, _: d["graphs"]["video"].update(variants=["video.onnx"]),
     r'graphs\.video\.variants must be an object, got \["video\.onnx"\]'),
    ("variant file not listed", lambda d, _: d["files"].pop("video.onnx"),
     r'graphs\.video\.variants\.fp32\.file names "video\.onnx", which is not listed in files'),
    ("engine without a file", lambda d, _: d.update(engines={"fp16": {"video": {"gpu": "x"}}}),
     r"engines\.fp16\.video\.file is missing"),
    ("opset a string", lambda d, _: d.update(opset="17"), r'opset must be a positive int, got "17"'),
]


@pytest.mark.parametrize("change,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_info_names_the_bad_field(bundle, change, message, capsys):
    edit(bundle, change)
    assert main(["info", "--bundle", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "manifest.json" in err
    assert re.search(message, err), err
    with pytest.raises(BundleError, match=message):  # the library says the same
        RVOSPredictor(bundle, backend="onnxruntime", verify=False)


def garbage_graph(data, root):
    (root / "video.onnx").write_bytes(b"this is not an ONNX protobuf\n" * 20)
    rehash(data, root, "video.onnx")


def garbage_tokenizer(data, root):
    (root / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    rehash(data, root, "tokenizer.json")


@pytest.mark.parametrize(
    "change,message",
    [
        (garbage_graph, r"onnxruntime .* could not load .*video\.onnx \(video fp32\)"),
        (garbage_tokenizer, r"tokenizer .*tokenizer\.json could not be read by tokenizers"),
    ],
    ids=["garbage ONNX with a matching hash", "garbage tokenizer with a matching hash"],
)
def test_unreadable_file_with_a_matching_hash_names_the_file(bundle, change, message):
    edit(bundle, change)
    with pytest.raises(BundleError, match=message):
        RVOSPredictor(bundle, backend="onnxruntime")


def test_the_toy_bundle_itself_passes(toy, capsys):
    """The edits above are what fails: the unedited copy loads and runs."""
    assert main(["info", "--bundle", str(toy)]) == 0
    assert "graph video:" in capsys.readouterr().out
    RVOSPredictor(toy, backend="onnxruntime").encode_text("the red circle")


# -- calibration's counts --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "least"),
    [(["--samples", "0"], 1), (["--samples", "-3"], 1), (["--check-samples", "-1"], 0),
     (["--frames", "0"], 1)],
    ids=lambda value: " ".join(value) if isinstance(value, list) else str(value),
)
def test_calibrate_refuses_a_count_below_its_least_before_any_work(argv, least, tmp_path,
                                                                   capsys):  # fmt: skip
    """argparse's usage error (exit 2) naming the flag, before the bundle is even looked
    for: the bundle and data given here do not exist. (``--check-samples 0`` is allowed: it
    skips the agreement check.)"""
    from calibration.calibrate import main as calibrate

    missing = str(tmp_path / "no-bundle")
    with pytest.raises(SystemExit) as raised:
        calibrate(["--bundle", missing, "--data", missing, *argv])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argv[0]}: must be at least {least}, got {int(argv[1])}" in err, err


def test_calibrate_bundle_checks_its_counts_first(tmp_path):
    from calibration.int8 import calibrate_bundle

    with pytest.raises(ValueError, match="samples must be an int of at least 1, got 0"):
        calibrate_bundle(tmp_path / "no-bundle", tmp_path / "no-data", samples=0)
    with pytest.raises(ValueError, match="check_samples must be an int of at least 0, got -1"):
        calibrate_bundle(tmp_path / "no-bundle", tmp_path / "no-data", check_samples=-1)
