"""``python -m runtime serve``: the predictor behind LitServe, over HTTP.

    python -m runtime serve --bundle bundles/tiny --host 127.0.0.1 --port 8000 \\
        --workers 1 --max-batch-size 4 --max-frames 256 --max-expressions 16

Endpoints:

- ``POST /predict``: ``{"frames": {"shape": [T, H, W, 3], "dtype": "uint8", "data": base64},
  "expressions": [text, ...]}`` (``runtime.serving.make_request``) -> ``{"masks": {"shape":
  [E, T, H, W], "encoding": "packbits", "data": base64}, "scores": [...], "queries": [...],
  "timings_ms": {...}}`` (``runtime.serving.decode_masks`` reads the masks back). Requests
  outside the limits get 413 (frames, pixels, expressions, bytes) or 422/400 (wrong dtype or
  shape, empty or non-UTF-8 text, not JSON) with ``{"error": ...}`` naming the limit or field
  and the value received, before they are queued.
- ``GET /live``: 200 while the server runs. ``GET /ready``: 200 once every inference worker
  has loaded its predictor, 503 before that and while draining. (``/health`` is LitServe's:
  ready, without the draining state.)

SIGTERM drains: ``/ready`` turns 503, new requests get 503, the requests in flight finish
(up to ``--grace`` seconds), then LitServe stops its processes. With ``--max-batch-size`` > 1,
requests arriving within ``--batch-timeout`` seconds of each other share one text-encoder call.

Why LitServe (docs/serving.md): PyTriton 0.7.0 pins numpy < 2, which this project's
environment cannot take; LitServe installs beside numpy 2, is a maintained inference server
(FastAPI/uvicorn, worker processes, request batching, health endpoint) and is light enough
to start in a test.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from .serving import Limits

log = logging.getLogger(__name__)


class ServerState:
    """Shared by the main process and the forked HTTP server processes (``Gate``)."""

    def __init__(self) -> None:
        context = mp.get_context("fork")
        self.draining = context.Value("b", 0)
        self.in_flight = context.Value("i", 0)


def drain_then_stop(state: ServerState, stop, grace: float) -> None:
    """Refuse new requests, wait for those in flight (at most ``grace`` s), then ``stop()``."""
    state.draining.value = 1
    time.sleep(0.2)  # a request past the gate's draining check counts itself within this
    deadline = time.monotonic() + grace
    while state.in_flight.value > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if state.in_flight.value > 0:
        log.warning("stopping with %d request(s) still in flight after %.0f s",
                    state.in_flight.value, grace)  # fmt: skip
    else:
        log.info("drained: no request in flight; stopping")
    stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m runtime serve``'s options."""
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--host", default="127.0.0.1", choices=("127.0.0.1", "0.0.0.0", "::"),
                        help="interface (LitServe accepts these three)")  # fmt: skip
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1,
                        help="inference worker processes, one predictor each")  # fmt: skip
    parser.add_argument("--backend", default="auto",
                        choices=("auto", "onnxruntime", "tensorrt", "openvino"))  # fmt: skip
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=None, help="threads per predictor")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=4,
        help="requests batched into one text-encoder call (1: no batching)",
    )
    parser.add_argument("--batch-timeout", type=float, default=0.01,
                        help="seconds to wait for a batch to fill")  # fmt: skip
    parser.add_argument(
        "--timeout",
        type=float,
        default=120,
        help="seconds a request may wait in the queue (then 504)",
    )
    parser.add_argument("--grace", type=float, default=30,
                        help="seconds SIGTERM waits for requests in flight")  # fmt: skip
    for field, value in asdict(Limits()).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=value,
                            help=f"request limit (default {value})")  # fmt: skip


def main(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or Ctrl-C."""
    from .manifest import Manifest

    limits = Limits(**{field: getattr(args, field) for field in asdict(Limits())})
    if args.max_batch_size < 1 or args.workers < 1:
        raise ValueError(f"--max-batch-size and --workers must be >= 1, got "
                         f"{args.max_batch_size} and {args.workers}")  # fmt: skip
    Manifest.load(args.bundle, verify=True)  # a bad bundle fails here, not in each worker
    import litserve as ls

    from .server_api import Gate, ProxyFormerAPI

    options = {"backend": args.backend, "precision": args.precision}
    if args.threads:
        options["threads"] = args.threads
    state = ServerState()
    api = ProxyFormerAPI(str(Path(args.bundle).resolve()), options, limits,
                         args.max_batch_size, args.batch_timeout)  # fmt: skip
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers,
                          timeout=args.timeout,
                          middlewares=[(Gate, {"state": state, "limits": limits})])  # fmt: skip

    main_pid = os.getpid()

    def on_sigterm(signum, frame):
        # LitServe's own stop (its shutdown event) comes after the drain; it runs in a thread
        # because the main thread is the one waiting on that event. The forked HTTP server
        # processes inherit this handler; LitServe stops them with SIGTERM, which is theirs.
        if os.getpid() != main_pid:
            return
        log.info("SIGTERM: draining")
        # LitServe's shutdown event is private API (pinned in pyproject's serve extra).
        threading.Thread(target=drain_then_stop, daemon=True,
                         args=(state, server._shutdown_event.set, args.grace)).start()  # fmt: skip

    signal.signal(signal.SIGTERM, on_sigterm)
    server.run(host=args.host, port=args.port, num_api_servers=1, generate_client_file=False,
               log_level="warning")  # fmt: skip
    return 0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS's choice)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(bundle: str | Path, options: list[str], port: int | None = None,
           env: dict | None = None, timeout: float = 180) -> tuple[subprocess.Popen, str]:  # fmt: skip
    """Start ``python -m runtime serve`` in a subprocess on 127.0.0.1:``port`` (default: a
    free one) and wait until ``/ready`` answers 200 (for tests, benchmarks and scripts).
    Returns (process, base URL); its stdout and stderr are piped (``stop`` returns them).

    Raises:
        RuntimeError: the server exited, or was not ready within ``timeout`` s (then stopped).
    """
    import urllib.error
    import urllib.request

    port = free_port() if port is None else port
    command = [sys.executable, "-m", "runtime", "serve", "--bundle", str(bundle),
               "--port", str(port), *options]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{stop(process)}")
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=2) as response:
                if response.status == 200:
                    return process, url
        except (urllib.error.URLError, OSError):
            pass  # not listening yet, or 503 while the workers load
        time.sleep(0.25)
    raise RuntimeError(f"the server was not ready after {timeout:.0f} s:\n{stop(process)}")


def stop(process: subprocess.Popen, timeout: float = 60) -> str:
    """SIGTERM (a drain, see the module's docstring), then SIGKILL after ``timeout`` s;
    returns what the server printed."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.stdout.read().decode(errors="replace") if process.stdout else ""
