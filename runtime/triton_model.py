"""model.py of the ``proxyformer`` Python-backend model in a Triton repository.

``export/to_triton.py`` copies this file to ``<repository>/proxyformer/1/model.py``. It runs
inside tritonserver's Python backend, whose interpreter must have the runtime installed
(``pip install "proxyformer[runtime]"``, no torch). Everything it does is
``runtime.triton_bls``: the graphs are called through BLS, the pre- and post-processing are
``runtime.predictor``'s. Not run on the development machines (no tritonserver there);
``tests/test_triton.py`` runs the same ``RequestHandler`` with onnxruntime in place of BLS.
"""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from runtime.serving import RequestError
from runtime.triton_bls import EXPRESSIONS, FRAMES, BLSBackend, build_handler


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        model_dir = Path(args["model_repository"]) / args["model_version"]

        def backends(manifest, graph, model_name):
            return BLSBackend(manifest, graph, model_name, pb_utils)

        self.handler = build_handler(model_dir, config, backends)
        self.outputs = [output["name"] for output in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                frames = pb_utils.get_input_tensor_by_name(request, FRAMES).as_numpy()
                texts = pb_utils.get_input_tensor_by_name(request, EXPRESSIONS).as_numpy()
                out = self.handler(frames, texts)
                tensors = [pb_utils.Tensor(name, out[name]) for name in self.outputs]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as error:  # noqa: BLE001 (one request fails alone, with why)
                invalid = isinstance(error, (RequestError, ValueError))
                responses.append(pb_utils.InferenceResponse(error=triton_error(error, invalid)))
        return responses


def triton_error(error: Exception, invalid: bool):
    """A TritonError naming the failure: INVALID_ARG for a bad request, INTERNAL otherwise
    (error codes exist in the Python backends of Triton 23.x and later; older ones take the
    message alone)."""
    message = str(error) if invalid else f"{type(error).__name__}: {error}"
    code = getattr(pb_utils.TritonError, "INVALID_ARG" if invalid else "INTERNAL", None)
    if code is None:
        return pb_utils.TritonError(message)
    return pb_utils.TritonError(message, code)
