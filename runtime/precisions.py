"""The precision names of a bundle: one name per variant, in the manifest, the engines, the
calibration targets and every command line.

- ``fp32``, ``fp16``: the float graphs ``export/to_onnx.py`` writes;
- ``int8-tensorrt``: the symmetric Q/DQ graph TensorRT builds strongly typed (it also runs in
  onnxruntime, so its accuracy is measured on a CPU);
- ``int8-cpu``: the Q/DQ (or QOperator) graph with uint8 activations for onnxruntime's CPU
  kernels.

Besides these bundle variants there is one RUNTIME precision, a way of running a variant
rather than a file of the bundle:

- ``bf16``: the fp32 graph executed in BF16 (OpenVINO's ``INFERENCE_PRECISION_HINT``) on a
  CPU with AVX512-BF16 or AMX. Only the OpenVINO backend (``runtime.backends.openvino``) runs
  it; onnxruntime has no BF16 path for FP32 graphs on x86, and TensorRT builds from the fp16
  variant instead. It is never a manifest variant, an engine or a calibration target.

A TensorRT engine carries the name of the variant it is built from (``engines`` in the
manifest, ``engines/{graph}.{precision}.plan``). Earlier releases called the TensorRT INT8
engine ``int8`` and the calibration targets ``tensorrt`` and ``cpu``; those names are still
read (with a warning) and old manifests are renamed when loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)

FP32, FP16, INT8_TENSORRT, INT8_CPU = "fp32", "fp16", "int8-tensorrt", "int8-cpu"
PRECISIONS = (FP32, FP16, INT8_TENSORRT, INT8_CPU)
FLOAT_PRECISIONS = (FP32, FP16)  # written by export
INT8_PRECISIONS = (INT8_TENSORRT, INT8_CPU)  # written by calibration (its targets)
ENGINE_PRECISIONS = (FP32, FP16, INT8_TENSORRT)  # what TensorRT engines are built from
BF16 = "bf16"
RUNTIME_PRECISIONS = (BF16,)  # ways of running a variant (the fp32 one), not bundle files
# The variant each runtime precision runs.
RUNTIME_VARIANT = {BF16: FP32}
# Names of earlier releases: the INT8 engine ("int8") and the calibration targets.
OLD_NAMES = {"int8": INT8_TENSORRT, "tensorrt": INT8_TENSORRT, "cpu": INT8_CPU}


def precision_name(name: str, allowed: Iterable[str] = PRECISIONS, what: str = "precision") -> str:
    """``name`` as the precision name in ``allowed``: itself, or the current name of an old
    one (logged); ``ValueError`` naming the allowed names otherwise."""
    allowed = tuple(allowed)
    if name in allowed:
        return name
    new = OLD_NAMES.get(name)
    if new in allowed:
        log.warning("%s %r is now called %r", what, name, new)
        return new
    if name in RUNTIME_PRECISIONS:
        raise ValueError(
            f"{what} must be one of {list(allowed)}, got {name!r}: {name} is a runtime precision "
            f"(the {RUNTIME_VARIANT[name]} graph run in {name.upper()}) that only the OpenVINO "
            "backend runs (backend='openvino')"
        )
    raise ValueError(f"{what} must be one of {list(allowed)}, got {name!r}")


def cli_type(allowed: Iterable[str], what: str):
    """An argparse ``type`` that accepts ``allowed`` and the old names of its members."""
    import argparse

    allowed = tuple(allowed)

    def parse(text: str) -> str:
        try:
            return precision_name(text, allowed, what)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = what  # argparse names the type in its error message
    return parse
