"""``python -m runtime batch`` on a real local Ray cluster (2 CPUs, 2 workers) over real
synthetic videos and the tiny bundle: outputs equal the in-process predictor's, a corrupt video
fails alone, a batch killed part-way resumes without redoing finished videos, and bad inputs
are refused before Ray starts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from runtime.batch import BatchError, is_finished, plan_jobs, run_batch
from runtime.predictor import RVOSPredictor
from runtime.video import read_image, read_video

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster this module's batches join (``--address``), so a killed batch
    driver leaves the cluster up, as on a real one."""
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                       runtime_env={"env_vars": env})  # fmt: skip
    yield context.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture()
def videos(make_synthetic, tmp_path):
    """Eight synthetic videos (frame folders) and a corrupt video file, with expressions."""
    data = make_synthetic()
    meta = json.loads((data / "meta_expressions/train/meta_expressions.json").read_text())
    folder = tmp_path / "videos"
    names = sorted(meta["videos"])[:8]
    expressions = {}
    for name in names:
        shutil.copytree(data / "train/JPEGImages" / name, folder / name)
        texts = [e["exp"] for e in meta["videos"][name]["expressions"].values()]
        expressions[name] = texts[:2]
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    expressions["broken"] = ["the red circle"]
    (tmp_path / "expressions.json").write_text(json.dumps(expressions))
    return folder, tmp_path / "expressions.json", expressions


def test_plan_refuses_bad_inputs(videos, tmp_path):
    folder, expressions_file, expressions = videos
    missing = dict(expressions, ghost=["a circle"])
    (tmp_path / "missing.json").write_text(json.dumps(missing))
    with pytest.raises(BatchError, match=r"names 1 video\(s\) not in --videos .*ghost"):
        plan_jobs(folder, tmp_path / "missing.json")
    fewer = {k: v for k, v in expressions.items() if k != "broken"}
    (tmp_path / "fewer.json").write_text(json.dumps(fewer))
    with pytest.raises(BatchError, match=r"have no expressions .*broken"):
        plan_jobs(folder, tmp_path / "fewer.json")
    (tmp_path / "empty.json").write_text(json.dumps(dict(expressions, broken=[" "])))
    with pytest.raises(BatchError, match="'broken' expression '0' must be a non-empty string"):
        plan_jobs(folder, tmp_path / "empty.json")
    chosen = sorted(expressions)[1:3]
    (folder / "chosen.txt").write_text("# two of them\n" + "\n".join(chosen) + "\n")
    jobs = plan_jobs(folder / "chosen.txt", expressions_file)  # a list selects
    assert "chosen" not in [j.name for j in plan_jobs(folder, expressions_file)]  # not a video
    assert [(j.name, j.source) for j in jobs] == [(n, str(folder / n)) for n in chosen]
    assert jobs[0].expressions == tuple((str(i), t) for i, t in enumerate(expressions[chosen[0]]))
    listing = tmp_path / "list" / "videos.txt"
    listing.parent.mkdir()
    listing.write_text(f"../videos/{min(expressions)}\n")
    with pytest.raises(BatchError, match="line 1: .* outside"):
        plan_jobs(listing, expressions_file)


@pytest.mark.slow
def test_batch_resumes_and_a_corrupt_video_fails_alone(ray_cluster, tiny_bundle, videos, tmp_path):
    folder, expressions_file, expressions = videos
    out = tmp_path / "out"
    command = [sys.executable, "-m", "runtime", "batch", "--bundle", str(tiny_bundle),
               "--videos", str(folder), "--expressions", str(expressions_file), "--out", str(out),
               "--address", ray_cluster, "--workers", "1", "--backend", "onnxruntime",
               "--no-progress"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    driver = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)  # fmt: skip
    # Interrupted for real: the driver is killed once the first video is finished.
    while not list(out.glob("*_result.json")) and driver.poll() is None:
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    log = driver.communicate()[0].decode(errors="replace")
    finished = {p.name.removesuffix("_result.json"): p.stat().st_mtime_ns
                for p in out.glob("*_result.json")}  # fmt: skip
    assert finished, log
    assert len(finished) < len(expressions) - 1, "the batch finished before it was killed"

    report = run_batch(tiny_bundle, folder, expressions_file, out, address=ray_cluster,
                       workers=2, backend="onnxruntime", progress=False)  # fmt: skip
    good = sorted(name for name in expressions if name != "broken")
    # The killed driver's Ray worker may still finish the video it held (the cluster outlives
    # the driver), so at least what was finished at the kill is skipped, and the rest is done.
    assert len(finished) <= report["skipped_finished"] <= len(good)
    assert report["done"] == len(good) - report["skipped_finished"]
    assert [f["video"] for f in report["failed"]] == ["broken"]
    assert "broken.mp4" in report["failed"][0]["error"]
    assert report["workers"] == 2 and report["videos_per_minute"] > 0
    assert json.loads((out / "batch_report.json").read_text())["failed"] == report["failed"]
    for name, mtime in finished.items():  # not redone
        assert (out / f"{name}_result.json").stat().st_mtime_ns == mtime
    assert all(is_finished(out, name) for name in good) and not is_finished(out, "broken")

    # The masks are the in-process predictor's, in the Ref-YouTube-VOS layout and its zip.
    predictor = RVOSPredictor(tiny_bundle, backend="onnxruntime")
    name = good[-1]
    frames, frame_names = read_video(folder / name)
    expected = predictor.segment(frames, expressions[name])
    for index in range(len(expressions[name])):
        written = np.stack([read_image(out / "Annotations" / name / str(index) / f"{f}.png")
                            for f in frame_names])  # fmt: skip
        np.testing.assert_array_equal(written[..., 0] > 0, expected.masks[index])
    with zipfile.ZipFile(out / "submission.zip") as archive:
        entries = set(archive.namelist())
    assert {n.split("/")[1] for n in entries} == set(good)
    assert f"Annotations/{name}/1/{frame_names[-1]}.png" in entries

    again = run_batch(tiny_bundle, folder, expressions_file, out, address=ray_cluster,
                      workers=2, backend="onnxruntime", progress=False)  # fmt: skip
    assert again["done"] == 0 and again["skipped_finished"] == len(good)
    assert [f["video"] for f in again["failed"]] == ["broken"]  # retried, fails again


@pytest.mark.slow
def test_a_predictor_that_cannot_load_is_one_clear_error(ray_cluster, tiny_bundle, videos,
                                                         tmp_path):  # fmt: skip
    folder, expressions_file, _ = videos
    with pytest.raises(BatchError, match="could not load the predictor .*int8-cpu"):
        run_batch(
            tiny_bundle,
            folder,
            expressions_file,
            tmp_path / "out",
            address=ray_cluster,
            workers=2,
            backend="onnxruntime",
            precision="int8-cpu",
            progress=False,
        )
    assert not list((tmp_path / "out").glob("*_result.json"))


def test_finished_means_every_listed_file_inside_out(tmp_path):
    out = tmp_path / "out"
    (out / "Annotations/v/0").mkdir(parents=True)
    (out / "Annotations/v/0/00000.png").write_bytes(b"png")
    listed = [{"path": "Annotations/v/0/00000.png", "bytes": 3}]
    (out / "v_result.json").write_text(json.dumps({"files": listed}))
    assert is_finished(out, "v")
    (out / "v_result.json").write_text(json.dumps({"files": [dict(listed[0], bytes=4)]}))
    assert not is_finished(out, "v")  # a file of another size: not this run's
    (tmp_path / "elsewhere.png").write_bytes(b"png")
    outside = [{"path": "../elsewhere.png", "bytes": 3}]
    (out / "v_result.json").write_text(json.dumps({"files": outside}))
    assert not is_finished(out, "v")
    assert not is_finished(out, "missing")
