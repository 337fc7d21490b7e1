"""What a latency benchmark times: the inputs of one call at the bundle's shapes, the PyTorch
baseline rebuilt from the manifest, and the GFLOPs of one call."""

from __future__ import annotations

import logging

import numpy as np
import torch

from export.graphs import TextGraph, VideoGraph
from export.source_model import bundle_model
from proxyformer.config import ProxyFormerConfig
from proxyformer.model import ProxyFormer, build_proxyformer
from runtime.manifest import Manifest

log = logging.getLogger(__name__)

EXPRESSIONS = (
    "the small red circle moving left past the big blue square in the top corner",
    "the green triangle that stays still below the yellow diamond on the right side",
    "the large purple square sliding down behind the small orange circle",
    "the blue diamond moving right above the red triangle near the bottom edge",
)


def resolve_axis(manifest: Manifest, axis: str, value: int | None, what: str) -> int:
    """``value`` (default: the profile's opt) checked against the bundle's profile for ``axis``."""
    bounds = manifest.profiles[axis]
    if value is None:
        return int(bounds["opt"])
    if not bounds["min"] <= value <= bounds["max"]:
        raise ValueError(
            f"{what}={value} is outside the bundle's {axis} profile "
            f"{bounds['min']}..{bounds['max']} ({manifest.root}); export a bundle that covers it"
        )
    return int(value)


def clip_text_length(manifest: Manifest, text_length: int) -> int:
    """L clipped to the bundle's L profile (with a warning when it changes)."""
    bounds = manifest.profiles["L"]
    length = min(max(int(text_length), bounds["min"]), bounds["max"])
    if length != text_length:
        log.warning("text length %d clipped to the bundle's L profile: %d", text_length, length)
    return length


def clip_e_sweep(manifest: Manifest, e_sweep: list[int] | tuple[int, ...]) -> list[int]:
    """The sweep's E values inside the bundle's E profile, sorted (a warning names the rest)."""
    bounds = manifest.profiles["E"]
    sweep = sorted({e for e in e_sweep if bounds["min"] <= e <= bounds["max"]})
    dropped = sorted(set(e_sweep) - set(sweep))
    if dropped:
        log.warning("E sweep %s outside the bundle's E profile %d..%d: dropped",
                    dropped, bounds["min"], bounds["max"])  # fmt: skip
    return sweep


def _token_rows(
    manifest: Manifest, expressions: int, text_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """``[E, L]`` token ids and attention mask of E distinct texts, each L real tokens."""
    pre = manifest.preprocessing
    tokenizer = manifest.load_tokenizer()  # inside the bundle and hash-checked
    tokenizer.no_truncation()
    tokenizer.no_padding()
    pad = int(pre.get("pad_token_id", 1))
    ids = np.full((expressions, text_length), pad, dtype=np.int64)
    mask = np.zeros((expressions, text_length), dtype=np.int64)
    for row in range(expressions):
        # Rotate the texts so rows differ; repeat them so every row fills text_length tokens.
        texts = EXPRESSIONS[row % len(EXPRESSIONS) :] + EXPRESSIONS[: row % len(EXPRESSIONS)]
        tokens = tokenizer.encode(" and ".join(texts * (1 + text_length // 40))).ids[:text_length]
        ids[row, : len(tokens)], mask[row, : len(tokens)] = tokens, 1
    return ids, mask


def make_feeds(
    manifest: Manifest, frames: int, expressions: int, text_length: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """The inputs of one call: random frames in the bundle's frame format and E tokenized
    expressions cut to ``text_length`` tokens (all real tokens, no padding).

    Returns:
        ``{"frames", "input_ids", "attention_mask"}`` as numpy arrays.
    """
    pre = manifest.preprocessing
    height, width = pre["size"]
    rng = np.random.default_rng(seed)
    if pre["frame_format"] == "uint8-nhwc":
        video = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    else:
        video = rng.standard_normal((frames, 3, height, width)).astype(np.float32)
    ids, mask = _token_rows(manifest, expressions, text_length)
    return {"frames": video, "input_ids": ids, "attention_mask": mask}


def load_baseline_model(manifest: Manifest, device: str | torch.device = "cpu") -> ProxyFormer:
    """The PyTorch model of the bundle, in eval mode on ``device``.

    The checkpoint the manifest names when it exists (tried as given, then relative to the
    bundle); otherwise the manifest's config with random weights from its recorded seed —
    latency does not depend on the weights.
    """
    entry = manifest.data["model"]
    try:
        model = bundle_model(manifest, device)
    except FileNotFoundError as error:
        log.warning(
            "%s; building the manifest's config with random weights instead (latency does not "
            "depend on the weights)",
            error,
        )
        seed = entry.get("random_weights_seed")
        torch.manual_seed(0 if seed is None else int(seed))
        model = build_proxyformer(ProxyFormerConfig.from_dict(entry["config"]))
    expected = entry.get("parameters")
    if expected is not None and model.num_parameters() != expected:
        log.warning(
            "the rebuilt model has %d parameters, the manifest records %d",
            model.num_parameters(),
            expected,
        )
    model.requires_grad_(False)  # FlopCounterMode's module tracker wants no autograd graph
    return model.to(device).eval()


def count_gflops(
    model: ProxyFormer, frame_format: str, feeds: dict[str, np.ndarray], device: str = "cpu"
) -> dict[str, float]:
    """GFLOPs of one call (text encoder + video graph) at the feeds' shapes.

    Counted by ``proxyformer.flops.flop_counter`` (torch's ``FlopCounterMode`` with attention
    counted from its operand shapes, so the figure does not depend on the torch release) on the
    eager graphs: matrix multiplications, convolutions and attention, 2 FLOPs per
    multiply-accumulate.

    Returns:
        ``{"text": ..., "video": ..., "total": ...}`` in GFLOP.
    """
    from proxyformer.flops import flop_counter

    text_graph, video_graph = TextGraph(model).eval(), VideoGraph(model, frame_format).eval()
    tensors = {k: torch.from_numpy(v).to(device) for k, v in feeds.items()}
    with torch.no_grad():
        with flop_counter() as counter:
            features = text_graph(tensors["input_ids"], tensors["attention_mask"])
        text = counter.get_total_flops()
        with flop_counter() as counter:
            video_graph(tensors["frames"], features, tensors["attention_mask"])
        video = counter.get_total_flops()
    return {"text": text / 1e9, "video": video / 1e9, "total": (text + video) / 1e9}
