"""Batch inference over many videos on a Ray cluster (``python -m runtime batch``).

    python -m runtime batch --bundle bundles/tiny --videos data/valid/JPEGImages \\
        --expressions data/meta_expressions/valid/meta_expressions.json --out results/ \\
        [--address ray://head:10001 | auto] [--workers 4] [--gpus-per-worker 1]

- ``--videos``: a directory whose entries are the videos (frame folders, as Ref-YouTube-VOS
  ships them, or video files), or a text file listing one video per line (paths relative to
  the list's directory, and inside it: nothing outside what was given is read), which
  selects some of the videos the expression file names.
- ``--expressions``: Ref-YouTube-VOS's ``meta_expressions.json`` (``{"videos": {name:
  {"expressions": {id: {"exp": text}}}}}``) or a plain ``{name: [text, ...]}``. Every video
  must have expressions and every video named there must be found; both are checked, with
  the bundle, before Ray starts.
- One Ray actor per worker holds one ``RVOSPredictor`` (``--gpus-per-worker 1`` on GPU nodes:
  one per GPU) and segments the videos it is given, reading them and writing their outputs
  itself (so on a multi-node cluster ``--videos`` and ``--out`` are on shared storage).
- Each video's outputs are ``runtime.outputs.RunOutput``'s: staged, then put in place whole,
  the result JSON last. A video whose result JSON lists files that all exist with their
  sizes is finished and skipped by a rerun: a killed batch resumes where it stopped.
- A video that fails (unreadable, corrupt, an error in a worker) is recorded with its error in
  the report; the batch goes on.
- The report (``OUT/batch_report.json``, also returned and printed): videos done in this run,
  skipped as finished, failed with their errors, the seconds Ray and the workers took to
  start, the seconds segmenting took after that and videos per minute over those. Then
  ``OUT/submission.zip``: the ``Annotations/`` tree, the Ref-YouTube-VOS submission layout.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import atomic_write_text
from .outputs import RunOutput, check_name, check_out_dir
from .video import IMAGE_SUFFIXES
from .writers import write_masks

log = logging.getLogger(__name__)

REPORT_NAME = "batch_report.json"
# Files of a --videos directory that are not videos: lists, metadata (a video file is anything
# else that is not an image, as OpenCV decodes many formats).
SIDECARS = (".txt", ".json", ".csv", ".md", ".yaml", ".yml")
ZIP_NAME = "submission.zip"


class BatchError(ValueError):
    """Batch inputs that cannot be used: named file, field and value."""


@dataclass(frozen=True)
class VideoJob:
    name: str
    source: str  # a frame folder or a video file
    expressions: tuple[tuple[str, str], ...]  # (expression id: its directory name, text)


def _inside(path: Path, root: Path, what: str) -> Path:
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise BatchError(f"{what}: {path} resolves to {resolved}, outside {root}")
    return path


def list_videos(videos: str | Path) -> dict[str, Path]:
    """Video name -> path, from a directory of videos or a list file (see the docstring)."""
    videos = Path(videos)
    if videos.is_dir():
        found = {}
        for entry in sorted(videos.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir() or entry.suffix.lower() not in IMAGE_SUFFIXES + SIDECARS:
                _inside(entry, videos, f"--videos {videos}")
                found[entry.stem if entry.is_file() else entry.name] = entry
        if not found:
            raise BatchError(f"--videos {videos} holds no videos (frame folders or files)")
        return found
    if not videos.is_file():
        raise BatchError(f"--videos {videos} does not exist (a directory or a list file)")
    found = {}
    for number, line in enumerate(videos.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = _inside(videos.parent / line, videos.parent, f"--videos {videos} line {number}")
        name = path.name if path.is_dir() else path.stem
        if name in found:
            raise BatchError(f"--videos {videos} line {number}: a second video named {name!r}")
        found[name] = path
    if not found:
        raise BatchError(f"--videos {videos} lists no videos")
    return found


def read_expression_file(path: str | Path) -> dict[str, list[tuple[str, str]]]:
    """Video name -> [(expression id, text)] from either accepted format."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BatchError(f"--expressions {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BatchError(f"--expressions {path} is not valid JSON: {error}") from None
    if isinstance(data, dict) and isinstance(data.get("videos"), dict):
        out = {}
        for name, video in data["videos"].items():
            entries = video.get("expressions") if isinstance(video, dict) else None
            if not isinstance(entries, dict):
                raise BatchError(f"--expressions {path}: videos.{name}.expressions must be an "
                                 f"object of {{id: {{\"exp\": text}}}}")  # fmt: skip
            out[name] = [(str(i), e.get("exp") if isinstance(e, dict) else e)
                         for i, e in entries.items()]  # fmt: skip
    elif isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        out = {name: [(str(i), text) for i, text in enumerate(texts)]
               for name, texts in data.items()}  # fmt: skip
    else:
        raise BatchError(f"--expressions {path}: expected meta_expressions.json "
                         '({"videos": {...}}) or {video: [text, ...]}')  # fmt: skip
    for name, entries in out.items():
        for exp_id, text in entries:
            if not isinstance(text, str) or not text.strip():
                raise BatchError(f"--expressions {path}: video {name!r} expression {exp_id!r} "
                                 f"must be a non-empty string, got {text!r}")  # fmt: skip
            check_name(exp_id)  # it names a directory of the output
    return out


def plan_jobs(videos: str | Path, expressions: str | Path) -> list[VideoJob]:
    """The videos with their expressions, checked against each other.

    A directory must hold every video the expression file names (a missing one is more often
    a wrong path than a choice); a list file selects among them."""
    found = list_videos(videos)
    texts = read_expression_file(expressions)
    missing = sorted(set(texts) - set(found))
    if missing and Path(videos).is_dir():
        raise BatchError(f"--expressions {expressions} names {len(missing)} video(s) not in "
                         f"--videos {videos}: {missing[:5]}")  # fmt: skip
    without = sorted(name for name in found if not texts.get(name))
    if without:
        raise BatchError(f"--videos {videos}: {len(without)} video(s) have no expressions in "
                         f"{expressions}: {without[:5]}")  # fmt: skip
    return [VideoJob(check_name(name), str(path), tuple(texts[name]))
            for name, path in found.items()]  # fmt: skip


def is_finished(out: Path, name: str) -> bool:
    """Whether ``out`` holds a complete run of ``name``: its result JSON (written last) lists
    files that all exist with their recorded sizes."""
    out = Path(out)
    result = out / f"{name}_result.json"
    root = out.resolve()
    try:
        files = json.loads(result.read_text())["files"]
        paths = [(out / f["path"], f["bytes"]) for f in files]
        # A result JSON naming a file outside OUT is not one this batch wrote.
        return bool(paths) and all(
            path.resolve().is_relative_to(root) and path.stat().st_size == size
            for path, size in paths
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def segment_video(predictor, job: VideoJob, out: Path) -> dict:
    """Segment one video window by window (``RVOSPredictor.stream``: never the whole video in
    memory) and write its outputs (masks per expression id as each window completes, the result
    JSON last); earlier, unfinished outputs of the video are replaced."""
    from .predictor import TIMING_KEYS

    started = time.perf_counter()
    texts = [text for _, text in job.expressions]
    scores: list[list[float]] = [[] for _ in texts]
    queries: list[list[int]] = [[] for _ in texts]
    timings = dict.fromkeys(TIMING_KEYS, 0.0)
    frames = 0
    with RunOutput(out, job.name, overwrite=True) as output:
        for window in predictor.stream(job.source, texts):
            for (exp_id, _), masks in zip(job.expressions, window.masks):
                write_masks(masks, window.names, output.masks_dir / exp_id)
            for index, choice in enumerate(window.choices):
                scores[index].append(choice.score)
                queries[index].append(int(choice.query))
            for key in timings:
                timings[key] += window.timings_ms[key]
            frames += len(window.names)
        summary = {
            "video": job.source,
            "name": job.name,
            "frames": frames,
            "expressions": [
                {
                    "id": exp_id,
                    "text": text,
                    "score": float(np.mean(scores[i])),
                    "queries": queries[i],
                }
                for i, (exp_id, text) in enumerate(job.expressions)
            ],
            "timings_ms": {k: round(v, 2) for k, v in timings.items()},
            "seconds": round(time.perf_counter() - started, 3),
        }
        return output.commit(summary)


class SegmentWorker:
    """One predictor, many videos (wrapped as a Ray actor by ``run_batch``)."""

    def __init__(self, bundle: str, backend: str, precision: str, threads: int | None) -> None:
        from .predictor import RVOSPredictor

        options = {"threads": threads} if threads else {}
        self.predictor = RVOSPredictor(bundle, backend=backend, precision=precision, **options)

    def ready(self) -> str:
        return self.predictor.backend_name

    def run(self, job: VideoJob, out: str) -> dict:
        try:
            summary = segment_video(self.predictor, job, Path(out))
            return {"video": job.name, "status": "done", "seconds": summary["seconds"]}
        except Exception as error:  # noqa: BLE001 (recorded in the report; the batch goes on)
            log.warning("video %s failed: %s", job.name, error)
            return {"video": job.name, "status": "failed",
                    "error": f"{type(error).__name__}: {error}"}  # fmt: skip


def write_zip(out: Path) -> Path:
    """``OUT/submission.zip`` of ``OUT/Annotations`` (entries ``Annotations/<video>/...``),
    written aside and renamed into place."""
    target = out / ZIP_NAME
    temporary = out / f".{ZIP_NAME}.tmp"
    annotations = out / "Annotations"
    with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(annotations.rglob("*.png")):
            relative = path.relative_to(out)
            if not any(part.startswith(".") for part in relative.parts):  # no staging dirs
                archive.write(path, relative.as_posix())
    os.replace(temporary, target)
    return target


def _segment_on_ray(ray, pending: list[VideoJob], bundle, out: Path, workers: int,
                    backend: str, precision: str, threads, gpus_per_worker: float, total: int,
                    progress: bool) -> tuple[list[dict], float]:  # fmt: skip
    """The pending videos through a pool of ``SegmentWorker`` actors; returns the records and
    when segmenting started (the workers ready)."""
    from tqdm import tqdm

    records: list[dict] = []
    remote = ray.remote(num_cpus=threads or 1, num_gpus=gpus_per_worker,
                        max_restarts=1)(SegmentWorker)  # fmt: skip
    pool = [remote.remote(str(Path(bundle).resolve()), backend, precision, threads)
            for _ in range(min(workers, len(pending)))]  # fmt: skip
    # Videos per minute counts from here: Ray's start and the predictors' loading are
    # reported apart (startup_s), as they do not grow with the number of videos.
    try:
        log.info("workers ready: %s", ray.get([actor.ready.remote() for actor in pool]))
    except ray.exceptions.RayError as error:  # a predictor that cannot load anywhere
        for actor in pool:
            ray.kill(actor)
        raise BatchError(f"a worker could not load the predictor ({backend}, "
                         f"{precision}): {error}") from None  # fmt: skip
    started = time.perf_counter()
    queue = list(reversed(pending))
    running = {}
    for actor in pool:
        job = queue.pop()
        running[actor.run.remote(job, str(out.resolve()))] = (job, actor)
    with tqdm(total=total, initial=total - len(pending), unit="video", disable=not progress) as bar:
        while running:
            [ref], _ = ray.wait(list(running), num_returns=1)
            job, actor = running.pop(ref)
            try:
                record = ray.get(ref)
            except ray.exceptions.RayError as error:  # the worker itself died or failed
                record = {"video": job.name, "status": "failed",
                          "error": f"{type(error).__name__}: {error}"}  # fmt: skip
            records.append(record)
            bar.update(1)
            if queue:
                job = queue.pop()
                running[actor.run.remote(job, str(out.resolve()))] = (job, actor)
    for actor in pool:
        ray.kill(actor)
    return records, started


def run_batch(
    bundle: str | Path, videos: str | Path, expressions: str | Path, out: str | Path,
    address: str | None = None, workers: int = 2, backend: str = "auto",
    precision: str = "fp32", threads: int | None = 1, gpus_per_worker: float = 0,
    make_zip: bool = True, progress: bool = True,
) -> dict:  # fmt: skip
    """Segment every video not yet finished in ``out`` on Ray; returns the report.

    Raises (before Ray starts):
        BatchError: the videos, expressions or ``out`` cannot be used.
        BundleError: the bundle is missing or fails its checks.
    """
    import ray

    from .manifest import Manifest

    out = Path(out)
    if workers < 1:
        raise BatchError(f"--workers must be >= 1, got {workers}")
    jobs = plan_jobs(videos, expressions)
    check_out_dir(out)
    Manifest.load(bundle, verify=True)  # a bad bundle fails here, not once per worker
    out.mkdir(parents=True, exist_ok=True)
    pending = [job for job in jobs if not is_finished(out, job.name)]
    skipped = len(jobs) - len(pending)
    log.info("%d videos: %d finished earlier, %d to segment", len(jobs), skipped, len(pending))

    records: list[dict] = []
    began = started = time.perf_counter()
    own_ray = bool(pending) and not ray.is_initialized()
    if own_ray:  # else the caller's Ray (a test's cluster, a notebook) is used and kept
        ray.init(address=address, log_to_driver=False)
    try:
        if pending:
            records, started = _segment_on_ray(ray, pending, bundle, out, workers,
                                                        backend, precision, threads,
                                                        gpus_per_worker, len(jobs), progress)  # fmt: skip
    finally:
        if own_ray:
            ray.shutdown()
    elapsed = time.perf_counter() - started
    done = [r for r in records if r["status"] == "done"]
    failed = [{"video": r["video"], "error": r["error"]} for r in records if r["status"] != "done"]
    report = {
        "videos": len(jobs),
        "done": len(done),
        "skipped_finished": skipped,
        "failed": failed,
        "startup_s": round(started - began, 3),
        "elapsed_s": round(elapsed, 3),
        "videos_per_minute": round(60 * len(done) / elapsed, 2) if done else 0.0,
        "workers": min(workers, len(pending)) if pending else 0,
    }
    atomic_write_text(out / REPORT_NAME, json.dumps(report, indent=2) + "\n")
    if make_zip:
        report["zip"] = str(write_zip(out))
    return report


def add_arguments(parser) -> None:
    """``python -m runtime batch``'s options."""
    parser.add_argument("--bundle", required=True)
    parser.add_argument(
        "--videos",
        required=True,
        help="a directory of videos (frame folders or files) or a list file",
    )
    parser.add_argument("--expressions", required=True,
                        help="meta_expressions.json, or {video: [text, ...]}")  # fmt: skip
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--address", default=None,
                        help="a Ray cluster to join (auto, host:port, ray://...); default: "
                        "start a local one")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="Ray actors, one predictor each")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPUs per worker (onnxruntime/OpenVINO threads; Ray's num_cpus)",
    )
    parser.add_argument("--gpus-per-worker", type=float, default=0,
                        help="1 on GPU nodes: one predictor per GPU")  # fmt: skip
    parser.add_argument("--backend", default="auto",
                        choices=("auto", "onnxruntime", "tensorrt", "openvino"))  # fmt: skip
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--no-zip", action="store_true", help=f"do not write {ZIP_NAME}")
    parser.add_argument("--no-progress", action="store_true")


def main(args) -> int:
    """Run the batch; prints the report as JSON. Exit code 1 when a video failed."""
    report = run_batch(
        args.bundle, args.videos, args.expressions, args.out, address=args.address,
        workers=args.workers, backend=args.backend, precision=args.precision,
        threads=args.threads, gpus_per_worker=args.gpus_per_worker, make_zip=not args.no_zip,
        progress=not args.no_progress,
    )  # fmt: skip
    print(json.dumps(report, indent=2))
    return 1 if report["failed"] else 0
