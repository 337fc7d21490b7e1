"""Latency of one video call per backend: PyTorch eager vs ONNX Runtime vs OpenVINO vs TensorRT.

    python benchmarks/latency.py --bundle bundles/paper-swin-t --frames 19 \\
        --backends torch,ort,ort-fp16,ort-int8,ov,ov-bf16,ov-int8,trt-fp16,trt-int8
    python benchmarks/latency.py --bundle bundles/tiny --runs 20 --profile

One "call" is what serving one video costs: the text encoder on E expressions, then the video
graph on T frames, from uint8 frames ``[T, H, W, 3]`` and token ids to the graphs' raw outputs
(no post-processing). Text and video times are also reported apart.

The bundle fixes the preset and the frame size; its profiles bound T, E and L. The PyTorch
baseline is rebuilt from the manifest (the checkpoint, or the config with the recorded seed:
speed does not depend on the weights) and runs the same ``TextGraph`` + ``VideoGraph`` that were
exported, eager, under ``torch.inference_mode()``.

Backends (timed one after another, so ratios compare like with like; each in a child process of
its own, whose peak RSS is reported, unless ``--in-process``):

    torch         PyTorch eager FP32 (CUDA when available, else CPU; --torch-device)
    torch-model   PyTorch eager FP32, the model's own forward as trained, model(frames, ids,
                  mask), one video per expression (no text/video split)
    torch-bf16    the torch row, under BF16 autocast on a CPU (FP16 autocast on CUDA)
    torch-compile the torch row, torch.compile'd (compile time not timed, reported; skipped with
                  the reason where inductor cannot compile, e.g. no C++ compiler); by name only,
                  not in the default rows (compiling takes minutes)
    ort           onnxruntime CPU, fp32 graphs
    ort-fp16      onnxruntime CPU, fp16 graphs
    ort-int8      onnxruntime CPU, the int8-cpu Q/DQ video graph (text encoder fp32)
    ort-int8-trt  onnxruntime CPU, the int8-tensorrt Q/DQ video graph (added after ort-int8
                  when the bundle has it)
    ov            OpenVINO CPU, fp32 graphs at f32 (no compiled-model cache)
    ov-bf16       OpenVINO CPU, fp32 graphs executed in BF16 (CPUs with AVX512-BF16 or AMX;
                  held against the BF16 GEMM peak)
    ov-int8       OpenVINO CPU, the int8-cpu Q/DQ video graph (text encoder fp32)
    trt-fp32, trt-fp16, trt-int8   the native TensorRT engines (runtime.backends)

A backend that cannot run here, or whose precision variant or engine is missing from the
bundle, is listed as skipped with the reason.

Reported: warm-up, then ``--runs`` timed calls; mean, p50/p90/p99, min, max, std and spread
(p90 - p50) / p50; GFLOPs of one call (torch's FlopCounterMode on the eager graphs, 2 FLOPs per
multiply-accumulate) and the achieved GFLOP/s at p50; the fraction of this machine's measured
GEMM peak for the backend's arithmetic (FP32, BF16 for FP16 graphs on a CPU, FP16 on a GPU,
INT8); the speed-up over PyTorch eager FP32 and over the best PyTorch row of the run; the
time for E = 1, 2, 4 expressions on one video; the issue's targets with pass/fail and the paper's 109 ms (NVIDIA A40, a GPU) beside the device
measured here. ``--profile`` runs onnxruntime's profiler once per ORT row and OpenVINO's per-node
counters once per OpenVINO row, and tabulates the node time by operator type (for OpenVINO, the
layer type and the kernel that ran it).

Everything goes to ``benchmarks/results/<machine>/latency-<tag>.{json,md,png}``; the markdown is
printed. This script is the command line; the work is done by the ``benchmarks`` package
(``benchmarks.suite.run_benchmark`` and the modules it names).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from benchmarks.report import format_markdown
from benchmarks.runners import BACKENDS, DEFAULT_BACKENDS
from benchmarks.suite import run_benchmark
from proxyformer.summary import parse_size
from runtime.manifest import BundleError, Manifest


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,2,4, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True, help="an exported bundle (manifest.json)")
    parser.add_argument(
        "--backends",
        default=",".join(DEFAULT_BACKENDS),
        help=f"comma-separated rows from {', '.join(BACKENDS)}",
    )
    parser.add_argument(
        "--frames", type=int, default=None, help="T (default: the bundle's profile opt)"
    )
    parser.add_argument("--expressions", type=int, default=1, help="E of the main table")
    parser.add_argument(
        "--e-sweep",
        type=_int_list,
        default=[1, 2, 4],
        help="E values for the sweep (clipped to the bundle's profile)",
    )
    parser.add_argument("--text-length", type=int, default=20, help="L tokens per expression")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch, onnxruntime and OpenVINO threads (default: all cores)",
    )
    parser.add_argument("--torch-device", default="auto", help="auto, cpu or cuda[:i]")
    parser.add_argument("--gemm-size", type=int, default=2048, help="n of the CPU GEMM peaks")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the ORT and OpenVINO rows once; per-op-type node time tables",
    )
    parser.add_argument("--out", default=None, help="default: benchmarks/results/<machine>")
    parser.add_argument("--tag", default=None, help="file name tag (default from the setting)")
    parser.add_argument(
        "--preset", default=None, help="check that the bundle is this preset (the bundle decides)"
    )
    parser.add_argument(
        "--size",
        type=parse_size,
        default=None,
        help="check that the bundle's frame size is HxW (the bundle decides)",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="time every row in this process (faster to start; no per-row peak RSS, and rows "
        "inherit each other's memory)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")
    return args


def check_bundle(args: argparse.Namespace) -> None:
    """Stop with a message when --preset or --size disagree with the bundle (it decides both)."""
    try:
        manifest = Manifest.load(args.bundle)
    except BundleError as error:
        raise SystemExit(f"error: {error}") from None
    preset = manifest.data["model"].get("name")
    if args.preset is not None and args.preset != preset:
        raise SystemExit(f"--preset {args.preset}: the bundle {args.bundle} is preset {preset}")
    if args.size is not None and list(args.size) != list(manifest.preprocessing["size"]):
        raise SystemExit(
            f"--size {args.size[0]}x{args.size[1]}: the bundle {args.bundle} is "
            f"{'x'.join(str(s) for s in manifest.preprocessing['size'])} (export another bundle)"
        )


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark from the command line; print the markdown report."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    check_bundle(args)
    try:
        results = run_benchmark(
            args.bundle,
            args.backends.split(","),
            frames=args.frames,
            expressions=args.expressions,
            e_sweep=args.e_sweep,
            text_length=args.text_length,
            warmup=args.warmup,
            runs=args.runs,
            threads=args.threads,
            torch_device=args.torch_device,
            profile=args.profile,
            gemm_size=args.gemm_size,
            out_dir=args.out,
            tag=args.tag,
            command=shlex.join(["python", "benchmarks/latency.py", *(argv or sys.argv[1:])]),
            isolate=not args.in_process,
        )
    except (ValueError, BundleError) as error:
        raise SystemExit(f"error: {error}") from None
    print(format_markdown(results))
    print(f"written: {', '.join(results['files'].values())}")
    return results


if __name__ == "__main__":
    main()
