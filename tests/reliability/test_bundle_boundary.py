"""Issue items 11 and 12 (bundles): the bundle is a boundary. Every file name the manifest holds
stays inside the bundle directory (no absolute path, no ``..``, no symlink out), everything the
runtime reads is listed and hash-checked, ``info`` never stats or hashes anything outside, and
an exported and calibrated bundle is readable by other users under the usual umask.

Real bundles (the toy of ``tests/bundles.py``; the session's export of the shipped checkpoint,
calibrated, for the permissions), really edited manifests and real symlinks.
"""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from calibration.int8 import calibrate_bundle
from runtime.__main__ import main
from runtime.backends import load_backend
from runtime.files import current_umask, sha256_file
from runtime.manifest import BundleError, Manifest
from runtime.predictor import RVOSPredictor

# toy and bundle (a fresh copy of the toy per test) are tests/reliability/conftest.py's.


def edit(root: Path, change) -> None:
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def listing(path: Path, role: str = "outside") -> dict:
    """A ``files`` entry that matches ``path`` exactly (size and sha256)."""
    return {"role": role, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


@pytest.mark.parametrize("verify", [True, False], ids=["info", "info --no-verify"])
@pytest.mark.parametrize("absolute", [True, False], ids=["absolute path", "../ path"])
def test_info_never_looks_at_a_file_outside_the_bundle(bundle, tmp_path, capsys, absolute, verify):
    """The issue's case: ``/etc/passwd`` listed in files made ``info`` print its size and a
    sha256 prefix. Here a secret beside the bundle, listed with a wrong size and hash."""
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:the size of this line is a secret\n" * 3)
    name = str(secret) if absolute else "../secret.txt"
    edit(bundle, lambda d: d["files"].update({name: {"bytes": 1, "sha256": "0" * 64}}))
    assert main(["info", "--bundle", str(bundle)] + ([] if verify else ["--no-verify"])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "absolute paths and '..' are refused" in err, err
    assert str(secret.stat().st_size) not in err and sha256_file(secret)[:16] not in err


def test_a_graph_from_outside_is_refused_even_with_its_hash_listed(bundle, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(bundle / "video.onnx", elsewhere / "video.onnx")
    name = "../elsewhere/video.onnx"

    def point_outside(data):
        data["files"][name] = listing(elsewhere / "video.onnx", "onnx graph")
        data["graphs"]["video"]["variants"]["fp32"]["file"] = name

    edit(bundle, point_outside)
    with pytest.raises(BundleError, match=r"files\[\"\.\./elsewhere/video\.onnx\"\].*'\.\.'"):
        load_backend(bundle, "video", "onnxruntime")


@pytest.mark.parametrize("name", ["video.onnx", "tokenizer.json"])
def test_a_symlink_out_of_the_bundle_is_refused(bundle, tmp_path, name):
    """Same bytes, same hash; only where the file lives differs. A symlink to a file inside
    the bundle stays allowed."""
    inside = bundle / f"copy-of-{name}"
    shutil.copy(bundle / name, inside)
    (bundle / name).unlink()
    (bundle / name).symlink_to(inside.name)
    RVOSPredictor(bundle, backend="onnxruntime").encode_text("the red circle")  # inside: fine

    outside = tmp_path / f"outside-{name}"
    shutil.copy(inside, outside)
    (bundle / name).unlink()
    (bundle / name).symlink_to(outside)
    with pytest.raises(BundleError, match=rf"{name} resolves to .*outside-{name}, outside the bundle"):
        RVOSPredictor(bundle, backend="onnxruntime")


def test_a_symlinked_directory_out_of_the_bundle_is_refused(bundle, tmp_path):
    """A listed file under a directory that is a symlink out of the bundle (engines/, say)."""
    outside = tmp_path / "engines-elsewhere"
    outside.mkdir()
    plan = outside / "video.fp16.plan"
    plan.write_bytes(b"not read: refused first")
    (bundle / "engines").symlink_to(outside, target_is_directory=True)

    def add_engine(data):
        data["files"]["engines/video.fp16.plan"] = listing(plan, "tensorrt engine")
        data["engines"] = {"fp16": {"video": {"file": "engines/video.fp16.plan"}}}

    edit(bundle, add_engine)
    with pytest.raises(BundleError, match=r"engines/video\.fp16\.plan resolves to .*outside"):
        Manifest.load(bundle)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda d: d["preprocessing"].update(tokenizer="../tokenizer.json"),
         r"preprocessing\.tokenizer must be a path inside the bundle"),
        (lambda d: d["graphs"]["video"]["variants"]["fp32"].update(external_data=["/tmp/w.data"]),
         r"graphs\.video\.variants\.fp32\.external_data\[0\] must be a path inside the bundle"),
        (lambda d: d.update(engines={"fp16": {"video": {"file": "../video.fp16.plan"}}}),
         r"engines\.fp16\.video\.file must be a path inside the bundle"),
    ],
    ids=["tokenizer ../", "external data absolute", "engine ../"],
)
def test_every_name_the_runtime_reads_is_inside_and_listed(bundle, change, message):
    """Graphs' external data, engines and the tokenizer follow the rule of ``files``."""
    edit(bundle, change)
    with pytest.raises(BundleError, match=message):
        Manifest.load(bundle, verify=False)


def test_an_engine_is_hash_checked_as_it_is_read(bundle):
    """The TensorRT backend deserializes the bytes ``read_verified`` checked: an engine changed
    after the manifest was loaded (or loaded without ``verify``) is refused, not run."""
    plan = bundle / "engines" / "video.fp16.plan"
    plan.parent.mkdir()
    plan.write_bytes(b"a serialized engine" * 50)

    def add_engine(data):
        data["files"]["engines/video.fp16.plan"] = listing(plan, "tensorrt engine")
        data["engines"] = {"fp16": {"video": {"file": "engines/video.fp16.plan"}}}

    edit(bundle, add_engine)
    manifest = Manifest.load(bundle)
    assert manifest.read_verified(manifest.engine("fp16", "video")["file"]) == plan.read_bytes()
    del manifest.data["files"]["engines/video.fp16.plan"]  # an engine entry without a hash
    with pytest.raises(BundleError, match=r"engines/video\.fp16\.plan is not listed in files"):
        manifest.read_verified("engines/video.fp16.plan")
    manifest = Manifest.load(bundle)
    plan.write_bytes(b"a serialized engine" * 49 + b"another engine!!!!!")  # same size
    with pytest.raises(BundleError, match=r"video\.fp16\.plan has 950 bytes and sha256"):
        manifest.read_verified("engines/video.fp16.plan")


# -- item 12: permissions of an exported and calibrated bundle ------------------------------


@pytest.mark.slow
def test_exported_and_calibrated_bundle_follows_the_umask(tiny_bundle, synth_data, tmp_path):
    """Every file 0666 and every directory 0777 less the umask (0644 and 0755 under the usual
    022), the bundle itself included: export stages in a temporary directory and calibration
    writes graphs, samples, range caches and the manifest through temporary files, each of
    which is private (0600/0700) unless given the umask's mode.

    ``tiny_bundle`` is the session's export (made in this process, under its umask);
    ``copytree`` keeps its modes, and the copy is calibrated here."""
    mask = current_umask()
    if mask & 0o077 == 0o077:
        pytest.skip(f"umask {mask:04o} makes every file private: nothing to tell apart")
    out = tmp_path / "store" / "bundle"
    shutil.copytree(tiny_bundle, out)
    calibrate_bundle(out, synth_data, ("int8-tensorrt", "int8-cpu"), samples=2, check_samples=1,
                     threads=1)  # fmt: skip
    wrong = {}
    for path in [out, *out.rglob("*")]:
        want = (0o777 if path.is_dir() else 0o666) & ~mask
        have = stat.S_IMODE(path.lstat().st_mode)
        if have != want:
            wrong[str(path.relative_to(out.parent))] = f"{have:04o}, not {want:04o}"
    assert not wrong, f"under umask {mask:04o}: {wrong}"
    assert (out / "video.int8-cpu.onnx").is_file() and any((out / "calibration").rglob("*.json"))
