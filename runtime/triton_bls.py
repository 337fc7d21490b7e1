"""The runtime inside Triton Inference Server's Python backend (the ``proxyformer`` model that
``export/to_triton.py`` writes).

The Python model's ``model.py`` (``runtime/triton_model.py``, copied into the repository) is a
thin shell around two pieces here, so that what it does is the runtime's own code:

- ``BLSBackend``: a backend (``runtime.backends.BaseBackend``: every call's feeds checked
  against the manifest's shapes and profiles) whose ``infer`` calls another model of the
  repository through Triton's business-logic scripting (BLS). ``RVOSPredictor`` takes two of
  them in place of the backends it would load, so tokenization, resizing, windows, query
  selection, upsampling and thresholding are ``runtime.predictor``'s.
- ``RequestHandler``: one request's tensors (FRAMES uint8 ``[T, H, W, 3]``, EXPRESSIONS
  BYTES ``[E]``) checked against the limits (``runtime.serving``), segmented, and returned as
  MASKS bool ``[E, T, H, W]``, SCORES float32 ``[E]`` and QUERIES int64 ``[E, windows]``.
  It takes any predictor, so the tests run it with the repository's ONNX graphs in
  onnxruntime where Triton would make BLS calls (no tritonserver on the test machines).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .backends.base import BaseBackend
from .manifest import Manifest
from .predictor import RVOSPredictor
from .serving import Limits, RequestError, check_frames, check_request_expressions

log = logging.getLogger(__name__)

# The Python model's tensors (config.pbtxt and the client use these names).
FRAMES, EXPRESSIONS = "FRAMES", "EXPRESSIONS"
MASKS, SCORES, QUERIES = "MASKS", "SCORES", "QUERIES"
# Where the Python model keeps the bundle's manifest and tokenizer, beside model.py.
BUNDLE_DIR = "bundle"
# config.pbtxt parameters the Python model reads (string values, as Triton stores them).
LIMIT_PARAMETERS = ("max_frames", "max_pixels", "max_expressions", "max_request_bytes")
GRAPH_PARAMETERS = {"text_encoder": "text_model", "video": "video_model"}


class BLSBackend(BaseBackend):
    """A graph of the bundle served by another model of the Triton repository, called
    through BLS. ``pb_utils`` is ``triton_python_backend_utils``, which exists only inside
    Triton's Python backend, so it is passed in rather than imported here."""

    def __init__(self, manifest: Manifest, graph: str, model_name: str, pb_utils) -> None:
        super().__init__(manifest, graph, "fp32")  # precision: the served model's business
        self.model_name = model_name
        self.name = f"triton-bls {model_name}"
        self._pb = pb_utils

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pb = self._pb
        inputs = [pb.Tensor(name, np.ascontiguousarray(feeds[name])) for name in self.input_names]
        request = pb.InferenceRequest(
            model_name=self.model_name,
            requested_output_names=list(self.output_names),
            inputs=inputs,
            # Outputs in CPU memory: post-processing is numpy (a GPU model's outputs would
            # otherwise come back as device tensors that as_numpy() refuses).
            preferred_memory=pb.PreferredMemory(pb.TRITONSERVER_MEMORY_CPU, 0),
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(
                f"BLS call to {self.model_name} ({self.graph}) failed: {response.error().message()}"
            )
        return {
            name: pb.get_output_tensor_by_name(response, name).as_numpy()
            for name in self.output_names
        }


def load_bundle_files(model_dir: str | Path) -> Manifest:
    """The manifest beside model.py, its tokenizer checked against its sha256.

    The graphs are other models of the repository, not files here, so the manifest is
    loaded without checking every file it lists; the tokenizer, which is here, is checked."""
    manifest = Manifest.load(Path(model_dir) / BUNDLE_DIR, verify=False)
    manifest.read_verified(manifest.preprocessing["tokenizer"])
    return manifest


def parameters_from_config(model_config: dict) -> dict[str, str]:
    """``parameters`` of a model config as Triton gives it to ``initialize`` (JSON)."""
    return {key: value["string_value"]
            for key, value in model_config.get("parameters", {}).items()}  # fmt: skip


def limits_from_parameters(parameters: dict[str, str]) -> Limits:
    """The request limits written into config.pbtxt (``export/to_triton.py``)."""
    missing = [key for key in LIMIT_PARAMETERS if key not in parameters]
    if missing:
        raise ValueError(f"config.pbtxt parameters lack {missing}; rewrite the repository "
                         "with python export/to_triton.py")  # fmt: skip
    return Limits(**{key: int(parameters[key]) for key in LIMIT_PARAMETERS})


def decode_expressions(values: np.ndarray) -> list[str]:
    """A BYTES tensor ``[E]`` (numpy object array of bytes) as strings.

    Raises:
        RequestError: the tensor is not one-dimensional, or an element is not UTF-8.
    """
    values = np.asarray(values)
    if values.ndim != 1:
        raise RequestError(f"{EXPRESSIONS} must be a BYTES tensor [E], got shape "
                           f"{list(values.shape)}")  # fmt: skip
    texts = []
    for index, value in enumerate(values.tolist()):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as error:
                raise RequestError(f"{EXPRESSIONS}[{index}] is not UTF-8: {error}") from None
        texts.append(value)
    return texts


class RequestHandler:
    """One request's tensors -> the response's tensors, with the checks before any graph."""

    def __init__(self, predictor: RVOSPredictor, limits: Limits) -> None:
        self.predictor, self.limits = predictor, limits

    def __call__(self, frames: np.ndarray, expressions: np.ndarray) -> dict[str, np.ndarray]:
        frames = check_frames(frames, self.limits)
        texts = check_request_expressions(decode_expressions(expressions), self.limits)
        result = self.predictor.segment(frames, texts)
        return {
            MASKS: result.masks,
            SCORES: result.scores.astype(np.float32),
            QUERIES: result.queries.astype(np.int64),
        }


def build_handler(model_dir: str | Path, model_config: dict, backends) -> RequestHandler:
    """The handler of the Python model in ``model_dir``: its manifest and tokenizer, the
    limits of its config, and ``backends(manifest, graph, model_name)`` for each graph."""
    manifest = load_bundle_files(model_dir)
    parameters = parameters_from_config(model_config)
    limits = limits_from_parameters(parameters)
    graphs = {graph: backends(manifest, graph, parameters[key])
              for graph, key in GRAPH_PARAMETERS.items()}  # fmt: skip
    predictor = RVOSPredictor(manifest, text_backend=graphs["text_encoder"],
                              video_backend=graphs["video"])  # fmt: skip
    log.info("proxyformer Python model ready: %s", json.dumps(parameters, sort_keys=True))
    return RequestHandler(predictor, limits)
