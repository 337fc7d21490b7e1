"""This machine's measured GEMM peaks: the ceiling a backend's achieved GFLOP/s is held against.

CPU: FP32 and BF16 ``torch.matmul`` (numpy FP32 as a cross-check) and INT8 ``MatMulInteger`` in
onnxruntime; with a GPU: FP32 (TF32 off), FP16, BF16 and INT8 on it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from benchmarks.machine import cpu_count, cpu_flags

log = logging.getLogger(__name__)

MakeCall = Callable[[int], Callable[[], Any]]  # n -> a call doing one n x n x n GEMM


def _no_sync() -> None:
    """CPU calls return when done: nothing to wait for."""


def _timed(call: Callable[[], Any], sync: Callable[[], None]) -> float:
    """Seconds of one call, the device synchronised before the clock is read."""
    start = time.perf_counter()
    call()
    sync()
    return time.perf_counter() - start


def _affordable_size(rate: float, size: int, probe: int, max_call_s: float) -> int:
    """``size``, or the largest multiple of 256 (at least ``probe``) whose call at ``rate``
    takes at most ``max_call_s``."""
    if 2 * size**3 / rate <= max_call_s:
        return size
    return max(probe, int((max_call_s * rate / 2) ** (1 / 3)) // 256 * 256)


def _best_rate(
    make_call: MakeCall,
    size: int,
    budget_s: float,
    repeats: int,
    max_call_s: float = 1.5,
    sync: Callable[[], None] = _no_sync,
) -> dict:
    """Best-of-N operations per second of an ``n x n x n`` GEMM.

    A call at 512 first estimates the rate; when a call at ``size`` would take longer than
    ``max_call_s`` (slow arithmetic, e.g. FP16 emulated on a CPU), a smaller multiple of 256
    is used instead, so the whole measurement stays within budget.
    """
    probe = min(512, size)
    call = make_call(probe)
    call()
    sync()
    rate = 2 * probe**3 / max(_timed(call, sync), 1e-9)
    n = _affordable_size(rate, size, probe, max_call_s)
    call = make_call(n) if n != probe else call
    call()  # warm-up at this size
    sync()
    best = math.inf
    started = time.perf_counter()
    for index in range(repeats):
        best = min(best, _timed(call, sync))
        if index >= 1 and time.perf_counter() - started > budget_s:
            break
    ops = 2 * n**3
    return {"gflops": ops / best / 1e9, "size": n, "best_ms": best * 1e3, "runs": index + 1}


def _torch_gemm(dtype: torch.dtype, device: str) -> MakeCall:
    def make(n: int) -> Callable[[], Any]:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
        return lambda: torch.matmul(a, b)

    return make


def _numpy_gemm(n: int) -> Callable[[], Any]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    return lambda: a @ b


def _ort_int8_gemm(threads: int) -> MakeCall:
    """``MatMulInteger`` (uint8 A x int8 B -> int32) in onnxruntime CPU: the u8s8 kernels that
    the int8-cpu Q/DQ graphs run (VNNI / AMX where the CPU has them). B is a constant, like
    weights, so onnxruntime may pre-pack it."""

    def make(n: int) -> Callable[[], Any]:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(0)
        weight = rng.integers(-128, 128, (n, n), dtype=np.int8)
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])],
            "int8_gemm",
            [helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n])],
            [helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])],
            [numpy_helper.from_array(weight, "B")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8  # readable by every onnxruntime the project supports
        onnx.checker.check_model(model)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        feeds = {"A": rng.integers(0, 256, (n, n), dtype=np.uint8)}
        return lambda: session.run(None, feeds)

    return make


def _cpu_measurements(threads: int) -> dict[str, tuple[MakeCall, str]]:
    """The CPU peaks: key -> (call maker, how it is measured)."""
    return {
        "fp32": (_torch_gemm(torch.float32, "cpu"), f"torch.matmul float32, {threads} threads"),
        "fp32_numpy": (_numpy_gemm, "numpy float32 (its BLAS's own threads), cross-check"),
        "bf16": (_torch_gemm(torch.bfloat16, "cpu"), f"torch.matmul bfloat16, {threads} threads"),
        "int8": (
            _ort_int8_gemm(threads),
            f"onnxruntime MatMulInteger uint8 x int8 -> int32, {threads} threads",
        ),
    }


def _cpu_peaks(threads: int, size: int, repeats: int, budget_s: float) -> dict[str, dict]:
    cpu: dict[str, dict] = {}
    for key, (make, method) in _cpu_measurements(threads).items():
        try:
            cpu[key] = {**_best_rate(make, size, budget_s, repeats), "method": method}
        except Exception as error:  # noqa: BLE001 - a missing kernel must not sink the run
            log.warning("GEMM peak %s failed: %s", key, error)
            cpu[key] = {"gflops": None, "method": method, "error": str(error)}
        gflops = cpu[key].get("gflops")
        log.info("GEMM peak cpu %s: %s GFLOP/s", key, "–" if gflops is None else f"{gflops:.1f}")
    return cpu


def gemm_peaks(
    threads: int | None = None,
    size: int = 2048,
    repeats: int = 5,
    budget_s: float = 2.5,
    cuda: bool = False,
) -> dict:
    """This machine's measured GEMM peaks: the ceiling the benchmark's GFLOP/s are held against.

    CPU: FP32 ``torch.matmul`` (and numpy as a cross-check), BF16 ``torch.matmul`` and INT8
    ``MatMulInteger`` in onnxruntime, each ``size``^3 (smaller where a call would be slow),
    best of ``repeats``. With ``cuda``: FP32 (TF32 off), FP16, BF16 and INT8 (``torch._int_mm``)
    on the GPU at 4 x ``size``. Rates are GFLOP/s (GOP/s for INT8, 2 ops per multiply-add).

    Args:
        threads: torch and onnxruntime threads (numpy keeps its BLAS's own setting).
        size: the GEMM's n on the CPU.
        repeats: timed calls per measurement (after a warm-up).
        budget_s: stop repeating a measurement after this long.
        cuda: measure the GPU too.

    Returns:
        ``{"cpu": {"fp32", "fp32_numpy", "bf16", "int8"}, "cuda": {...}, "cpu_flags", ...}``,
        each measurement ``{"gflops", "size", "best_ms", "runs", "method"}``.
    """
    threads = threads or cpu_count()
    torch.set_num_threads(threads)
    started = time.perf_counter()
    cpu = _cpu_peaks(threads, size, repeats, budget_s)
    peaks: dict[str, Any] = {"cpu": cpu, "cpu_flags": cpu_flags(), "threads": threads}
    if cuda and torch.cuda.is_available():
        peaks["cuda"] = _cuda_peaks(4 * size, repeats * 2, budget_s)
    peaks["seconds"] = time.perf_counter() - started
    return peaks


def _cuda_int8_gemm(n: int) -> Callable[[], Any]:
    a = torch.randint(-128, 128, (n, n), dtype=torch.int8, device="cuda")
    b = torch.randint(-128, 128, (n, n), dtype=torch.int8, device="cuda")
    return lambda: torch._int_mm(a, b)


def _cuda_peaks(size: int, repeats: int, budget_s: float) -> dict:
    sync = torch.cuda.synchronize
    results: dict[str, dict] = {}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the FP32 peak, not TF32
    try:
        for key, dtype in (("fp32", torch.float32), ("fp16", torch.float16),
                           ("bf16", torch.bfloat16)):  # fmt: skip
            make = _torch_gemm(dtype, "cuda")
            results[key] = {
                **_best_rate(make, size, budget_s, repeats, max_call_s=0.2, sync=sync),
                "method": f"torch.matmul {dtype} on cuda",
            }
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    if hasattr(torch, "_int_mm"):
        try:
            results["int8"] = {
                **_best_rate(_cuda_int8_gemm, size, budget_s, repeats, max_call_s=0.2, sync=sync),
                "method": "torch._int_mm int8 x int8 -> int32 on cuda",
            }
        except RuntimeError as error:
            results["int8"] = {"gflops": None, "error": str(error)}
    return results


def peak_for(peaks: dict, device: str, arithmetic: str) -> tuple[float | None, str]:
    """The measured peak a backend is held against, and which one it is.

    Arithmetic: "fp32", "fp16", "bf16" (BF16 execution: OpenVINO's bf16, torch's BF16 autocast)
    or "int8". FP16 graphs on a CPU are held against the BF16 GEMM peak too: CPUs without
    AVX512-FP16/AMX-FP16 have no FP16 GEMM, so BF16 is the fastest 16-bit arithmetic there.
    """
    if device == "cuda":
        entry = peaks.get("cuda", {}).get(arithmetic, {})
        return entry.get("gflops"), f"cuda {arithmetic}"
    key = {"fp32": "fp32", "fp16": "bf16", "bf16": "bf16", "int8": "int8"}[arithmetic]
    return peaks.get("cpu", {}).get(key, {}).get("gflops"), f"cpu {key}"
