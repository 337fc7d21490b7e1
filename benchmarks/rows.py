"""The benchmark rows: which runtime, which graph variant, which arithmetic each row names.

Apart from ``benchmarks.runners`` (which imports torch for its PyTorch rows) so that processes
that only run the ONNX runtimes, such as the memory points' children, need not import torch:
0.5 GB of RSS that the runtime's own process does not have.
"""

from __future__ import annotations

from dataclasses import dataclass

# torch-compile is asked for by name (--backends ...,torch-compile): inductor compiles every
# input shape of a run first, minutes on 2 cores, which the default run (make demo) should not
# pay.
DEFAULT_BACKENDS = (
    "torch", "torch-model", "torch-bf16", "ort", "ort-fp16", "ort-int8", "ov", "ov-bf16",
    "ov-int8", "trt-fp16", "trt-int8",
)  # fmt: skip


@dataclass(frozen=True)
class BackendSpec:
    """A benchmark row: which runtime, which graph variant, which arithmetic it mostly does."""

    runtime: str  # "torch", "onnxruntime", "openvino" or "tensorrt"
    precision: str  # the video graph's variant (runtime.backends.PRECISIONS) or "bf16"
    arithmetic: str  # "fp32", "fp16", "bf16" or "int8": the GEMM peak it is held against
    mode: str = ""  # torch rows: "eager", "compile" or "model" (the model's own forward)


BACKENDS = {
    "torch": BackendSpec("torch", "fp32", "fp32", "eager"),
    # BF16 autocast on a CPU; on CUDA FP16 autocast (held against the GPU's FP16 peak).
    "torch-bf16": BackendSpec("torch", "bf16", "bf16", "eager"),
    "torch-compile": BackendSpec("torch", "fp32", "fp32", "compile"),
    # The model's own forward as trained, model(frames, ids, mask), FP32 eager.
    "torch-model": BackendSpec("torch", "fp32", "fp32", "model"),
    "ort": BackendSpec("onnxruntime", "fp32", "fp32"),
    "ort-fp16": BackendSpec("onnxruntime", "fp16", "fp16"),
    "ort-int8": BackendSpec("onnxruntime", "int8-cpu", "int8"),
    "ort-int8-trt": BackendSpec("onnxruntime", "int8-tensorrt", "int8"),
    "ov": BackendSpec("openvino", "fp32", "fp32"),
    "ov-bf16": BackendSpec("openvino", "bf16", "bf16"),
    "ov-int8": BackendSpec("openvino", "int8-cpu", "int8"),
    "trt-fp32": BackendSpec("tensorrt", "fp32", "fp32"),
    "trt-fp16": BackendSpec("tensorrt", "fp16", "fp16"),
    "trt-int8": BackendSpec("tensorrt", "int8-tensorrt", "int8"),
}


