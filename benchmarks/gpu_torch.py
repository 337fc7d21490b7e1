"""The GPU check's PyTorch parts (benchmarks/gpu_check.py): the paper setting on CUDA in FP32,
FP16 and BF16 autocast, replayed as a CUDA graph (and ``torch.compile`` when asked for), timed
with CUDA events; and a training step with AMP.

The model is ``paper-swin-t`` with random weights (latency does not depend on the weights),
run through the export wrappers (``TextGraph`` then ``VideoGraph``, the callables that were
exported), inputs and outputs on the GPU: the figure is the model's, as the paper's 109 ms
(an NVIDIA A40) is. Needs torch with CUDA, torchvision (Video-Swin), transformers (RoBERTa),
einops and timm; nothing is downloaded.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from benchmarks.gpu_check import Skip, check_deadline
from benchmarks.timing import synchronize

log = logging.getLogger(__name__)

PRESET = "paper-swin-t"
FALLBACK_PRESET = "paper-r50"  # the paper's other backbone (timm), where torchvision is absent
TEXT_LENGTH = 16  # tokens per expression; random ids, as proxyformer.summary uses
# Each row: its autocast dtype (None: FP32). The CUDA graph and compiled rows replay the FP16
# autocast call, the fastest eager one on a GPU with tensor cores.
MODES = {
    "fp32": None,
    "fp16-autocast": "float16",
    "bf16-autocast": "bfloat16",
    "cuda-graph-fp16": "float16",
    "compile-fp16": "float16",
}


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as error:
        raise Skip(f"torch is not installed ({error})") from None
    return torch


def require_cuda() -> Any:
    """``torch`` when it sees a CUDA GPU, else ``Skip`` saying what it sees."""
    torch = _import_torch()
    if not torch.cuda.is_available():
        raise Skip(
            f"torch {torch.__version__} sees no CUDA GPU (built with CUDA {torch.version.cuda})"
        )
    return torch


def build_model(torch: Any, preset: str, device: str) -> Any:
    """``preset`` with random weights on ``device``, or ``Skip`` naming the missing package."""
    try:
        from proxyformer.config import get_preset
        from proxyformer.model import build_proxyformer

        torch.manual_seed(0)
        return build_proxyformer(get_preset(preset)).to(device)
    except ImportError as error:
        raise Skip(f"{preset} cannot be built here: {error}") from None


def _gib(nbytes: int) -> float:
    return round(nbytes / 2**30, 3)


def _mode_call(torch: Any, mode: str, graphs: tuple, inputs: tuple) -> tuple[Callable, dict]:
    """The timed callable of a mode, and what it needs saying (capture or compile seconds)."""
    text_graph, video_graph = graphs
    clip, ids, mask = inputs
    device = clip.device.type
    dtype = getattr(torch, MODES[mode]) if MODES[mode] else None
    if mode == "compile-fp16":
        # Compiled once per shape: the first call compiles, timed apart and reported.
        text_graph, video_graph = torch.compile(text_graph), torch.compile(video_graph)

    # Autocast's cast cache must be off in a CUDA graph capture (PyTorch's CUDA-graph notes):
    # cached casts made during capture would be freed while the graph still points at them.
    cache = mode != "cuda-graph-fp16"

    def call() -> Any:
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None,
                            cache_enabled=cache):  # fmt: skip
            return video_graph(clip, text_graph(ids, mask), mask)

    if mode == "compile-fp16":
        start = time.perf_counter()
        call()
        synchronize(clip.device)
        return call, {"compile_seconds": round(time.perf_counter() - start, 1)}
    if mode != "cuda-graph-fp16":
        return call, {}
    if device != "cuda":
        raise Skip("CUDA graphs need a CUDA device")
    start = time.perf_counter()
    # Warm-up on a side stream, then capture: PyTorch's recipe for torch.cuda.graph.
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    return graph.replay, {"capture_seconds": round(time.perf_counter() - start, 2)}


def time_paper_setting(
    deadline: float,
    frames: int = 19,
    size: tuple[int, int] = (360, 640),
    expressions: tuple[int, ...] = (1, 4),
    warmup: int = 5,
    runs: int = 20,
    compile: bool = False,
    preset: str = PRESET,
    device: str = "cuda",
    modes: tuple[str, ...] | None = None,
) -> dict:
    """p50/p90 (CUDA events) and peak GPU memory of one call per mode and E at the paper
    setting. A mode that cannot run here (BF16 on a GPU without it, a failed capture) is a row
    with its reason, not an error. ``preset``, ``device`` and ``modes`` exist for the test that
    runs this on a CPU with a small model (host clock, no memory figure there)."""
    torch = require_cuda() if device == "cuda" else _import_torch()
    from benchmarks.gpu_check import present
    from benchmarks.targets import PAPER
    from export.graphs import TextGraph, VideoGraph

    note = None
    if preset == PRESET and not present("torchvision"):
        # Video-Swin is torchvision's; the paper's ResNet-50 preset needs only timm.
        preset, note = FALLBACK_PRESET, f"{PRESET} needs torchvision, which is not installed"
    model = build_model(torch, preset, device).eval()
    graphs = (TextGraph(model).eval(), VideoGraph(model, "uint8-nhwc").eval())
    height, width = size
    clip = torch.randint(0, 256, (frames, height, width, 3), dtype=torch.uint8, device=device)
    modes = modes or tuple(m for m in MODES if m != "compile-fp16" or compile)
    rows = []
    for count in expressions:
        ids = torch.randint(5, 500, (count, TEXT_LENGTH), device=device)
        inputs = (clip, ids, torch.ones_like(ids))
        for mode in modes:
            check_deadline(deadline, f"torch {mode} E={count}")
            row = _time_mode(torch, mode, graphs, inputs, warmup, runs)
            rows.append(row | {"expressions": count})
            log.info("torch %s E=%d: %s", mode, count, row.get("p50_ms", row.get("skipped")))
    cuda = device == "cuda"
    return {
        "preset": preset,
        "preset_note": note,
        "weights": "random (latency does not depend on the weights)",
        "frames": frames,
        "size": list(size),
        "text_length": TEXT_LENGTH,
        "warmup": warmup,
        "runs": runs,
        "timing": ("CUDA events" if cuda else "host clock")
        + " around text graph + video graph, inputs and outputs on the device",
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "paper": PAPER,
        "rows": rows,
    }


def _time_mode(torch: Any, mode: str, graphs: tuple, inputs: tuple, warmup: int,
               runs: int) -> dict:  # fmt: skip
    from benchmarks.timing import summarize_times, time_calls

    row: dict = {"mode": mode}
    device = inputs[0].device
    cuda = device.type == "cuda"
    if "bf16" in mode and cuda and not torch.cuda.is_bf16_supported():
        return row | {"skipped": "this GPU has no BF16 (torch.cuda.is_bf16_supported() is False)"}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        try:
            timed, extra = _mode_call(torch, mode, graphs, inputs)
        except Skip as skip:
            return row | {"skipped": str(skip)}
        except Exception as error:  # noqa: BLE001 - a capture/compile failure is the row's result
            return row | {"skipped": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
        stats = summarize_times(time_calls(timed, warmup, runs, cuda=cuda))
    return row | extra | {
        "p50_ms": round(stats["p50"], 2),
        "p90_ms": round(stats["p90"], 2),
        "mean_ms": round(stats["mean"], 2),
        "peak_gpu_memory_gib": _gib(torch.cuda.max_memory_allocated()) if cuda else None,
    }


def train_step(
    deadline: float,
    frames: int = 5,
    size: tuple[int, int] = (360, 640),
    batch: int = 2,
    warmup: int = 2,
    steps: int = 5,
    preset: str = PRESET,
    device: str = "cuda",
) -> dict:
    """Seconds per optimizer step of paper-swin-t with AMP (BF16 where the GPU has it, else
    FP16 with a gradient scaler): forward, the paper's losses, backward, AdamW. ``preset`` and
    ``device`` exist for the test that runs it on a CPU (BF16 autocast there)."""
    torch = require_cuda() if device == "cuda" else _import_torch()
    cuda = device == "cuda"
    try:
        from training.losses import LossWeights, RVOSCriterion, outputs_to_float
    except ImportError as error:
        raise Skip(f"the training losses cannot be imported here: {error}") from None
    model = build_model(torch, preset, device).train()
    criterion = RVOSCriterion(LossWeights())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    bf16 = not cuda or torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float16
    # FP16 gradients underflow without loss scaling; BF16 has FP32's exponent range.
    scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
    height, width = size
    generator = torch.Generator(device=device).manual_seed(0)
    clips = model.normalize(
        torch.rand(batch, frames, 3, height, width, device=device, generator=generator)
    )
    ids = torch.randint(5, 500, (batch, TEXT_LENGTH), device=device, generator=generator)
    mask = torch.ones_like(ids)
    targets = [_moving_box_target(torch, frames, height, width, b, device) for b in range(batch)]

    def step() -> float:
        with torch.autocast(device, dtype=dtype):
            outputs = model(clips, ids, mask)
        losses = criterion(outputs_to_float(outputs), targets)
        scaler.scale(losses["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return float(losses["loss"].detach())

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    losses = []
    for _ in range(warmup):
        check_deadline(deadline, "training step warm-up")
        losses.append(step())
    seconds = []
    for _ in range(steps):
        check_deadline(deadline, "training steps")
        synchronize(torch.device(device))
        start = time.perf_counter()
        losses.append(step())
        synchronize(torch.device(device))
        seconds.append(time.perf_counter() - start)
    from benchmarks.timing import summarize_times

    stats = summarize_times(seconds)
    return {
        "preset": preset,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "amp": str(dtype).removeprefix("torch."),
        "grad_scaler": scaler.is_enabled(),
        "batch": batch,
        "frames": frames,
        "size": list(size),
        "warmup": warmup,
        "steps": steps,
        "step_p50_ms": round(stats["p50"], 1),
        "step_p90_ms": round(stats["p90"], 1),
        "losses": [round(v, 4) for v in losses],
        "finite": all(math.isfinite(v) for v in losses),
        "peak_gpu_memory_gib": _gib(torch.cuda.max_memory_allocated()) if cuda else None,
    }


def _moving_box_target(
    torch: Any, frames: int, height: int, width: int, shift: int, device: str
) -> dict:
    """A box that moves right over the clip: its mask at the input size, cx/cy/w/h boxes and
    a visible flag per frame (the criterion's target format)."""
    masks = torch.zeros(frames, height, width, device=device)
    boxes = []
    box_h, box_w = height // 4, width // 5
    for t in range(frames):
        top = height // 3 + 8 * shift
        left = min(width - box_w, 20 * t + 40 * shift)
        masks[t, top : top + box_h, left : left + box_w] = 1
        boxes.append([(left + box_w / 2) / width, (top + box_h / 2) / height,
                      box_w / width, box_h / height])  # fmt: skip
    return {
        "masks": masks,
        "boxes": torch.tensor(boxes, device=device),
        "valid": torch.ones(frames, dtype=torch.bool, device=device),
    }
