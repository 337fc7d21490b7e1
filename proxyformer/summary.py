"""Parameters and compute per component of a ProxyFormer preset.

    python -m proxyformer.summary --preset paper-swin-t --frames 19 --size 360x640
    python -m proxyformer.summary --preset paper-swin-t --set cmie.mode=full   # CMIE* (Table VIII d)

Compute is counted by ``torch.utils.flop_counter.FlopCounterMode`` on one real forward pass
(batch 1, one expression): it counts matrix multiplications, convolutions and attention, two
FLOPs per multiply-accumulate. Attention is counted from its operand shapes whichever kernel
torch runs it with (``proxyformer.flops``), so the total is the same on every torch release.
Papers in this field (fvcore, as ReferFormer and ProxyFormer report) count one per
multiply-accumulate, so the GMAC column is the one to hold next to the paper's "1341.6G FLOPs".
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import torch

from .config import PRESETS, get_preset
from .flops import flop_counter
from .model import build_proxyformer

COMPONENTS = (
    "backbone", "input_proj", "text_encoder", "text_fusion", "cmie", "fpn", "decoder", "heads", "jsc",
)


def parse_size(text: str) -> tuple[int, int]:
    """``"360x640"`` -> (360, 640)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 360x640, got {text!r}") from None
    if height < 32 or width < 32:
        raise argparse.ArgumentTypeError(f"size must be at least 32x32, got {text!r}")
    return height, width


def parse_override(text: str) -> tuple[str, object]:
    """``"cmie.mode=full"`` -> ("cmie.mode", "full"); values are read as JSON when they parse."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set needs KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def summarize(
    preset: str,
    frames: int = 19,
    size: tuple[int, int] = (360, 640),
    text_length: int = 20,
    overrides: dict | None = None,
) -> dict:
    """Parameters (total and trainable) and GFLOPs/GMACs of each top-level component."""
    config = get_preset(preset, **(overrides or {}))
    model = build_proxyformer(config).eval()
    params = {}
    for name in COMPONENTS:
        module = getattr(model, name) or torch.nn.Module()  # text_fusion is None when off
        params[name] = (
            sum(p.numel() for p in module.parameters()),
            sum(p.numel() for p in module.parameters() if p.requires_grad),
        )
    direct = [p for p in model.parameters(recurse=False)]  # level embeddings
    params["other"] = (sum(p.numel() for p in direct), sum(p.numel() for p in direct if p.requires_grad))
    model.requires_grad_(False)  # FlopCounterMode's module tracker wants no autograd graph
    video = torch.randn(1, frames, 3, *size)
    ids = torch.randint(5, 500, (1, text_length))
    ids[:, 0], ids[:, -1] = 0, 2  # <s> ... </s>
    mask = torch.ones_like(ids)
    start = time.perf_counter()
    with flop_counter(depth=2) as counter:
        model(video, ids, mask)
    seconds = time.perf_counter() - start
    counts = counter.get_flop_counts()
    flops = {name: _component_flops(counts, f"ProxyFormer.{name}") for name in COMPONENTS}
    total = counter.get_total_flops()
    flops["other"] = total - sum(flops.values())
    rows = []
    for name in (*COMPONENTS, "other"):
        total_p, trainable_p = params.get(name, (0, 0))
        rows.append(
            {
                "component": name,
                "params_m": total_p / 1e6,
                "trainable_m": trainable_p / 1e6,
                "gflops": flops[name] / 1e9,
                "gmacs": flops[name] / 2e9,
            }
        )
    return {
        "preset": preset,
        "overrides": overrides or {},
        "frames": frames,
        "size": list(size),
        "text_length": text_length,
        "rows": rows,
        "total_params_m": model.num_parameters() / 1e6,
        "total_gflops": total / 1e9,
        "total_gmacs": total / 2e9,
        "cpu_seconds": seconds,
    }


def _component_flops(counts: dict, name: str) -> int:
    """FLOPs of a module; a ModuleList is never called itself, so sum its items instead."""
    if name in counts:
        return sum(counts[name].values())
    items = [key for key in counts if key.startswith(name + ".") and key[len(name) + 1 :].isdigit()]
    return sum(sum(counts[key].values()) for key in items)


def format_table(summary: dict) -> str:
    header = (
        f"{summary['preset']} {summary['overrides'] or ''} — {summary['frames']} frames at "
        f"{summary['size'][0]}x{summary['size'][1]}, text length {summary['text_length']}"
    )
    lines = [
        header,
        "",
        "| component | params (M) | trainable (M) | GFLOPs | GMACs |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in summary["rows"]:
        lines.append(
            f"| {row['component']} | {row['params_m']:.2f} | {row['trainable_m']:.2f} "
            f"| {row['gflops']:.1f} | {row['gmacs']:.1f} |"
        )
    lines.append(
        f"| **total** | **{summary['total_params_m']:.2f}** | "
        f"**{sum(r['trainable_m'] for r in summary['rows']):.2f}** | "
        f"**{summary['total_gflops']:.1f}** | **{summary['total_gmacs']:.1f}** |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="paper-swin-t", choices=sorted(PRESETS))
    parser.add_argument("--frames", type=int, default=19)
    parser.add_argument("--size", type=parse_size, default=(360, 640), help="HxW, e.g. 360x640")
    parser.add_argument("--text-length", type=int, default=20, help="tokens in the expression")
    parser.add_argument(
        "--set", dest="overrides", type=parse_override, action="append", default=[],
        metavar="KEY=VALUE", help="change a config field, e.g. cmie.mode=full or cmie.use_p2v=false",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error(f"--frames must be >= 1, got {args.frames}")
    logging.basicConfig(level=logging.WARNING)
    summary = summarize(
        args.preset, args.frames, args.size, args.text_length, dict(args.overrides)
    )
    print(json.dumps(summary, indent=2) if args.json else format_table(summary))


if __name__ == "__main__":
    main()
