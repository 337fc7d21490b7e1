"""`make demo`: the main job on the embedded default.

Stages land with their issues; this runs every stage that exists today and says which are
still to come. Today: build the ``tiny`` preset, tokenize two expressions, segment a clip of
moving squares, and time PyTorch eager on this machine.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import numpy as np
import torch

from proxyformer.config import get_preset
from proxyformer.model import build_proxyformer
from proxyformer.summary import format_table, summarize
from proxyformer.text import encode_texts, load_tokenizer

log = logging.getLogger("demo")


def moving_squares(frames: int, height: int, width: int) -> np.ndarray:
    """A (T, H, W, 3) uint8 clip: a red square moving right, a green one moving down."""
    video = np.full((frames, height, width, 3), 40, dtype=np.uint8)
    size = height // 5
    for t in range(frames):
        x = int(t / max(frames - 1, 1) * (width - size))
        y = int(t / max(frames - 1, 1) * (height - size))
        video[t, height // 4 : height // 4 + size, x : x + size] = (220, 30, 30)
        video[t, y : y + size, width // 2 : width // 2 + size] = (30, 200, 30)
    return video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", default="128x224")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    height, width = (int(v) for v in args.size.split("x"))
    torch.manual_seed(0)

    config = get_preset("tiny")
    model = build_proxyformer(config).eval()
    tokenizer = load_tokenizer(config)
    expressions = ["the red square moving right", "the green square moving down"]
    ids, mask = encode_texts(tokenizer, expressions)
    clip = torch.from_numpy(moving_squares(args.frames, height, width)).permute(0, 3, 1, 2)
    frames = model.normalize(clip)[None].expand(len(expressions), -1, -1, -1, -1)

    with torch.inference_mode():
        out = model(frames, ids, mask)
        timings = []
        for _ in range(args.runs + 2):
            start = time.perf_counter()
            model(frames, ids, mask)
            timings.append((time.perf_counter() - start) * 1000)
    timings = sorted(timings[2:])  # two warm-up runs
    log.info("tiny ProxyFormer (random weights until the trained checkpoint ships, issue #3)")
    for name, value in out.items():
        if torch.is_tensor(value):
            log.info("  %-16s %s", name, tuple(value.shape))
    scores = out["pred_logits"].sigmoid().mean(dim=1)  # (E, N): average over frames
    for expression, row in zip(expressions, scores):
        log.info("  %-32s best query %d, score %.3f", expression, int(row.argmax()), float(row.max()))
    log.info(
        "PyTorch eager, CPU, %d threads, %d expressions x %d frames at %dx%d: "
        "p50 %.1f ms, p90 %.1f ms (%d runs)",
        torch.get_num_threads(), len(expressions), args.frames, height, width,
        statistics.median(timings), timings[int(0.9 * (len(timings) - 1))], len(timings),
    )  # fmt: skip
    log.info("\n%s", format_table(summarize("tiny", args.frames, (height, width))))
    log.info(
        "\nStill to come (open issues): the trained tiny checkpoint (#3), ONNX export and "
        "TensorRT engines (#4), INT8 calibration (#5), the onnxruntime executor and latency "
        "benchmarks (#6)."
    )


if __name__ == "__main__":
    main()
