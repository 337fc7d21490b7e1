"""What a served request is, whatever serves it: its limits, its checks, its wire format.

One home for the rules the HTTP server (``runtime.server``, ``python -m runtime serve``) and
Triton's Python model (``runtime.triton_bls``) share:

- ``Limits``: the most frames, pixels per frame, expressions and request bytes a request may
  carry; ``check_frames`` / ``check_request_expressions`` refuse a request outside them with a
  ``RequestError`` that names the limit, the field and the value received, before any graph
  runs. Empty or non-UTF-8 expressions are refused by the runtime's own
  ``predictor.check_expressions``.
- the HTTP wire format: JSON with the frames as base64 of their raw bytes (``encode_array``,
  ``decode_frames``) and the masks bit-packed (``encode_masks``, ``decode_masks``), so a
  request is about 4/3 of the raw frames and a response 1/8 of a byte per mask pixel;
- ``segment_batch``: several requests' expressions through the text encoder in one call (the
  expressions of concurrent requests batched), then each request's video on its own (a video
  graph call takes one video).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import asdict, dataclass

import numpy as np

from .expressions import check_expressions
from .predictor import RVOSPredictor, Segmentation, TextEmbedding

FRAME_DTYPE = "uint8"


class RequestError(ValueError):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Per-request limits (``python -m runtime serve --max-*``). Frames beyond the bundle's
    frame profile are allowed (the predictor runs them in windows); these bound the work and
    memory one request can ask for."""

    max_frames: int = 256
    max_pixels: int = 1920 * 1080  # per frame, H * W
    max_expressions: int = 16
    max_request_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"limit {name} must be a whole number >= 1, got {value!r}")

    def check_bytes(self, received: int) -> None:
        if received > self.max_request_bytes:
            raise RequestError(
                f"request body of {received} bytes exceeds max_request_bytes "
                f"({self.max_request_bytes})",
                status=413,
            )


def check_frames(frames: np.ndarray, limits: Limits) -> np.ndarray:
    """``frames`` if it is a uint8 ``[T, H, W, 3]`` array within ``limits``.

    Raises:
        RequestError: naming the field, what was expected and what was received.
    """
    if not isinstance(frames, np.ndarray):
        raise RequestError(f"frames must be an array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise RequestError(f"frames dtype must be {FRAME_DTYPE}, got {frames.dtype}")
    check_frame_shape(frames.shape, limits)
    return frames


def check_frame_shape(shape, limits: Limits) -> tuple[int, int, int, int]:
    """The frames' shape checked against ``limits`` before their bytes are decoded."""
    shape = tuple(shape)
    if len(shape) != 4 or shape[3] != 3 or not all(isinstance(d, int) for d in shape):
        raise RequestError(f"frames must have shape [T, H, W, 3] (RGB), got {list(shape)}")
    frames, height, width, _ = shape
    if min(frames, height, width) < 1:
        raise RequestError(f"frames must not be empty, got shape {list(shape)}")
    if frames > limits.max_frames:
        raise RequestError(
            f"frames: {frames} frames exceed max_frames ({limits.max_frames})", status=413
        )
    if height * width > limits.max_pixels:
        raise RequestError(
            f"frames: {height}x{width} = {height * width} pixels per frame exceed max_pixels "
            f"({limits.max_pixels})",
            status=413,
        )
    return frames, height, width, 3


def check_request_expressions(expressions, limits: Limits) -> list[str]:
    """The expressions as a list of non-empty strings, at most ``max_expressions``."""
    if isinstance(expressions, str) or not isinstance(expressions, (list, tuple)):
        raise RequestError(
            f"expressions must be a list of strings, got {type(expressions).__name__}"
        )
    if len(expressions) > limits.max_expressions:
        raise RequestError(
            f"expressions: {len(expressions)} expressions exceed max_expressions "
            f"({limits.max_expressions})",
            status=413,
        )
    try:
        return check_expressions(list(expressions))
    except (TypeError, ValueError) as error:
        raise RequestError(f"expressions: {error}") from None


# -- the HTTP wire format ------------------------------------------------------------------


def encode_array(array: np.ndarray) -> dict:
    """An array as JSON: shape, dtype and the base64 of its C-order bytes."""
    array = np.ascontiguousarray(array)
    return {
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "data": base64.b64encode(array.tobytes()).decode("ascii"),
    }


def check_frames_payload(payload, limits: Limits) -> tuple[int, int, int, int]:
    """``encode_array``'s JSON of the frames checked without decoding it: fields, dtype, shape
    within ``limits`` and a base64 length that matches the shape. Returns the shape."""
    if not isinstance(payload, dict) or not {"shape", "dtype", "data"} <= payload.keys():
        raise RequestError('frames must be {"shape": [T, H, W, 3], "dtype": "uint8", '
                           '"data": <base64 of the raw bytes>}')  # fmt: skip
    if payload["dtype"] != FRAME_DTYPE:
        raise RequestError(f"frames dtype must be {FRAME_DTYPE}, got {payload['dtype']!r}")
    if not isinstance(payload["shape"], list):
        raise RequestError(f"frames shape must be a list, got {payload['shape']!r}")
    shape = check_frame_shape(payload["shape"], limits)
    if not isinstance(payload["data"], str):
        raise RequestError("frames data must be a base64 string")
    expected = int(np.prod(shape))
    characters = 4 * -(-expected // 3)  # base64 of n bytes, padded
    if len(payload["data"]) != characters:
        raise RequestError(
            f"frames data holds {len(payload['data'])} base64 characters, shape {list(shape)} "
            f"uint8 ({expected} bytes) needs {characters}"
        )
    return shape


def check_payload(payload, limits: Limits) -> None:
    """A whole JSON request (``{"frames": ..., "expressions": [...]}``) checked without
    decoding its frames: what the HTTP server refuses before a request is queued."""
    if not isinstance(payload, dict) or not {"frames", "expressions"} <= payload.keys():
        raise RequestError('request must be {"frames": {...}, "expressions": [...]}', 400)
    check_frames_payload(payload["frames"], limits)
    check_request_expressions(payload["expressions"], limits)


def decode_frames(payload, limits: Limits) -> np.ndarray:
    """``encode_array``'s JSON back to frames, checked against ``limits`` (shape and dtype
    before the bytes are decoded).

    Raises:
        RequestError: a missing field, a wrong dtype, a shape outside the limits, or data
            that is not base64 of the shape's bytes.
    """
    shape = check_frames_payload(payload, limits)
    try:
        raw = base64.b64decode(payload["data"], validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(f"frames data is not valid base64: {error}") from None
    if len(raw) != int(np.prod(shape)):
        raise RequestError(f"frames data decodes to {len(raw)} bytes, shape {list(shape)} "
                           f"uint8 needs {int(np.prod(shape))}")  # fmt: skip
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape)


def encode_masks(masks: np.ndarray) -> dict:
    """Boolean masks as JSON: shape and the base64 of ``np.packbits`` of their C-order bits."""
    masks = np.asarray(masks, dtype=bool)
    packed = np.packbits(masks.reshape(-1))
    return {"shape": list(masks.shape), "dtype": "bool", "encoding": "packbits",
            "data": base64.b64encode(packed.tobytes()).decode("ascii")}  # fmt: skip


def decode_masks(payload: dict) -> np.ndarray:
    """``encode_masks``' JSON back to a boolean array."""
    shape = tuple(payload["shape"])
    bits = np.frombuffer(base64.b64decode(payload["data"]), dtype=np.uint8)
    return np.unpackbits(bits, count=int(np.prod(shape))).astype(bool).reshape(shape)


def encode_result(result: Segmentation) -> dict:
    """A segmentation as the JSON response body."""
    return {
        "masks": encode_masks(result.masks),
        "scores": [float(s) for s in result.scores],
        "queries": result.queries.tolist(),
        "timings_ms": {k: round(v, 3) for k, v in result.timings_ms.items()},
    }


# -- batching ------------------------------------------------------------------------------


def split_embedding(text: TextEmbedding, counts: list[int]) -> list[TextEmbedding]:
    """One ``encode_text`` result over several requests' expressions, split back per request
    (``counts`` expressions each, in order)."""
    parts, start = [], 0
    for count in counts:
        part = slice(start, start + count)
        parts.append(TextEmbedding(text.expressions[part], text.features[part],
                                   text.mask[part], text.truncated[part]))  # fmt: skip
        start += count
    return parts


def segment_batch(
    predictor: RVOSPredictor, requests: list[tuple[np.ndarray, list[str]]]
) -> list[Segmentation]:
    """Segment several checked requests (frames, expressions): every request's expressions
    go through the text encoder together, in the fewest calls its expression profile allows;
    each video then runs on its own."""
    expressions = [text for _, texts in requests for text in texts]
    text = predictor.encode_text(expressions)
    parts = split_embedding(text, [len(texts) for _, texts in requests])
    return [predictor.segment(frames, part) for (frames, _), part in zip(requests, parts)]


def make_request(frames: np.ndarray, expressions: list[str]) -> dict:
    """The JSON body of a request to ``python -m runtime serve`` (POST /predict)."""
    return {"frames": encode_array(np.asarray(frames)), "expressions": list(expressions)}
