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
            except (RequestError, ValueError) as error:
                # One bad request fails alone; the others of this batch are answered.
                code = pb_utils.TritonError.INVALID_ARG
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(error), code)))  # fmt: skip
        return responses
