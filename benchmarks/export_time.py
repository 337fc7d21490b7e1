"""How long an export takes, stage by stage, and its peak memory.

    python benchmarks/export_time.py --preset paper-swin-t --size 360x640 --frames 9:19:36 \\
        --precision fp32 fp16

Runs ``export.onnx_export.export_bundle`` (parity on, as a user exports) into a temporary
directory, or into ``--keep DIR``, and writes the seconds of every stage (the manifest's
``export_seconds``), the process's peak RSS (``VmHWM``), the graphs' node counts and the
machine to ``benchmarks/results/<machine>/export-<tag>.{json,md}``. The markdown is printed.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

from benchmarks.machine import cpu_line, machine_info, run_record
from benchmarks.report import fmt, save_results
from proxyformer.summary import parse_size
from runtime.child import max_rss_mb


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint directory")
    source.add_argument("--preset", help="a preset with random weights")
    parser.add_argument("--size", type=parse_size, default=(360, 640), help="HxW")
    parser.add_argument("--frames", default="9:19:36", help="MIN:OPT:MAX")
    parser.add_argument("--expressions", default="1:1:8", help="MIN:OPT:MAX")
    parser.add_argument("--precision", nargs="+", default=["fp32", "fp16"],
                        choices=("fp32", "fp16"))  # fmt: skip
    parser.add_argument("--keep", default=None, help="write the bundle here (else a temp dir)")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/<machine>")
    parser.add_argument("--tag", default=None, help="default: <preset>-<H>x<W>")
    return parser.parse_args(argv)


def format_markdown(results: dict) -> str:
    """The stage table of one export."""
    machine, setting = results["machine"], results["setting"]
    total = results["seconds"]["total"]
    lines = [
        (
            f"# Export time — {setting['source']}, {setting['size']}, frames {setting['frames']}, "
            f"{' + '.join(setting['precisions']).upper()} with parity"
        ),
        "",
        (
            f"{cpu_line(machine)}. Peak RSS "
            f"{fmt(results['peak_rss_mb'] / 1024)} GB. Total {total:.0f} s ({total / 60:.1f} min)."
        ),
        "",
        "| stage | s | % |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| {stage} | {seconds:.1f} | {100 * seconds / total:.0f} |"
        for stage, seconds in results["seconds"].items()
        if stage != "total"
    ]
    lines += [
        f"| **total** | **{total:.1f}** | |",
        "",
        "Graph nodes: " + ", ".join(f"{k} {v}" for k, v in results["nodes"].items()) + ".",
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("onnxscript", "onnx_ir", "onnxslim"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from export.onnx_export import export_bundle

    scratch = None
    if args.keep is None:
        scratch = Path(tempfile.mkdtemp(prefix="proxyformer-export-time-"))
    target = Path(args.keep) if args.keep else scratch / "bundle"
    height, width = args.size
    try:
        manifest = export_bundle(
            args.checkpoint, target, preset=args.preset, size=args.size, frames=args.frames,
            expressions=args.expressions, precisions=tuple(dict.fromkeys(["fp32", *args.precision])),
        )  # fmt: skip
        graphs = manifest.data["graphs"]
        nodes = {
            f"{name}.{precision}": variant["nodes"]
            for name, graph in graphs.items()
            for precision, variant in graph["variants"].items()
        }
        seconds = manifest.data["export_seconds"]
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    machine = machine_info("cpu")
    source = args.preset or args.checkpoint
    results = {
        **run_record("benchmarks/export_time.py", argv, machine),
        "setting": {
            "source": source,
            "size": f"{height}x{width}",
            "frames": args.frames,
            "expressions": args.expressions,
            "precisions": list(dict.fromkeys(["fp32", *args.precision])),
        },
        "seconds": seconds,
        "peak_rss_mb": max_rss_mb(),
        "nodes": nodes,
    }
    tag = args.tag or f"{Path(source).name}-{height}x{width}"
    save_results(results, args.out, f"export-{tag}", format_markdown(results))
    return results


if __name__ == "__main__":
    main()
