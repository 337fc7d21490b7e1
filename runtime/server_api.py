"""The served predictor: LitServe's ``LitAPI`` for ProxyFormer and the gate in front of it.

Imported only by ``runtime.server`` when serving (it needs the ``serve`` extra); LitServe spawns
its inference workers, which unpickle ``ProxyFormerAPI`` by importing this module.

- ``ProxyFormerAPI``: one ``RVOSPredictor`` per inference worker. With ``max_batch_size`` > 1
  LitServe hands it the requests that arrived within ``batch_timeout`` together, and their
  expressions go through the text encoder in one call (``runtime.serving.segment_batch``);
  each video then runs on its own.
- ``Gate``: ASGI middleware in each HTTP server process, before LitServe: it refuses, with a
  4xx naming the limit and the value received, a body over ``max_request_bytes`` (from
  Content-Length before reading, else while reading), invalid JSON and any request outside
  the limits (``runtime.serving.check_payload``), so that a bad request never reaches a
  batch (LitServe fails a whole batch when one of its requests raises). It also counts
  requests in flight and, once the server is draining, answers 503 to new ones and to
  ``/ready``; ``/live`` answers 200 while the process runs, with the requests in flight.
"""

from __future__ import annotations

import json
import logging

import litserve as ls
from fastapi import HTTPException

from .predictor import RVOSPredictor
from .serving import (
    Limits,
    RequestError,
    check_payload,
    check_request_expressions,
    decode_frames,
    encode_result,
    segment_batch,
)

log = logging.getLogger(__name__)

PREDICT_PATH = "/predict"


class ProxyFormerAPI(ls.LitAPI):
    def __init__(self, bundle: str, options: dict, limits: Limits, max_batch_size: int = 1,
                 batch_timeout: float = 0.0) -> None:  # fmt: skip
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout,
                         api_path=PREDICT_PATH)  # fmt: skip
        self.bundle, self.options, self.limits = bundle, options, limits

    def setup(self, device) -> None:
        self.predictor = RVOSPredictor(self.bundle, **self.options)
        log.info("inference worker ready: %s", self.predictor.backend_name)

    def decode_request(self, request: dict):
        try:  # the gate checked this request already; these checks also decode the frames
            frames = decode_frames(request["frames"], self.limits)
            return frames, check_request_expressions(request["expressions"], self.limits)
        except RequestError as error:
            raise HTTPException(error.status, str(error)) from None

    def batch(self, inputs):
        return list(inputs)

    def unbatch(self, output):
        return output

    def predict(self, x):
        requests = x if self.max_batch_size > 1 else [x]
        results = [(result, len(requests)) for result in segment_batch(self.predictor, requests)]
        return results if self.max_batch_size > 1 else results[0]

    def encode_response(self, output) -> dict:
        result, batched = output
        # How many requests shared this one's text-encoder call: batching made visible.
        return dict(encode_result(result), batched_requests=batched)


async def _respond(send, status: int, body: dict | str) -> None:
    data = (json.dumps(body) if isinstance(body, dict) else body).encode()
    kind = b"application/json" if isinstance(body, dict) else b"text/plain"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", kind), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})  # fmt: skip


class Gate:
    """See the module's docstring. ``state``: ``runtime.server.ServerState`` (counters shared
    with the main process, which drains on SIGTERM)."""

    def __init__(self, app, state, limits: Limits) -> None:
        self.app, self.state, self.limits = app, state, limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path == "/live":
            return await _respond(
                send,
                200,
                {
                    "alive": True,
                    "in_flight": self.state.in_flight.value,
                    "draining": bool(self.state.draining.value),
                },
            )
        if path == "/ready":
            if self.state.draining.value:
                return await _respond(send, 503, "draining: shutting down")
            return await self.app(dict(scope, path="/health"), receive, send)
        if path != PREDICT_PATH:
            return await self.app(scope, receive, send)
        if self.state.draining.value:
            return await _respond(send, 503, {"error": "the server is shutting down"})
        try:
            headers = dict(scope["headers"])
            if b"content-length" in headers:
                length = headers[b"content-length"].decode("latin-1")
                if not length.isdigit():
                    raise RequestError(f"Content-Length {length!r} is not a byte count", 400)
                self.limits.check_bytes(int(length))
            body = await self._read(receive)
            if body is None:  # the client went away before sending its request
                log.info("client disconnected before its request was read")
                return None
            try:
                payload = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise RequestError(f"request body is not valid JSON: {error}", 400) from None
            check_payload(payload, self.limits)
        except RequestError as error:
            return await _respond(send, error.status, {"error": str(error)})
        with self.state.in_flight.get_lock():
            self.state.in_flight.value += 1
        try:
            return await self.app(scope, _replay(body, receive), send)
        finally:
            with self.state.in_flight.get_lock():
                self.state.in_flight.value -= 1

    async def _read(self, receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            self.limits.check_bytes(size)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive):
    """A ``receive`` that gives the already-read body once, then waits on the client (so a
    disconnect is still reported downstream)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
