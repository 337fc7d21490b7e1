"""``python -m runtime serve``: a real LitServe server on a free localhost port, started as a
subprocess with the tiny bundle, and a real HTTP client (httpx). Masks from concurrent
requests equal the in-process predictor's; bad requests get a 4xx naming the limit or field;
a client that disconnects mid-request leaves the server healthy; SIGTERM lets the request in
flight finish."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("litserve")

from runtime.predictor import RVOSPredictor
from runtime.server import launch, stop
from runtime.serving import decode_masks, make_request
from runtime.video import read_video

ROOT = Path(__file__).resolve().parents[1]
LIMITS = ["--max-frames", "300", "--max-expressions", "4", "--max-request-bytes", "8000000"]


def start_server(bundle: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    options = ["--backend", "onnxruntime", "--threads", "1", *LIMITS, *extra]
    return launch(bundle, options, env=dict(os.environ, PYTHONPATH=str(ROOT)))


@pytest.fixture(scope="module")
def server(tiny_bundle):
    process, url = start_server(tiny_bundle, "--max-batch-size", "4", "--batch-timeout", "0.05")
    yield url
    stop(process)


@pytest.fixture(scope="module")
def requests_and_expected(tiny_bundle, make_synthetic):
    """Six (frames, expressions) requests from synthetic videos, with the in-process
    predictor's answers."""
    data = make_synthetic()
    meta = json.loads((data / "meta_expressions/train/meta_expressions.json").read_text())
    predictor = RVOSPredictor(tiny_bundle, backend="onnxruntime")
    cases = []
    for index, name in enumerate(sorted(meta["videos"])[:6]):
        frames, _ = read_video(data / "train/JPEGImages" / name)
        texts = [e["exp"] for e in meta["videos"][name]["expressions"].values()][: 1 + index % 3]
        cases.append((frames, texts, predictor.segment(frames, texts)))
    return cases


def test_concurrent_requests_equal_the_in_process_predictor(server, requests_and_expected):
    with httpx.Client(base_url=server, timeout=120) as client:

        def send(case):
            frames, texts, _ = case
            return client.post("/predict", json=make_request(frames, texts))

        with ThreadPoolExecutor(len(requests_and_expected)) as pool:
            responses = list(pool.map(send, requests_and_expected))
    for response, (frames, texts, expected) in zip(responses, requests_and_expected):
        assert response.status_code == 200, response.text
        body = response.json()
        masks = decode_masks(body["masks"])
        assert masks.shape == (len(texts), *frames.shape[:3])
        np.testing.assert_array_equal(masks, expected.masks)
        np.testing.assert_allclose(body["scores"], expected.scores, rtol=1e-5)
        assert body["queries"] == expected.queries.tolist()
    assert any(r.json()["masks"]["data"] != "" for r in responses)
    # Concurrent requests shared text-encoder calls (LitServe's batching).
    assert max(r.json()["batched_requests"] for r in responses) > 1


def test_bad_requests_are_refused_with_what_was_wrong(server, requests_and_expected):
    frames, texts, _ = requests_and_expected[0]
    many = np.concatenate([frames] * 61)  # 305 frames
    cases = [
        (make_request(frames, ["the circle", "   "]), 422, "expression 1 is empty"),
        (make_request(frames.astype(np.float32), texts), 422,
         "frames dtype must be uint8, got 'float32'"),
        (make_request(many, texts), 413, "305 frames exceed max_frames (300)"),
        (make_request(frames, ["a"] * 5), 413, "5 expressions exceed max_expressions (4)"),
        (make_request(frames[..., :2], texts), 422, "must have shape [T, H, W, 3]"),
        ({"frames": make_request(frames, texts)["frames"]}, 400, '"expressions"'),
        (dict(make_request(frames, texts), expressions="a circle"), 422,
         "expressions must be a list of strings, got str"),
    ]  # fmt: skip
    with httpx.Client(base_url=server, timeout=60) as client:
        for body, status, message in cases:
            response = client.post("/predict", json=body)
            assert response.status_code == status, response.text
            assert message in response.json()["error"]
        truncated = make_request(frames, texts)
        truncated["frames"]["data"] = truncated["frames"]["data"][:-8]
        response = client.post("/predict", json=truncated)
        assert response.status_code == 422 and "base64 characters" in response.json()["error"]
        response = client.post("/predict", content=b"{not json")
        assert response.status_code == 400 and "not valid JSON" in response.json()["error"]
        big = b"x" * 8_000_001
        response = client.post("/predict", content=big)
        assert response.status_code == 413
        assert "8000001 bytes exceeds max_request_bytes (8000000)" in response.json()["error"]
        assert client.get("/ready").status_code == 200


def test_client_disconnecting_mid_request(server, requests_and_expected):
    frames, texts, expected = requests_and_expected[1]
    body = json.dumps(make_request(frames, texts)).encode()
    host, port = server.removeprefix("http://").split(":")
    # 1. Gone while sending its body.
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[: len(body) // 2]
        )
    # 2. Gone while its request is being segmented (a long video, a short client timeout).
    long_video = make_request(np.concatenate([frames] * 40), texts)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server}/predict", json=long_video, timeout=httpx.Timeout(60, read=0.05))
    with httpx.Client(base_url=server, timeout=120) as client:
        assert client.get("/ready").status_code == 200
        response = client.post("/predict", json=make_request(frames, texts))
        assert response.status_code == 200
        np.testing.assert_array_equal(decode_masks(response.json()["masks"]), expected.masks)
        for _ in range(600):  # the abandoned request ends; nothing stays counted in flight
            if client.get("/live").json()["in_flight"] == 0:
                break
            time.sleep(0.1)
        assert client.get("/live").json()["in_flight"] == 0


@pytest.mark.slow
def test_sigterm_lets_the_request_in_flight_finish(tiny_bundle, requests_and_expected):
    frames, texts, _ = requests_and_expected[2]
    process, url = start_server(tiny_bundle, "--max-batch-size", "1")
    long_video = np.concatenate([frames] * 50)  # 250 frames: a request that takes a while
    answer = {}

    def send():
        answer["response"] = httpx.post(f"{url}/predict", json=make_request(long_video, texts),
                                        timeout=300)  # fmt: skip

    try:
        sender = threading.Thread(target=send)
        sender.start()
        while httpx.get(f"{url}/live").json()["in_flight"] == 0:
            assert sender.is_alive(), answer
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        ready = httpx.get(f"{url}/ready")
        late = httpx.post(f"{url}/predict", json=make_request(frames, texts))
        sender.join(300)
        assert process.wait(timeout=120) == 0
    finally:
        log = stop(process)
    assert ready.status_code == 503 and "draining" in ready.text
    assert late.status_code == 503 and "shutting down" in late.json()["error"]
    response = answer["response"]
    assert response.status_code == 200, log
    expected = RVOSPredictor(tiny_bundle, backend="onnxruntime").segment(long_video, texts)
    np.testing.assert_array_equal(decode_masks(response.json()["masks"]), expected.masks)
    assert "drained: no request in flight" in log


def test_cli_refuses_bad_arguments_before_serving(tmp_path, capsys):
    from runtime.__main__ import main

    assert main(["serve", "--bundle", str(tmp_path / "missing")]) == 2
    assert f"bundle directory {tmp_path / 'missing'} does not exist" in capsys.readouterr().err
    assert main(["serve", "--bundle", str(tmp_path), "--max-frames", "0"]) == 2
    assert "limit max_frames must be a whole number >= 1, got 0" in capsys.readouterr().err
