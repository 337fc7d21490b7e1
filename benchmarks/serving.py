"""Serving and batch throughput on a bundle: the HTTP server against the in-process predictor,
and the Ray batch with 1 and 2 workers.

    python export/to_onnx.py --checkpoint checkpoints/tiny-synthetic --out bundles/tiny-64x96 \\
        --size 64x96 --frames 1:3:6 --expressions 1:1:4 --max-text-len 12 --precision fp32
    python -m training.data.synthetic --out data/synth-64x96 --videos 80 --frames 5 \\
        --size 64x96 --seed 3
    python benchmarks/serving.py --bundle bundles/tiny-64x96 --data data/synth-64x96

Requests are the synthetic ``train`` videos with their first two expressions, sent in turn.

- in-process: one ``RVOSPredictor`` (onnxruntime), requests one after another;
- served: ``python -m runtime serve`` (onnxruntime, ``--workers`` inference processes of
  ``--threads`` threads each) and 1, 4 and 16 concurrent clients (httpx, one connection each),
  each sending requests until ``--requests`` are answered; latency is the client's (JSON
  encoding, HTTP, queueing, the model, the masks' decoding);
- batch: ``python -m runtime batch``'s ``run_batch`` on a local Ray cluster with 1 and 2
  workers over the same videos; videos per minute exclude Ray's start (reported apart).

Writes ``benchmarks/results/<machine>/serving-<tag>.{json,md}`` with the CPU model and its
AVX-512/AMX flags, and prints the markdown. Throughput figures, not limits: nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks.machine import cpu_count, cpu_flags, cpu_model, load_average, machine_slug
from benchmarks.report import RESULTS_DIR, fmt
from benchmarks.timing import summarize_times
from runtime.files import atomic_write_text
from runtime.manifest import installed_versions

ROOT = Path(__file__).resolve().parents[1]
SHOWN_FLAGS = ("avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", required=True, help="a synthetic set (train split is used)")
    parser.add_argument("--requests", type=int, default=48, help="requests per measurement")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--workers", type=int, default=2, help="server inference processes")
    parser.add_argument("--threads", type=int, default=1, help="threads per predictor")
    parser.add_argument("--max-batch-size", type=int, default=4)
    parser.add_argument("--batch-workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tag", default="tiny-64x96")
    parser.add_argument("--out-dir", default=None, help="default benchmarks/results/<machine>")
    return parser.parse_args(argv)


def workload(data: Path) -> list[tuple[np.ndarray, list[str]]]:
    from runtime.video import read_video

    meta = json.loads((data / "meta_expressions/train/meta_expressions.json").read_text())
    cases = []
    for name, video in sorted(meta["videos"].items()):
        frames, _ = read_video(data / "train/JPEGImages" / name)
        cases.append((frames, [e["exp"] for e in video["expressions"].values()][:2]))
    return cases


def in_process(bundle: str, cases, count: int, threads: int) -> dict:
    from runtime.predictor import RVOSPredictor

    predictor = RVOSPredictor(bundle, backend="onnxruntime", threads=threads)
    predictor.segment(*cases[0])  # warm-up
    seconds = []
    started = time.perf_counter()
    for index in range(count):
        tick = time.perf_counter()
        predictor.segment(*cases[index % len(cases)])
        seconds.append(time.perf_counter() - tick)
    wall = time.perf_counter() - started
    return {
        "clients": 1,
        "requests": count,
        "requests_per_s": count / wall,
        **{k: v for k, v in summarize_times(seconds).items() if k in ("p50", "p99", "mean")},
    }


def served(url: str, cases, count: int, clients: int) -> dict:
    import httpx

    from runtime.serving import decode_masks, make_request

    bodies = [json.dumps(make_request(*case)).encode() for case in cases]
    seconds, errors, lock = [], [], threading.Lock()
    issued = iter(range(count))

    def client() -> None:
        with httpx.Client(base_url=url, timeout=300,
                          headers={"content-type": "application/json"}) as session:  # fmt: skip
            while True:
                with lock:
                    index = next(issued, None)
                if index is None:
                    return
                tick = time.perf_counter()
                response = session.post("/predict", content=bodies[index % len(bodies)])
                if response.status_code == 200:
                    decode_masks(response.json()["masks"])
                    with lock:
                        seconds.append(time.perf_counter() - tick)
                else:
                    errors.append(response.status_code)

    with httpx.Client(base_url=url, timeout=300) as warm:
        warm.post("/predict", content=bodies[0], headers={"content-type": "application/json"})
    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": count,
        "errors": len(errors),
        "requests_per_s": len(seconds) / wall,
        **{k: v for k, v in summarize_times(seconds).items() if k in ("p50", "p99", "mean")},
    }


def batch(bundle: str, data: Path, workers: list[int], threads: int) -> list[dict]:
    import ray

    from runtime.batch import run_batch

    rows = []
    ray.init(num_cpus=cpu_count(), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # fmt: skip
    try:
        videos = data / "train/JPEGImages"
        expressions = data / "meta_expressions/train/meta_expressions.json"
        for count in workers:
            with tempfile.TemporaryDirectory() as out:
                report = run_batch(bundle, videos, expressions, out, workers=count,
                                   backend="onnxruntime", threads=threads, make_zip=False,
                                   progress=False)  # fmt: skip
            rows.append({k: report[k] for k in ("workers", "done", "startup_s", "elapsed_s",
                                                "videos_per_minute")} | {"failed": len(report["failed"])})  # fmt: skip
    finally:
        ray.shutdown()
    return rows


def markdown(results: dict) -> str:
    machine = results["machine"]
    flags = ", ".join(f"{f} {'yes' if machine['cpu_flags'].get(f) else 'no'}" for f in SHOWN_FLAGS)
    lines = [
        f"# Serving and batch throughput — {results['tag']}",
        "",
        (
            f"CPU {machine['cpu']} ({machine['cores']} cores; {flags}); 1-minute load average "
            f"{machine['load_average_start']} at the start, {results.get('load_average_end')} "
            f"at the end (other work shared the CPU above 0.5). Bundle {results['bundle']}, "
            f"onnxruntime fp32, {results['threads']} thread(s) per predictor. Command: "
            f"`{results['command']}`."
        ),
        "",
        (
            f"Requests: {results['cases']} synthetic videos of {results['frames']} frames "
            f"({results['size']}) with 2 expressions each, sent in turn."
        ),
        "",
        "| setting | clients | requests/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    row = results["in_process"]
    lines.append(f"| in-process predictor | 1 | {fmt(row['requests_per_s'])} | "
                 f"{fmt(row['p50'], 1)} | {fmt(row['p99'], 1)} |")  # fmt: skip
    for row in results["served"]:
        lines.append(
            f"| served ({results['server_workers']} workers, max batch "
            f"{results['max_batch_size']}) | {row['clients']} | {fmt(row['requests_per_s'])} | "
            f"{fmt(row['p50'], 1)} | {fmt(row['p99'], 1)} |"
        )
    lines += ["", "| Ray batch workers | videos | videos/min | startup s | segmenting s |",
              "|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row in results["batch"]:
        lines.append(f"| {row['workers']} | {row['done']} | {fmt(row['videos_per_minute'], 1)} | "
                     f"{fmt(row['startup_s'], 1)} | {fmt(row['elapsed_s'], 1)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from runtime.server import launch, stop

    data = Path(args.data)
    cases = workload(data)
    results = {
        "tag": args.tag,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/serving.py", *(argv or sys.argv[1:])]),
        "machine": {"cpu": cpu_model(), "cores": cpu_count(), "cpu_flags": cpu_flags(),
                    "load_average_start": load_average()},  # fmt: skip
        "versions": installed_versions(("onnxruntime", "numpy", "litserve", "ray", "httpx")),
        "bundle": str(args.bundle), "threads": args.threads, "cases": len(cases),
        "frames": int(cases[0][0].shape[0]), "size": "x".join(map(str, cases[0][0].shape[1:3])),
        "server_workers": args.workers, "max_batch_size": args.max_batch_size,
    }  # fmt: skip
    results["in_process"] = in_process(args.bundle, cases, args.requests, args.threads)
    options = ["--backend", "onnxruntime", "--threads", str(args.threads), "--workers",
               str(args.workers), "--max-batch-size", str(args.max_batch_size)]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process, url = launch(args.bundle, options, env=env)
    try:
        results["served"] = [served(url, cases, args.requests, n) for n in args.clients]
    finally:
        stop(process)
    results["batch"] = batch(args.bundle, data, args.batch_workers, args.threads)
    results["load_average_end"] = load_average()
    slug = machine_slug(results["machine"]["cpu"], results["machine"]["cores"])
    out_dir = Path(args.out_dir) if args.out_dir else RESULTS_DIR / slug
    text = markdown(results)
    atomic_write_text(out_dir / f"serving-{args.tag}.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out_dir / f"serving-{args.tag}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
