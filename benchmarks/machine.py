"""The machine a benchmark runs on: CPU model, cores, the ISA flags that set GEMM peaks, the GPU,
the load average and the versions of the packages that decide the timings."""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

from runtime.manifest import installed_versions

BUSY_LOAD = 0.5  # 1-minute load average above which a report warns of other work
CPU_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8",
)  # fmt: skip
# The packages whose versions go into a latency report (absent ones are left out).
TIMED_PACKAGES = ("proxyformer", "torch", "onnxruntime", "onnxruntime-gpu", "onnx", "numpy",
                  "tokenizers", "tensorrt", "cuda-python", "matplotlib")  # fmt: skip


def cpu_count() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpuinfo() -> dict[str, str]:
    """The first value of each key of ``/proc/cpuinfo`` (empty where there is none)."""
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if ":" in line:
            key, value = (part.strip() for part in line.split(":", 1))
            info.setdefault(key, value)
    return info


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "cpu"


# What oneDNN may dispatch under each ``ONEDNN_MAX_CPU_ISA`` cap (its documented values), as
# the flags of CPU_FLAGS it leaves usable. An AVX-512 cap leaves out the VEX-encoded AVX-VNNI.
_AVX512 = ("avx2", "fma", "avx512f")
ISA_CAPS = {
    "SSE41": (),
    "AVX": (),
    "AVX2": ("avx2", "fma"),
    "AVX2_VNNI": ("avx2", "fma", "avx_vnni"),
    "AVX512_CORE": _AVX512,
    "AVX512_CORE_VNNI": (*_AVX512, "avx512_vnni"),
    "AVX512_CORE_BF16": (*_AVX512, "avx512_vnni", "avx512_bf16"),
    "AVX512_CORE_FP16": (*_AVX512, "avx512_vnni", "avx512_bf16", "avx512_fp16"),
}
ISA_CAP_VARIABLE = "ONEDNN_MAX_CPU_ISA"


def isa_cap() -> str | None:
    """The ``ONEDNN_MAX_CPU_ISA`` cap this process runs under, None without one (or "ALL").

    It emulates an older CPU on this one (a Cascade Lake: ``AVX512_CORE_VNNI``). Only oneDNN
    reads it: PyTorch's CPU kernels and OpenVINO's oneDNN primitives obey it; onnxruntime's
    MLAS and OpenVINO's own JIT kernels dispatch on the real CPU.
    """
    cap = os.environ.get(ISA_CAP_VARIABLE, "").strip().upper()
    if not cap or cap == "ALL" or "AMX" in cap:
        return None
    if cap not in ISA_CAPS:
        raise ValueError(f"{ISA_CAP_VARIABLE}={cap!r} is not one of {sorted(ISA_CAPS)} or ALL")
    return cap


def cpu_flags() -> dict[str, bool]:
    """Which of the SIMD/matrix extensions that matter for GEMM peaks this CPU reports, less
    those above an ``ONEDNN_MAX_CPU_ISA`` cap (:func:`isa_cap`).

    The same flags ``lscpu`` prints (it reads ``/proc/cpuinfo``): AVX-512 VNNI or AMX-INT8 for
    INT8 dot products, AVX512-BF16 or AMX-BF16 for BF16.
    """
    flags = set(_cpuinfo().get("flags", "").split())
    cap = isa_cap()
    if cap is not None:
        flags &= set(ISA_CAPS[cap])
    return {flag: flag in flags for flag in CPU_FLAGS}


def _slug(text: str) -> str:
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9.]+", "-", text.lower())).strip("-")


def machine_slug(cpu: str, cores: int, gpu: str | None = None) -> str:
    """A directory name for this machine: ``cpu-xeon-2.50ghz-2c`` or ``gpu-h100-80gb-hbm3``.

    Args:
        cpu: the CPU model name.
        cores: CPU cores available.
        gpu: the GPU name when the benchmark ran on CUDA.
    """
    if gpu:
        words = [w for w in _slug(gpu).split("-") if w not in ("nvidia", "geforce")]
        return "gpu-" + "-".join(words)
    text = re.sub(r"\((r|tm)\)", " ", cpu.lower())
    text = re.sub(r"\b\d+-core\b", " ", text)
    drop = {"intel", "amd", "processor", "cpu", "@", "with"}
    words = [w for w in _slug(text).split("-") if w and w not in drop]
    return "-".join(["cpu", *words, f"{cores}c"])


def gpu_name(device: str) -> str | None:
    """The CUDA GPU's name when ``device`` is a CUDA device, else None."""
    import torch  # only here: the CPU-only callers need no torch for the rest of this module

    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.get_device_name(torch.device(device))


def machine_info(torch_device: str) -> dict:
    """CPU model, cores, relevant CPU flags and, on CUDA, the GPU; plus the directory slug."""
    cores = cpu_count()
    gpu = gpu_name(torch_device)
    info = {
        "cpu": cpu_model(),
        "cores": cores,
        "cpu_flags": cpu_flags(),
        "isa_cap": isa_cap(),
        "gpu": gpu,
        "torch_device": str(torch_device),
        "platform": platform.platform(),
    }
    info["slug"] = machine_slug(info["cpu"], cores, gpu)
    info["load_average_start"] = load_average()
    return info


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none): other work skews timings."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def is_busy(load: float | None) -> bool:
    """Whether a load average says other processes were sharing the CPU."""
    return load is not None and load >= BUSY_LOAD


# Free page reporting (virtio-balloon): the counter of memory a virtual machine's guest has
# handed back to its host. Absent on bare metal and most other machines.
PAGE_REPORTING = Path("/sys/module/page_reporting/parameters/reported_kib")


def settle_freed_memory(timeout_s: float = 120.0, quiet_kib: int = 64 << 10,
                        interval_s: float = 1.0) -> float:  # fmt: skip
    """Wait until the guest has finished handing the memory of earlier rows back to its host
    (``PAGE_REPORTING`` grows by less than ``quiet_kib`` in ``interval_s``), at most
    ``timeout_s``; the seconds waited (0 where the machine does not report pages).

    On the AMD EPYC virtual machine the benchmarks ran on, a budgeted run that started right
    after an unbudgeted one (16 GiB touched and freed) took 97-122 s where the same command
    alone took 55 s: its fresh pages competed with the host taking back the earlier ones."""
    import time

    def reported() -> int | None:
        try:
            return int(PAGE_REPORTING.read_text())
        except (OSError, ValueError):
            return None

    started = time.perf_counter()
    last = reported()
    if last is None:
        return 0.0
    while time.perf_counter() - started < timeout_s:
        time.sleep(interval_s)
        now = reported()
        if now is None or now - last < quiet_kib:
            break
        last = now
    return round(time.perf_counter() - started, 1)


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages that decide the timings."""
    return installed_versions(TIMED_PACKAGES)


def run_record(script: str, argv: list[str] | None, machine: dict | None = None) -> dict:
    """The head of every benchmark's results: the command that reproduces them (``script``
    and its arguments, ``sys.argv`` when ``argv`` is empty), when, the machine (default:
    :func:`machine_info` on the CPU) and the versions of the packages that decide them."""
    return {
        "command": shlex.join(["python", script, *(argv or sys.argv[1:])]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine if machine is not None else machine_info("cpu"),
        "versions": package_versions(),
    }


def cpu_line(machine: dict) -> str:
    """"CPU <model> (<cores> cores; <ISA flags>)" of ``machine_info``, for a report's header."""
    flags = ", ".join(f for f, on in machine["cpu_flags"].items() if on and f != "fma") or "none"
    cap = machine.get("isa_cap")
    capped = f"; capped by {ISA_CAP_VARIABLE}={cap}, which MLAS ignores" if cap else ""
    return f"CPU {machine['cpu']} ({machine['cores']} cores; {flags}{capped})"
