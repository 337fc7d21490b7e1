"""Issue items on ``python -m runtime segment``: its arguments are checked before the bundle is
loaded or anything runs (#14), a run never mixes with an earlier one (#8), and a write that
fails is an error naming the file, never a success (#9).

The runs are real: the command line on the numpy toy bundle (tests/bundles.py), real frame
folders and videos, and a real file-size limit (``RLIMIT_FSIZE``) on a child process.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from runtime.__main__ import main
from runtime.predictor import RVOSPredictor

REPO = Path(__file__).parents[2]
TEXTS = ["the small red circle", "the big blue square"]


@pytest.fixture
def bundle(toy) -> Path:
    """The session's numpy toy (tests/bundles.py, never edited here): real ONNX graphs with the
    exported graphs' inputs and outputs, a real tokenizer (6 tokens at most), frames 1..4."""
    return toy


def frame_folder(root: Path, frames: int, seed: int = 0) -> Path:
    """PNG frames 32x48 of noise with a bright square: masks with both values."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for t in range(frames):
        image = rng.integers(0, 90, (32, 48, 3), dtype=np.uint8)
        image[8 + t : 20 + t, 10:26] = 250
        Image.fromarray(image).save(root / f"{t:05d}.png")
    return root


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    return {"long": frame_folder(root / "long", 5), "short": frame_folder(root / "short", 3, 1)}


def segment(bundle: Path, video: Path, out: Path, *extra: str, texts=TEXTS) -> list[str]:
    args = ["segment", "--bundle", str(bundle), "--video", str(video), "--out", str(out)]
    for text in texts:
        args += ["--text", text]
    return [*args, "--threads", "1", *extra]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> contents)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_rerun_is_refused_and_overwrite_replaces_the_whole_output(bundle, videos, tmp_path,
                                                                    capsys):  # fmt: skip
    out = tmp_path / "out"
    assert run_cli(segment(bundle, videos["long"], out, "--name", "clip"), capsys)[0] == 0
    assert run_cli(segment(bundle, videos["short"], out, "--name", "other"), capsys)[0] == 0
    first = tree(out)

    # Same video name, fewer expressions and frames: refused, nothing touched.
    shorter = segment(bundle, videos["short"], out, "--name", "clip", texts=TEXTS[:1])
    code, err = run_cli(shorter, capsys)
    assert code == 2, err
    assert "already holds outputs of the video 'clip'" in err and "--overwrite" in err
    assert tree(out) == first

    # --overwrite: clip's masks are exactly the new run's (one expression, three frames);
    # the other video's outputs are untouched.
    assert run_cli([*shorter, "--overwrite"], capsys)[0] == 0
    masks = sorted(
        p.relative_to(out).as_posix() for p in (out / "Annotations" / "clip").rglob("*.png")
    )
    assert masks == [f"Annotations/clip/0/{t:05d}.png" for t in range(3)]
    now = tree(out)
    assert {k: v for k, v in now.items() if "other" in k} == {
        k: v for k, v in first.items() if "other" in k
    }
    # The result JSON, written last, lists every file of the run with its size.
    result = json.loads((out / "clip_result.json").read_text())
    assert result["frames"] == 3 and [e["text"] for e in result["expressions"]] == TEXTS[:1]
    listed = {f["path"]: f["bytes"] for f in result["files"]}
    on_disk = {k: len(v) for k, v in now.items() if k.startswith(("Annotations/clip/", "clip_"))}
    on_disk.pop("clip_result.json")
    assert listed == on_disk
    assert not [p for p in out.rglob(".*")], "staging or temporary files left behind"


def test_overwrite_with_another_overlay_format_removes_the_old_overlay(bundle, videos, tmp_path,
                                                                        capsys):  # fmt: skip
    out = tmp_path / "out"
    assert run_cli(segment(bundle, videos["short"], out), capsys)[0] == 0
    assert (out / "short_overlay.mp4").is_file()
    assert run_cli(segment(bundle, videos["short"], out, "--gif", "--overwrite"), capsys)[0] == 0
    assert (out / "short_overlay.gif").is_file() and not (out / "short_overlay.mp4").exists()
    with Image.open(out / "short_overlay.gif") as gif:
        assert gif.n_frames == 3


def test_allow_partial_is_recorded_in_the_result(bundle, tmp_path, capsys):
    """A cut AVI (its index gone, 7 of 12 frames decode) runs only when allowed, and the
    result says what was missing."""
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (48, 32))
    rng = np.random.default_rng(0)
    for _ in range(12):
        writer.write(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
    writer.release()
    clip.write_bytes(clip.read_bytes()[: int(clip.stat().st_size * 0.6)])
    out = tmp_path / "out"
    code, err = run_cli(segment(bundle, clip, out), capsys)
    assert code == 2 and "clip.avi" in err and "of 12" in err
    assert run_cli(segment(bundle, clip, out, "--allow-partial"), capsys)[0] == 0
    result = json.loads((out / "clip_result.json").read_text())
    assert result["partial_video"]["frames_expected"] == 12
    assert result["partial_video"]["frames_decoded"] == result["frames"] < 12


@pytest.mark.parametrize(
    ("place", "message"),
    [
        ("file", "is a file, expected a directory"),
        ("under-file", "cannot be created: {parent} is a file"),
    ],
)
def test_out_is_checked_before_the_bundle_is_loaded(place, message, videos, tmp_path, capsys):
    """A missing bundle shows the order: the --out error comes first, so no model was built."""
    parent = tmp_path / "taken"
    parent.write_text("a file")
    out = parent if place == "file" else parent / "out"
    code, err = run_cli(segment(tmp_path / "no-bundle", videos["short"], out), capsys)
    assert code == 2 and "Traceback" not in err
    assert message.format(parent=parent) in err


@pytest.mark.parametrize("name", ["../escaped", "a/b", "..", ""])
def test_name_must_be_a_plain_name(name, bundle, videos, tmp_path, capsys):
    out = tmp_path / "runs" / "out"
    code, err = run_cli(segment(bundle, videos["short"], out, "--name", name), capsys)
    assert code == 2 and f"--name {name!r} is not a plain name" in err
    assert list((tmp_path / "runs").rglob("*")) == [], "something was written"


@pytest.mark.parametrize("fps", ["0", "-5", "nan", "inf"])
def test_fps_must_be_a_finite_positive_number(fps, bundle, videos, tmp_path, capsys):
    code, err = run_cli(segment(bundle, videos["short"], tmp_path / "out", "--fps", fps), capsys)
    assert code == 2 and "fps must be a finite number above 0" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("window", ["0", "-1", "5"])
def test_window_outside_the_profile_names_the_limits(window, bundle, videos, tmp_path, capsys):
    code, err = run_cli(segment(bundle, videos["short"], tmp_path / "out", "--window", window),
                        capsys)  # fmt: skip
    assert code == 2 and f"window of {window} frames is outside" in err and "[1, 4]" in err
    predictor = RVOSPredictor(bundle, backend="onnxruntime", threads=1)
    with pytest.raises(ValueError, match=r"window of 0 frames is outside .* \[1, 4\]"):
        predictor.segment(np.zeros((2, 32, 48, 3), np.uint8), TEXTS, window=0)


def test_an_expression_that_is_not_utf8_names_its_index(bundle, videos, tmp_path, capsys):
    texts = ["the red square", "the \ud800 circle"]
    code, err = run_cli(segment(bundle, videos["short"], tmp_path / "out", texts=texts), capsys)
    assert code == 2 and "expression 1 cannot be encoded as UTF-8" in err
    predictor = RVOSPredictor(bundle, backend="onnxruntime", threads=1)
    with pytest.raises(ValueError, match="expression 1 cannot be encoded as UTF-8"):
        predictor.encode_text(texts)


def test_the_truncation_warning_shows_the_start_and_the_length(bundle, caplog):
    predictor = RVOSPredictor(bundle, backend="onnxruntime", threads=1)
    text = "the small red circle " * 500  # 10,500 characters
    with caplog.at_level(logging.WARNING, logger="runtime.predictor"):
        embedding = predictor.encode_text(["a square", text])
    assert embedding.truncated == [False, True]
    (record,) = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert (
        "expression 1" in record.getMessage() and f"({len(text)} characters)" in record.getMessage()
    )
    assert len(record.getMessage()) < 200


# A child process under a file-size limit: Python ignores SIGXFSZ, so a write past the limit
# fails with EFBIG instead of killing the process, as a full disk would fail it.
def limited_run(argv: list[str], limit: int) -> subprocess.CompletedProcess:
    def limit_writes():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "runtime", *argv], check=False, capture_output=True,
                          text=True, timeout=120, cwd=REPO, env=env,
                          preexec_fn=limit_writes)  # fmt: skip


@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> Path:
    """Noise frames: an overlay far over 8 KiB (about 100 KB), masks far under it."""
    video = tmp_path_factory.mktemp("noisy") / "clip"
    video.mkdir()
    rng = np.random.default_rng(0)
    for t in range(4):
        Image.fromarray(rng.integers(0, 256, (128, 192, 3), np.uint8)).save(video / f"{t}.png")
    return video


@pytest.mark.parametrize(
    ("limit", "extra", "message"),
    [
        (8192, [], "clip_overlay.mp4 was not written"),  # the masks fit, the MP4 is cut
        (8192, ["--gif"], "clip_overlay.gif was not written"),  # the masks fit, the GIF does not
        (64, [], "Annotations/clip/0/0.png was not written"),  # the first mask does not fit
    ],
)
def test_a_write_past_a_file_size_limit_is_an_error_naming_the_file(
    limit, extra, message, bundle, noisy, tmp_path
):
    out = tmp_path / "out"
    run = limited_run(segment(bundle, noisy, out, *extra), limit)
    assert run.returncode == 2, run.stderr
    error = run.stderr[run.stderr.index("error: ") :]
    assert message in error and "Traceback" not in run.stderr, error
    # Nothing half-written is left to be mistaken for a result.
    assert [p for p in out.rglob("*") if p.is_file()] == []


def test_a_failed_overwrite_keeps_the_earlier_output(bundle, noisy, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(segment(bundle, noisy, out), capsys)[0] == 0
    earlier = tree(out)
    run = limited_run(segment(bundle, noisy, out, "--overwrite", "--text", "a big square"), 8192)
    assert run.returncode == 2 and "clip_overlay.mp4 was not written" in run.stderr, run.stderr
    assert tree(out) == earlier, "the failed run changed the earlier output"
    assert not [p for p in out.rglob(".*")], "staging or temporary files left behind"


# The CLI in a process that dies (os._exit: no clean-up, no rollback) as the commit moves the
# new masks into place: the earlier masks are renamed aside, the new ones still staged, the
# overlay still temporary, the earlier result JSON moved aside.
DIE_DURING_COMMIT = """
import os, sys
from pathlib import Path
real_replace = os.replace
def replace(src, dst):
    if ".tmp-" in Path(src).name:
        os._exit(9)
    real_replace(src, dst)
os.replace = replace
from runtime.__main__ import main
main(sys.argv[1:])
"""


def test_a_run_killed_during_commit_is_recovered_by_the_next(bundle, videos, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(segment(bundle, videos["short"], out), capsys)[0] == 0
    earlier = tree(out / "Annotations")
    argv = segment(bundle, videos["short"], out, "--overwrite", texts=TEXTS[:1])
    killed = subprocess.run([sys.executable, "-c", DIE_DURING_COMMIT, *argv], cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert killed.returncode == 9, killed.stderr
    assert not (out / "Annotations" / "short").exists() and list(out.rglob(".*"))

    # The next run puts the earlier masks back, drops the leftovers, and refuses to mix.
    code, err = run_cli(segment(bundle, videos["short"], out), capsys)
    assert code == 2 and "already holds outputs" in err
    assert tree(out / "Annotations") == earlier
    assert not list(out.rglob(".*")), "leftovers of the killed run remain"
    assert not (out / "short_result.json").exists()  # its files may have been replaced
    assert run_cli([*argv], capsys)[0] == 0
    assert json.loads((out / "short_result.json").read_text())["files"]
