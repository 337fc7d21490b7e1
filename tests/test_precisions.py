"""One name per precision (``runtime.precisions``): the manifest, the engines, calibration's
targets and the command lines use the variant's name; the old names still work, with a warning,
and manifests that keyed the TensorRT INT8 engine "int8" are read."""

import json
import logging
import shutil

import pytest

from calibration.calibrate import parse_args as calibrate_args
from export.build_engine import parse_args as build_engine_args
from export.engine import engine_file
from runtime.manifest import Manifest
from runtime.precisions import ENGINE_PRECISIONS, INT8_PRECISIONS, PRECISIONS, precision_name


def test_names_and_old_names(caplog):
    assert PRECISIONS == ("fp32", "fp16", "int8-tensorrt", "int8-cpu")
    assert set(ENGINE_PRECISIONS) | set(INT8_PRECISIONS) == set(PRECISIONS)
    assert precision_name("int8-cpu") == "int8-cpu"
    with caplog.at_level(logging.WARNING, logger="runtime.precisions"):
        assert precision_name("int8", ENGINE_PRECISIONS) == "int8-tensorrt"
        assert precision_name("cpu", INT8_PRECISIONS) == "int8-cpu"
    assert "'int8' is now called 'int8-tensorrt'" in caplog.text
    with pytest.raises(ValueError, match=r"engine precision must be one of \['fp32', 'fp16', "
                       r"'int8-tensorrt'\], got 'int8-cpu'"):  # fmt: skip
        precision_name("int8-cpu", ENGINE_PRECISIONS, "engine precision")
    with pytest.raises(ValueError, match="got 'bf16'"):
        precision_name("bf16")


def test_command_lines_take_the_one_name_and_the_old_ones(capsys):
    assert build_engine_args(["--bundle", "b", "--precision", "int8"]).precision == "int8-tensorrt"
    assert build_engine_args(["--bundle", "b", "--precision", "int8-tensorrt"]).precision == (
        "int8-tensorrt"
    )
    args = calibrate_args(["--bundle", "b", "--data", "d", "--target", "tensorrt", "int8-cpu"])
    assert args.target == ["int8-tensorrt", "int8-cpu"]
    assert calibrate_args(["--bundle", "b", "--data", "d"]).target == list(INT8_PRECISIONS)
    with pytest.raises(SystemExit):
        build_engine_args(["--bundle", "b", "--precision", "int8-cpu"])
    assert "engine precision must be one of" in capsys.readouterr().err
    assert engine_file("video", "int8-tensorrt") == "engines/video.int8-tensorrt.plan"


def test_a_manifest_with_the_old_engine_key_is_read(tiny_bundle, tmp_path):
    """Bundles whose INT8 engine was recorded as "int8" load with it under "int8-tensorrt"."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    data["engines"] = {"int8": {"video": {"file": "engines/video.int8.plan"}}}
    path.write_text(json.dumps(data))
    manifest = Manifest.load(bundle, verify=False)
    assert manifest.engine("int8-tensorrt", "video")["file"] == "engines/video.int8.plan"
