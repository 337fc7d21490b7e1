"""A memory budget for the runtime: how many frames per call and expressions per group fit.

A call's peak memory is a property of the backend (onnxruntime's arena, OpenVINO's fusions)
as much as of the model: on paper-swin-t at 360x640 and 19 frames, one expression peaks at
9.7 GB RSS in onnxruntime without its arena and at 4.4 GB in OpenVINO BF16, on the same graph.
So it is measured, not derived from the graph: ``benchmarks/memory.py --record`` runs calls
of a few sizes, each in a fresh process, and fits per backend and per mode

    peak(T, G) = base + max(per_frame * P(T) + per_frame_expression * T * G,
                            expression_phase * T * G)

(T frames, G expressions in one call), raised by the largest residual so that it bounds every
measured point (``MemoryModel``: the second term is the expressions' work once the backbone's
memory is freed). ``P(T)`` is the frames the backbone computes on: Video-Swin pads T up to a
multiple of its temporal window (8) unless T fits in one window, so its attention maps, and
the peak, step: on paper-swin-t at 360x640 in onnxruntime without its arena, T = 12, 16 and 17
peak at 6.62, 6.95 and 9.33 GiB. A model linear in T would refuse T = 16 under a budget that
T = 12 fits. For other backbones ``P(T) = T`` (``frame_step`` 1). The fit is kept in the
bundle's manifest under ``memory``, keyed by
``<runtime>/<precision>`` (``memory_key``), with how they were measured: for onnxruntime that
includes its allocation (no arena, or one shared arena), which a budget then runs
(``measured_arena``).

The modes are the two ways to run the video graph:

- ``video``: the one graph, all expressions of a window in one call;
- ``split``: ``video_encoder`` once per window, then ``video_decoder`` once per group of G
  expressions on the same levels (bundles exported with ``--split``), so the backbone never
  runs twice for one window.

``plan_calls`` picks the longest window, then the largest group, whose predicted peak fits the
budget (``video`` before ``split`` at equal T: no levels to hand over). A budget too small
for the shortest window the bundle takes with one expression is a ``MemoryBudgetError`` that
names the smallest budget that works.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MODES = ("video", "split")
# Of the memory a budget defaults to (``default_budget``), the share of what the system has
# available: the rest is left to the page cache, the decoder of the video and other processes.
DEFAULT_SHARE = 0.8
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6,
          "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12,
          "tib": 2**40}  # fmt: skip


class MemoryBudgetError(ValueError):
    """A budget that no call fits, or a budget the bundle has no measurements for."""


def parse_memory(text: str | float) -> int:
    """``"8GB"`` (10^9), ``"8GiB"`` (2^30), ``"512MiB"``, ``"1.5G"`` or a number of bytes ->
    bytes.

    Raises:
        ValueError: naming the text, for anything else or a size that is not positive.
    """
    if isinstance(text, bool):
        raise TypeError(f"a memory size must be a number of bytes or e.g. '8GB', got {text!r}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        unit = match.group(2).lower() if match else None
        if not match or unit not in _UNITS:
            raise ValueError(f"cannot read {text!r} as a memory size: write e.g. 8GB, 8GiB, "
                             "512MiB or a number of bytes")  # fmt: skip
        value = float(match.group(1)) * _UNITS[unit]
    if not value > 0 or not np.isfinite(value):
        raise ValueError(f"a memory size must be positive, got {text!r}")
    return int(value)


def format_memory(size: float) -> str:
    """Bytes as GB (10^9) with two decimals: what ``parse_memory`` reads back."""
    return f"{size / 1e9:.2f} GB"


def _meminfo(field_name: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_rss() -> int:
    """This process's resident set size in bytes (0 where /proc is not there)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) * 1024
    except (OSError, IndexError, ValueError):
        return 0


def default_budget() -> int:
    """The budget when none is given: this process's RSS plus ``DEFAULT_SHARE`` of the
    memory the system reports available (``MemAvailable``), or of its physical memory where
    that is not reported."""
    available = _meminfo("MemAvailable")
    if available is None:
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            raise MemoryBudgetError(
                "cannot tell the available memory on this system: give a memory budget"
            ) from None
    return int(current_rss() + DEFAULT_SHARE * available)


def frame_step(manifest) -> int:
    """The temporal window of the bundle's backbone (Video-Swin: 8 frames), to which it pads
    T; 1 for a backbone that computes on every frame alone."""
    backbone = manifest.data.get("model", {}).get("config", {}).get("backbone", {})
    if str(backbone.get("name", "")).startswith("video-swin"):
        return int(backbone.get("window_size", [1])[0])
    return 1


def padded_frames(frames: int, step: int) -> int:
    """``P(T)``: T rounded up to a multiple of ``step``, or T itself when it fits in one
    window (Video-Swin then shrinks the window to T instead of padding)."""
    return frames if frames <= step else -(-frames // step) * step


# A multi-expression point this far (relative) above the backbone phase's fit shows a second
# phase; below it, the gap is the run-to-run spread of a peak (0.45 GiB between identical
# OpenVINO points), which the raise of ``base`` covers.
SECOND_PHASE = 0.03


@dataclass
class MemoryModel:
    """Peak RSS of a process that loaded the graphs and ran one call of T frames and G
    expressions, in bytes: the larger of two phases,

    - ``base + per_frame * P(T) + per_frame_expression * T * G`` (the backbone's, with what
      the expressions hold beside it), ``P(T) = padded_frames(T, frame_step)``;
    - ``base + expression_phase * T * G``: the expressions' work after the backbone's
      attention maps are freed. In onnxruntime on paper-swin-t one call at T 16, E 4 peaks at
      8.00 GiB against 6.95 at T 16, E 1 and 6.34 at T 9, E 4, while at T 19 four expressions
      add nothing: the peak is the larger phase, not their sum. 0 where no point shows it.
    """

    base: float
    per_frame: float
    per_frame_expression: float
    points: list[dict] = field(default_factory=list)  # the measurements it was fitted on
    frame_step: int = 1
    expression_phase: float = 0.0

    def predict(self, frames: int, group: int) -> int:
        padded = padded_frames(frames, self.frame_step)
        backbone = self.per_frame * padded + self.per_frame_expression * frames * group
        return int(self.base + max(backbone, self.expression_phase * frames * group))

    @classmethod
    def fit(cls, points: list[dict], frame_step: int = 1) -> MemoryModel:
        """Least squares of the backbone phase over ``[{"T", "E", "peak_bytes"}, ...]`` with
        coefficients kept >= 0; the expression phase through the multi-expression points the
        backbone phase underestimates by more than ``SECOND_PHASE`` (its slope the largest
        they need); then ``base`` raised by the largest underestimate left: the model bounds
        every point.

        Raises:
            ValueError: fewer than two distinct ``P(T)`` (the per-frame slope is not
                determined).
        """
        if len({padded_frames(p["T"], frame_step) for p in points}) < 2:
            raise ValueError(
                f"a memory model needs points at two or more T (padded to multiples of "
                f"{frame_step} frames: distinct), got {[(p['T'], p['E']) for p in points]}"
            )
        frames = np.array([p["T"] for p in points], np.float64)
        padded = np.array([padded_frames(p["T"], frame_step) for p in points], np.float64)
        groups = np.array([p["E"] for p in points], np.float64)
        peaks = np.array([p["peak_bytes"] for p in points], np.float64)
        design = np.stack([np.ones_like(frames), padded, frames * groups], axis=1)

        def backbone_fit(used: np.ndarray) -> tuple[float, float, float]:
            columns = design[used] if len(set(groups[used])) > 1 else design[used][:, :2]
            coefficients = np.linalg.lstsq(columns, peaks[used], rcond=None)[0]
            coefficients = np.pad(np.maximum(coefficients, 0.0), (0, 3 - len(coefficients)))
            return tuple(float(c) for c in coefficients)

        # Fitted on every point, then again without the points of the second phase (which
        # would otherwise tilt the backbone's expression term towards them).
        base, per_frame, per_expression = backbone_fit(np.ones(len(points), bool))
        backbone = base + per_frame * padded + per_expression * frames * groups
        second = (groups > 1) & (peaks > backbone * (1 + SECOND_PHASE))
        if second.any() and len(set(padded[~second])) >= 2:
            base, per_frame, per_expression = backbone_fit(~second)
            backbone = base + per_frame * padded + per_expression * frames * groups
        phase = 0.0
        if second.any():
            phase = float(((peaks[second] - base) / (frames * groups)[second]).max())
        predicted = np.maximum(backbone, base + phase * frames * groups)
        base += float(max(0.0, (peaks - predicted).max()))
        return cls(base, per_frame, per_expression, list(points), int(frame_step), phase)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MemoryModel:
        return cls(float(data["base"]), float(data["per_frame"]),
                   float(data["per_frame_expression"]), list(data.get("points", [])),
                   int(data.get("frame_step", 1)),
                   float(data.get("expression_phase", 0.0)))  # fmt: skip


def faster_mode(models: dict[str, MemoryModel], frames: int | None = None,
                expressions: int | None = None) -> str | None:  # fmt: skip
    """The mode whose calls measured faster (``benchmarks/memory.py --record`` keeps each
    point's seconds), at the (T, E) point both modes were measured at that is closest to a
    call of ``frames`` and ``expressions`` (the largest at or below both; the smallest
    point where none is), or, without them, in total over every such point. None where that
    cannot be told (one mode, or models recorded without times).

    The point matters: paper-swin-t's INT8 split graphs were faster in total (175 s against
    185 s over six points, onnxruntime without its arena), but not at T 19, E 4 (51.5 s
    against 50.7 s), where the decoder's arena also left room for two expressions a call only.
    """
    if not all(mode in models for mode in MODES):
        return None
    times = [{(p["T"], p["E"]): p["seconds"] for p in models[mode].points if "seconds" in p}
             for mode in MODES]  # fmt: skip
    shared = set(times[0]) & set(times[1])
    if not shared:
        return None
    if frames is not None and expressions is not None:
        below = [key for key in shared if key[0] <= frames and key[1] <= expressions]
        shared = {max(below)} if below else {min(shared)}
    totals = [sum(t[key] for key in shared) for t in times]
    return MODES[int(totals[1] < totals[0])]


def _even_groups(expressions: int, largest: int) -> list[int]:
    """Expressions per call, largest first, for 1 to ``largest`` per call, each spread evenly
    over the calls it takes (4 in groups of at most 3 run as 2 + 2, not 3 + 1: the same work,
    a lower peak); each size once."""
    calls = (-(-expressions // group) for group in range(largest, 0, -1))
    return list(dict.fromkeys(-(-expressions // count) for count in calls))


def memory_key(runtime: str, precision: str) -> str:
    """Where a backend's memory models are kept in the manifest: ``"openvino/bf16"``."""
    return f"{runtime}/{precision}"


def memory_models(manifest, runtime: str, precision: str) -> dict[str, MemoryModel]:
    """The bundle's measured models for one backend, by mode (empty when none was recorded)."""
    entry = manifest.data.get("memory", {}).get(memory_key(runtime, precision), {})
    return {mode: MemoryModel.from_dict(entry[mode]) for mode in MODES if mode in entry}


def measured_arena(manifest, precision: str) -> bool | str:
    """How onnxruntime allocated when its memory models at ``precision`` were measured
    (``benchmarks/memory.py --ort-arena``, kept under ``measured``): True, False or "shared"
    (``runtime.backends.ort.ARENA_SETTINGS``), so that a budget runs it that way. Records
    that name none were measured without the arena, the only bounded mode then."""
    from .backends.ort import check_arena

    entry = manifest.data.get("memory", {}).get(memory_key("onnxruntime", precision), {})
    return check_arena(entry.get("measured", {}).get("setting", {}).get("ort_arena", "off"))


def record_memory_models(manifest, runtime: str, precision: str,
                         models: dict[str, MemoryModel], measured: dict) -> None:  # fmt: skip
    """Keep ``models`` (by mode) in the manifest with how they were measured, and save it."""
    entry = {mode: model.to_dict() for mode, model in models.items()} | {"measured": measured}
    manifest.data.setdefault("memory", {})[memory_key(runtime, precision)] = entry
    manifest.save()


@dataclass(frozen=True)
class Plan:
    """How a window runs under a budget: the mode, the frames per call and the expressions
    per call (per ``video_decoder`` call in the split mode), with the predicted peak."""

    mode: str
    window: int
    group: int
    predicted_bytes: int
    budget_bytes: int

    def as_dict(self) -> dict:
        return {"mode": self.mode, "window": self.window, "expression_group": self.group,
                "predicted_peak_gb": round(self.predicted_bytes / 1e9, 2),
                "budget_gb": round(self.budget_bytes / 1e9, 2)}  # fmt: skip


def plan_calls(
    models: dict[str, MemoryModel],
    budget: int,
    window: int,
    expressions: int,
    min_frames: int,
    max_group: int,
    backend: str = "this backend",
) -> Plan:
    """The longest window (from ``window`` down to ``min_frames``), then the largest group of
    expressions, whose predicted peak is within ``budget``.

    At each window the one video graph with every expression in one call comes first (more
    than ``max_group`` expressions, the bundle's E profile, always run in groups of it); then
    the split graphs with groups from ``min(expressions, max_group)`` down to 1, evened out
    over the calls they take (four expressions in groups of at most 3 run as 2 + 2). The split
    graphs come first where their measured calls were the faster at the point nearest to
    ``window`` and the expressions (``faster_mode``): in onnxruntime without its arena the
    split decoder keeps an arena within each run, and paper-swin-t at T 19, E 4 took 41 s
    split against 56 s in the one graph (FP32; at INT8 51.5 against 50.7 s).

    Raises:
        MemoryBudgetError: no model to plan with, or no call fits; the message names the
            smallest budget that works.
    """
    if not models:
        raise MemoryBudgetError(
            f"the bundle has no memory measurements for {backend}: run "
            "benchmarks/memory.py --record for it (docs/deployment.md, 'Memory budget')"
        )
    unknown = set(models) - set(MODES)
    if unknown:
        raise ValueError(f"unknown mode(s) {sorted(unknown)}; modes are {MODES}")
    whole = min(expressions, max_group)
    order = [mode for mode in MODES if mode in models]
    if faster_mode(models, window, whole) == "split":
        order.reverse()
    smallest = []
    for frames in range(window, min_frames - 1, -1):
        for mode in order:
            for group in [whole] if mode == "video" else _even_groups(expressions, whole):
                peak = models[mode].predict(frames, group)
                if peak <= budget:
                    return Plan(mode, frames, group, peak, budget)
            least = whole if mode == "video" else 1
            smallest.append((mode, least, models[mode].predict(min_frames, least)))
    mode, group, need = min(smallest, key=lambda item: item[2])
    hint = "" if "split" in models else (
        "; a bundle exported with --split can also run the expressions in smaller groups"
    )
    raise MemoryBudgetError(
        f"a memory budget of {format_memory(budget)} cannot be met by {backend}: the smallest "
        f"call ({mode} graph, {min_frames} frame(s), {group} expression(s)) needs about "
        f"{format_memory(need)}; give at least that{hint}"
    )
