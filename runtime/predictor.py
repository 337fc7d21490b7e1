"""``RVOSPredictor``: a bundle, a video and expressions -> one mask track per expression.

In the shape of SAM's predictor: ``encode_text(expressions)`` once, ``segment(video, text)``
as often as needed. Pre- and post-processing are numpy (docs/design.md, "Inference"):

1. frames resized (bilinear) to the bundle's size, fed as uint8 ``[T, H, W, 3]``;
2. the text graph gives ``text_features [E, L, C]``, the video graph logits and mask logits;
3. per expression, the class probability of each query is averaged over the frames of a
   window, the best query wins, its stride-4 mask logits are upsampled x4 (bilinear), cropped
   to the input size, resized to the video's size and thresholded at probability 0.5.

``stream(video, text)`` reads, runs and yields one window at a time (``WindowResult``), so a
long video is never held whole; ``segment`` collects the stream into one ``Segmentation``.
Videos longer than the window run in windows that may overlap and link one object per
expression across them (``runtime.stream``); with no overlap (the default) each window picks
its own query, as the PyTorch evaluation does. Where the video's end would leave a last
window shorter than the profile's minimum, the last two windows share the remaining frames;
a window still below it is padded with its last frame (``runtime.stream.call_frames``). More
expressions than the profile allows run in groups.

Under a memory budget (``memory_budget``, ``runtime.budget``) the predictor picks the window
length and the expressions per call from the bundle's measured memory models: the one video
graph when every expression fits in one call, else ``video_encoder`` once per window and
``video_decoder`` per group of expressions (bundles exported with ``--split``), so the backbone
never runs twice for a window.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .backends import load_backend
from .budget import Plan, frame_step, measured_arena, memory_models, parse_memory, plan_calls
from .budget import default_budget as default_memory_budget
from .expressions import check_expressions, shorten
from .manifest import SPLIT_GRAPHS, Manifest
from .precisions import RUNTIME_PRECISIONS, RUNTIME_VARIANT
from .results import TIMING_KEYS, Segmentation, TextEmbedding, WindowResult
from .selection import chosen_tracks, select_queries
from .stream import TrackLinker, call_frames, check_overlap, iter_windows, merge_shared
from .video import VideoStream, open_video, resize_frames

log = logging.getLogger(__name__)

def upsample_logits(logits: np.ndarray, input_size: tuple[int, int], output_size: tuple[int, int]):
    """Stride-4 logits ``(K, h, w)`` -> ``(K, H0, W0)``: x4 bilinear (half-pixel centres, as
    torch's ``align_corners=False``), crop to the input size, then resize to the output size."""
    import cv2

    count, height, width = logits.shape
    out = np.empty((count, *output_size), dtype=np.float32)
    for k in range(count):
        full = cv2.resize(logits[k], (width * 4, height * 4), interpolation=cv2.INTER_LINEAR)
        full = full[: input_size[0], : input_size[1]]
        if full.shape != tuple(output_size):
            full = cv2.resize(
                full, (output_size[1], output_size[0]), interpolation=cv2.INTER_LINEAR
            )
        out[k] = full
    return out


class RVOSPredictor:
    """Segment the objects that expressions refer to in videos, from a bundle.

    Args:
        bundle: the bundle directory (``python export/to_onnx.py``).
        backend: "auto", "onnxruntime", "tensorrt" or "openvino" (see
            ``runtime.backends.load_backend``).
        precision: the video graph's variant: "fp32", "fp16", "int8-cpu", "int8-tensorrt"; or
            "bf16", OpenVINO's way of running the fp32 graphs.
        text_precision: the text graph's variant (default: ``precision`` when the bundle has
            it for the text graph, else fp32 — INT8 variants exist for the video graph only).
        verify: check the sha256 of every bundle file first.
        text_backend, video_backend: backends already built for the two graphs (anything
            with ``infer(feeds)``), used instead of loading them from the bundle: Triton's
            Python model passes backends that call the graphs through BLS
            (``runtime.triton_bls``), so its pre- and post-processing are this class's.
        memory_budget: the most memory (RSS) one call may take: bytes or a size such as
            "8GB" (``runtime.budget.parse_memory``); "auto" (the default) is
            ``runtime.budget.default_budget`` where the bundle has memory measurements for the
            backend and no budget otherwise; None turns it off. See ``plan``.
        backend_options: passed to the backends (threads, providers, ...).

    ``plan`` (and so ``stream`` and ``segment``, before any frame is read) raises
    ``MemoryBudgetError`` for a budget given where the bundle has no memory measurements for
    the backend (``benchmarks/memory.py --record``), or one no call fits.
    """

    def __init__(
        self,
        bundle: str | Path | Manifest,
        backend: str = "auto",
        precision: str = "fp32",
        text_precision: str | None = None,
        verify: bool = True,
        text_backend=None,
        video_backend=None,
        memory_budget: int | str | None = "auto",
        **backend_options,
    ) -> None:
        text_options = dict(backend_options)
        if memory_budget is not None and memory_budget != "auto":
            memory_budget = parse_memory(memory_budget)  # a bad size fails before any loading
            if str(backend).lower() in ("onnxruntime", "ort"):
                # onnxruntime's arena keeps the peak of the largest call until the session
                # closes; the video graphs run as their memory was measured (``prepare``).
                text_options.setdefault("cpu_arena", False)
        self.memory_budget = memory_budget
        self.manifest = bundle if isinstance(bundle, Manifest) else Manifest.load(bundle, verify)
        pre = self.manifest.preprocessing
        self.size = self.manifest.size
        self.frame_format = pre["frame_format"]
        threshold = self.manifest.mask_threshold  # validated: strictly between 0 and 1
        self.threshold_logit = float(np.log(threshold / (1 - threshold)))
        # Through the manifest: inside the bundle, listed in files, hash-checked on load.
        self.tokenizer = self.manifest.load_tokenizer()
        if text_precision is None:
            # The text encoder follows the video graph where it can: its own variant of that
            # precision, or a runtime precision (bf16 runs the fp32 graph), else fp32.
            same = precision in self.manifest.precisions("text_encoder")
            text_precision = precision if same or precision in RUNTIME_PRECISIONS else "fp32"
        self.text_backend = text_backend if text_backend is not None else load_backend(
            self.manifest, "text_encoder", backend, text_precision, **text_options
        )
        self.precision = precision
        self._load = (backend, precision, backend_options)
        # The video graphs load when the first window's plan says which (``prepare``): the
        # one video graph, or its two parts; a budget's measurements hold one set loaded.
        self._video = video_backend
        self._split: tuple | None = None  # (video_encoder, video_decoder)
        self._last_call_frames: int | None = None  # frames of the last video call (padded)
        profiles = self.manifest.profiles
        self.min_frames = profiles["T"]["min"]
        self.max_frames = profiles["T"]["max"]
        self.max_expressions = profiles["E"]["max"]
        self.max_text_length = profiles["L"]["max"]
        if self._video is None:
            if memory_budget is None or not self._memory_models():
                self.prepare(None)  # no plan to wait for: a bad variant fails here, not later
            else:  # the plan picks the graphs; the variant must be there either way
                self.manifest.variant("video", RUNTIME_VARIANT.get(precision, precision))

    # -- memory --------------------------------------------------------------------------

    @property
    def video_backend(self):
        """The video graph's backend (loaded on first use)."""
        if self._video is None:
            self.prepare(None)
        return self._video

    @property
    def backend_name(self) -> str:
        """The name of the backend running the video graph (or its parts), e.g.
        "openvino-cpu fp32"."""
        if self._split is not None:
            return self._split[0].name
        return self.video_backend.name

    def _runtime(self) -> str | None:
        """The runtime "auto" chose (``runtime.budget.memory_key``): the loaded video graph's,
        else the text graph's (loaded by the same choice), so nothing is loaded to find it
        out; None for a backend the caller built."""
        loaded = self._split[0] if self._split is not None else self._video
        return getattr(loaded if loaded is not None else self.text_backend, "runtime", None)

    def _memory_models(self) -> dict:
        """The bundle's memory models for this backend (``runtime.budget``); the split mode
        only where the bundle has both split graphs in the precision's variant."""
        runtime = self._runtime()
        if runtime is None:  # a backend the caller built: nothing was measured for it
            return {}
        models = memory_models(self.manifest, runtime, self.precision)
        variant = RUNTIME_VARIANT.get(self.precision, self.precision)
        if variant not in self.manifest.split_precisions():
            models.pop("split", None)
        return models

    def plan(self, window: int | None, expressions: int) -> Plan | None:
        """How ``expressions`` expressions run in windows of up to ``window`` frames under the
        memory budget (``runtime.budget.plan_calls``): None without a budget, or with the
        default one on a bundle that has no measurements for this backend.

        Raises:
            MemoryBudgetError: the budget cannot be met (the message names the least that can).
        """
        window = self.check_window(window)
        if self.memory_budget is None:
            return None
        models = self._memory_models()
        backend, precision, _ = self._load
        what = f"backend {backend!r} at {precision}"
        if self.memory_budget == "auto":
            if not models:
                log.debug("no memory measurements for %s: no budget", what)
                return None
            budget = default_memory_budget()
        else:
            budget = self.memory_budget
        plan = plan_calls(models, budget, window, expressions, self.min_frames,
                          self.max_expressions, what)  # fmt: skip
        if plan.window < window or plan.mode == "split":
            log.info("memory budget %.2f GB: %d-frame windows, %s graph, %d expression(s) per "
                     "call (predicted peak %.2f GB)", budget / 1e9, plan.window, plan.mode,
                     plan.group, plan.predicted_bytes / 1e9)  # fmt: skip
        return plan

    def prepare(self, plan: Plan | None) -> None:
        """Load the graphs ``plan`` runs (the one video graph without a plan), and hold only
        those: what the memory models measured. ``stream`` calls it; call it first to keep
        loading out of a timed run."""
        mode = plan.mode if plan is not None else "video"
        if mode == "split" and self._split is None:
            if self._video is not None:
                self._video.close()
                self._video = None
            load = self._video_loader()
            self._split = tuple(load(graph) for graph in SPLIT_GRAPHS)
        elif mode == "video" and self._video is None:
            for part in self._split or ():
                part.close()
            self._split = None
            self._video = self._video_loader()("video")

    def _video_loader(self):
        """``load(graph)`` for the video graphs, with the backend options the predictor was
        given; under a budget onnxruntime allocates as its memory was measured: without an
        arena, or from one shared arena shrunk after each run (``measured_arena``)."""
        backend, precision, options = self._load
        budgeted = self.memory_budget is not None and self._memory_models()
        if budgeted and "cpu_arena" not in options and self._runtime() == "onnxruntime":
            options = options | {"cpu_arena": measured_arena(self.manifest, self.precision)}
        return lambda graph: load_backend(self.manifest, graph, backend, precision, **options)

    # -- text ----------------------------------------------------------------------------

    def encode_text(self, expressions: list[str] | str) -> TextEmbedding:
        """Tokenize and encode expressions once; the result is reused for any video."""
        expressions = check_expressions(expressions)
        encodings = self.tokenizer.encode_batch(expressions)
        truncated = [bool(e.overflowing) for e in encodings]
        for index, (text, cut) in enumerate(zip(expressions, truncated)):
            if cut:
                log.warning(
                    "expression %d truncated to %d tokens (the bundle's max text length): %s",
                    index, self.max_text_length, shorten(text),
                )  # fmt: skip
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        features = []
        for start in range(0, len(expressions), self.max_expressions):
            chunk = slice(start, start + self.max_expressions)
            out = self.text_backend.infer({"input_ids": ids[chunk], "attention_mask": mask[chunk]})
            features.append(out["text_features"])
        return TextEmbedding(list(expressions), np.concatenate(features), mask, truncated)

    # -- video ---------------------------------------------------------------------------

    def check_window(self, window: int | None) -> int:
        """Frames per call: ``window``, or the profile's maximum when None.

        Raises:
            ValueError: naming the profile's limits, for a window outside them (0 and
                negative windows included: none of them means "the maximum").
        """
        if window is None:
            return self.max_frames
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)):
            raise TypeError(f"window must be a whole number of frames, got {window!r}")
        if not self.min_frames <= window <= self.max_frames:
            raise ValueError(
                f"window of {window} frames is outside the bundle's frame profile "
                f"[{self.min_frames}, {self.max_frames}]"
            )
        return int(window)

    def segment(
        self,
        video,
        expressions: list[str] | str | TextEmbedding,
        window: int | None = None,
        allow_partial: bool = False,
        overlap: int = 0,
        link: bool = True,
        plan: Plan | None = None,
    ) -> Segmentation:
        """Masks ``[E, T, H0, W0]`` and scores for a video (file, folder, ``[T,H,W,3]`` array or
        iterable of frames): ``stream`` collected. See ``stream`` for the arguments."""
        started = time.perf_counter()
        results = list(self.stream(video, expressions, window, allow_partial, overlap, link,
                                   plan=plan))  # fmt: skip
        timings = {k: sum(r.timings_ms[k] for r in results) for k in TIMING_KEYS}
        timings["total"] = (time.perf_counter() - started) * 1e3
        return Segmentation(
            masks=np.concatenate([r.masks for r in results], axis=1),
            scores=np.array([[c.score for c in r.choices] for r in results], np.float32).mean(0),
            queries=np.array([[c.query for c in r.choices] for r in results], np.int64).T,
            frame_names=[name for r in results for name in r.names],
            timings_ms=timings,
            windows=[r.record() for r in results],
            plan=results[0].plan.as_dict() if results and results[0].plan else None,
        )

    def stream(
        self,
        video,
        expressions: list[str] | str | TextEmbedding,
        window: int | None = None,
        allow_partial: bool = False,
        overlap: int = 0,
        link: bool = True,
        link_weight: float = 0.1,
        switch_iou: float = 0.5,
        plan: Plan | None = None,
    ) -> Iterator[WindowResult]:
        """Segment a video window by window, reading only the frames each window needs, and
        yield each window's finished frames and masks (``WindowResult``) as it completes.

        Args:
            video: a file, a folder of frames, an array ``[T, H, W, 3]`` uint8, an iterable of
                ``[H, W, 3]`` frames, or a ``VideoStream`` from ``runtime.video.open_video``
                (whose ``partial`` then tells, after the last window, whether it was whole).
            expressions: texts, or a ``TextEmbedding`` from ``encode_text``.
            window: frames per call (default: the profile's maximum; ``check_window``).
            allow_partial: segment what decodes of a truncated or corrupt file instead of
                raising ``VideoError`` when the stream reaches the break.
            overlap: frames consecutive windows share (``runtime.stream``); 0 = independent
                windows.
            link: link each window's query to the previous track on the shared frames.
            link_weight, switch_iou: see ``runtime.stream.TrackLinker``.
            plan: run this ``runtime.budget.Plan`` instead of the budget's own (``plan``):
                what ``benchmarks/memory.py`` measures the modes with.
        """
        # Every input is checked before the first graph runs: window, overlap, expressions,
        # video (what can be checked before decoding).
        window = self.check_window(window)
        overlap = check_overlap(overlap, window)
        if not isinstance(expressions, TextEmbedding):
            expressions = check_expressions(expressions)
        linker = TrackLinker(self.threshold_logit, link, link_weight, switch_iou)
        count = len(expressions.expressions if isinstance(expressions, TextEmbedding)
                    else expressions)  # fmt: skip
        plan = plan if plan is not None else self.plan(window, count)
        if plan is not None and plan.window < window:
            window = plan.window
            if overlap >= window:
                log.warning("overlap of %d frames cut to %d for the budget's %d-frame windows",
                            overlap, window // 4, window)  # fmt: skip
                overlap = window // 4
        self.prepare(plan)
        source = video if isinstance(video, VideoStream) else open_video(video, None, allow_partial)
        tick = time.perf_counter()
        compiled = self._shape_compile_seconds()
        text = (
            expressions if isinstance(expressions, TextEmbedding) else self.encode_text(expressions)
        )
        text_ms = (time.perf_counter() - tick) * 1e3
        held = None  # the last window's tracks on the frames the next one shares
        for win in iter_windows(source, window, overlap, self.min_frames):
            tick = time.perf_counter()
            logits, mask_logits = self._run_window(win.frames, text, plan)
            video_ms = (time.perf_counter() - tick) * 1e3
            tick = time.perf_counter()
            tracks, choices = linker.choose(logits, mask_logits, win.overlap)
            if held is not None:
                tracks[:, : win.overlap] = merge_shared(held, tracks, choices)
            hold = 0 if win.last else overlap
            done = len(win.frames) - hold
            original = win.frames[0].shape[:2]
            masks = self._track_masks(tracks[:, :done], original)
            held = tracks[:, done:] if hold else None
            post_ms = (time.perf_counter() - tick) * 1e3
            now = self._shape_compile_seconds()
            compile_ms, compiled = (now - compiled) * 1e3, now
            yield WindowResult(
                index=win.index,
                start=win.start,
                names=win.names[:done],
                frames=win.frames[:done],
                masks=masks,
                window=(win.start, win.start + len(win.frames)),
                choices=choices,
                timings_ms={
                    "text": text_ms if win.index == 0 else 0.0,
                    "video": video_ms,
                    "postprocess": post_ms,
                    "compile": compile_ms,
                },
                plan=plan,
            )

    def _shape_compile_seconds(self) -> float:
        """Seconds the loaded backends spent compiling for new input shapes so far."""
        backends = (self.text_backend, self._video, *(self._split or ()))
        return sum(getattr(b, "shape_compile_seconds", 0.0) for b in backends if b is not None)

    def _run_window(self, frames: list[np.ndarray], text: TextEmbedding, plan: Plan | None = None):
        """One window's frames -> class logits (E, t, N) and mask logits (E, t, N, h, w) of
        every expression: the video graph once per group of the profile's maximum E, or under
        a split plan the video encoder once and the video decoder per group of the plan's."""
        clip = resize_frames(np.stack(frames), self.size)
        real = len(clip)
        frames_in = self._call_frames(real, plan)
        if frames_in > real:  # padded with copies of the last frame; their outputs are dropped
            clip = np.concatenate([clip, np.repeat(clip[-1:], frames_in - real, 0)])
        logits, masks = [], []
        if plan is not None and plan.mode == "split":
            encoder, decoder = self._split
            levels = encoder.infer({"frames": self._video_feeds(clip, text, slice(0))["frames"]})
            step = plan.group
        else:
            step = self.max_expressions
        for first in range(0, len(text.expressions), step):
            group = slice(first, first + step)
            feeds = self._video_feeds(clip, text, group)
            if plan is not None and plan.mode == "split":
                del feeds["frames"]
                out = decoder.infer(levels | feeds)
            else:
                out = self.video_backend.infer(feeds)
            logits.append(out["pred_logits"][:, :real])
            masks.append(out["pred_masks"][:, :real])
        return np.concatenate(logits), np.concatenate(masks)

    def _call_frames(self, real: int, plan: Plan | None) -> int:
        """The frames a window of ``real`` frames runs with (``runtime.stream.call_frames``)."""
        backends = self._split if plan is not None and plan.mode == "split" else (self._video,)
        static = any(getattr(b, "static_shapes", False) for b in backends)
        frames = call_frames(real, self.min_frames, self._last_call_frames,
                             frame_step(self.manifest) if static else None)  # fmt: skip
        self._last_call_frames = frames
        return frames

    def _video_feeds(self, clip: np.ndarray, text: TextEmbedding, group: slice) -> dict:
        if self.frame_format == "uint8-nhwc":
            frames = clip
        else:  # float-nchw: normalised here
            pre = self.manifest.preprocessing
            mean = np.asarray(pre["pixel_mean"], np.float32) * pre["pixel_scale"]
            std = np.asarray(pre["pixel_std"], np.float32) * pre["pixel_scale"]
            frames = ((clip.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2)
        return {
            "frames": np.ascontiguousarray(frames),
            "text_features": text.features[group],
            "attention_mask": text.mask[group],
        }

    def postprocess(self, logits: np.ndarray, mask_logits: np.ndarray, original: tuple[int, int]):
        """(E, T, N) logits and (E, T, N, h, w) mask logits -> masks (E, T, H0, W0), scores,
        chosen queries (the inference rule, ``runtime.selection``)."""
        best, scores = select_queries(logits)
        masks = self._track_masks(chosen_tracks(mask_logits, best), original)
        return masks, scores.astype(np.float32), best

    def _track_masks(self, tracks: np.ndarray, original: tuple[int, int]) -> np.ndarray:
        """Stride-4 track logits (E, T, h, w) -> masks (E, T, H0, W0) bool at the video's size."""
        expressions, frames = tracks.shape[:2]
        full = upsample_logits(tracks.reshape(-1, *tracks.shape[2:]).astype(np.float32),
                               self.size, original)  # fmt: skip
        return (full > self.threshold_logit).reshape(expressions, frames, *original)
