"""``calibrate_bundle``: calibration samples -> INT8 variants of ``video.onnx`` in the bundle
(and of its split parts, where the bundle has them), each with its agreement against FP32 on
held-out clips; and the per-node sensitivity pass.

Agreement is measured the way a user sees the output: for every held-out clip and expression
the FP32 and INT8 graphs each pick their query (``runtime.selection``) and threshold its mask; the
IoU of the two mask tracks, averaged, is the figure (plus how often the same query wins and
the largest mask-logit difference). J&F against the ground truth is ``benchmarks/accuracy.py``.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from runtime.allocator import trim_heap
from runtime.backends import AVAILABLE, load_backend, openvino_status
from runtime.child import ChildDied, max_rss_mb, run_in_child
from runtime.manifest import SPLIT_GRAPHS, Manifest, atomic_write_text
from runtime.precisions import INT8_TENSORRT, precision_name
from runtime.selection import chosen_tracks, select_queries

from .data import CalibrationSet, build_calibration_set
from .quantize import (
    TARGETS,
    check_range_backend,
    class_path_nodes,
    qdq_summary,
    quantize_video,
    quantized_nodes,
    range_cache,
)

log = logging.getLogger(__name__)


def select(logits: np.ndarray, mask_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best query per expression (``runtime.selection``) and its stride-4 mask logits:
    (E,), (E, T, h, w)."""
    best, _ = select_queries(logits)
    return best, chosen_tracks(mask_logits, best)


def agreement(
    reference: dict[str, np.ndarray] | list, candidate: list, samples: list | None = None
) -> dict:
    """Mask-track IoU (stride-4 masks of each graph's chosen query), same-query rate and the
    largest mask-logit error, between lists of ``{pred_logits, pred_masks}`` outputs."""
    ious, same, errors = [], [], []
    for ref, got in zip(reference, candidate):
        ref_best, ref_masks = select(ref["pred_logits"], ref["pred_masks"])
        got_best, got_masks = select(got["pred_logits"], got["pred_masks"])
        for a, b in zip(ref_masks > 0, got_masks > 0):
            union = np.logical_or(a, b).sum()
            ious.append(np.logical_and(a, b).sum() / union if union else 1.0)
        same.extend((ref_best == got_best).tolist())
        errors.append(float(np.abs(ref["pred_masks"] - got["pred_masks"]).max()))
    return {
        "mask_iou": float(np.mean(ious)),
        "same_query": float(np.mean(same)),
        "max_mask_logit_error": float(max(errors)),
        "tracks": len(ious),
    }


def run_graph(backend, samples: list[dict]) -> list[dict]:
    return [backend.infer(sample) for sample in samples]


KEPT = ("pred_logits", "pred_masks")  # the outputs the agreement reads


def outputs_child(connection: Any, bundle: str, clips: str, runtime: str, precision: str,
                  threads: int | None, out: str, split: bool = False) -> None:  # fmt: skip
    """The body of a child process (``runtime.child.run_in_child``) that runs the bundle's
    video graph of ``runtime`` at ``precision`` on every clip saved in ``clips``
    (``CalibrationSet.save``), saves the outputs the agreement reads to ``out`` (npz) and sends
    what the run cost (load and per-clip seconds, peak RSS, the backends), or why it could not
    run. onnxruntime runs without its CPU arena (an arena keeps its peak).

    ``split`` runs the split video graph one part at a time: the encoder on every clip (its
    levels go to disk beside ``out``), closed, then the decoder. With both parts loaded at
    once, OpenVINO held the encoder's buffers while the decoder ran: paper-swin-t's INT8 check
    peaked at 10.73 GiB, against 6.18 GiB for the one video graph; one part at a time, at
    5.98 GiB."""
    staged = Path(out).parent / f"{Path(out).stem}-levels"
    try:
        manifest = Manifest.load(bundle)
        held_out = CalibrationSet.load(clips, manifest)
        options = {"cpu_arena": False} if runtime == "onnxruntime" else {}
        graphs = SPLIT_GRAPHS if split else ("video",)
        load_s, names, arrays = 0.0, [], {}
        seconds = [0.0] * len(held_out)
        if split:
            staged.mkdir(exist_ok=True)
        for phase, graph in enumerate(graphs):
            started = time.perf_counter()
            backend = load_backend(manifest, graph, runtime, precision, threads=threads,
                                   **options)  # fmt: skip
            load_s += time.perf_counter() - started
            names.append(backend.name)
            for index, sample in enumerate(held_out.samples):
                feeds = {name: sample[name] for name in backend.input_names if name in sample}
                if phase:  # the previous part's outputs
                    with np.load(staged / f"{index}.npz") as previous:
                        feeds |= {name: previous[name] for name in previous.files}
                started = time.perf_counter()
                outputs = backend.infer(feeds)
                seconds[index] += time.perf_counter() - started
                if phase == len(graphs) - 1:
                    arrays |= {f"{key}_{index}": outputs[key] for key in KEPT}
                else:
                    np.savez(staged / f"{index}.npz", **outputs)
                del feeds, outputs
            backend.close()
            del backend
            trim_heap()
        np.savez(out, **arrays)
        connection.send({"status": "ran", "load_s": round(load_s, 1),
                         "seconds_per_clip": [round(s, 2) for s in seconds],
                         "peak_rss_mb": max_rss_mb(), "backend_name": " + ".join(names)})  # fmt: skip
    except Exception as error:  # noqa: BLE001 - the reason is the run's result
        connection.send({"status": "failed", "reason": f"{type(error).__name__}: {error}"})
    finally:
        shutil.rmtree(staged, ignore_errors=True)
        connection.close()


def read_outputs(path: str | Path, clips: int) -> list[dict[str, np.ndarray]]:
    """What ``outputs_child`` saved: one ``{pred_logits, pred_masks}`` per clip."""
    with np.load(path) as data:
        return [{key: data[f"{key}_{i}"] for key in KEPT} for i in range(clips)]


def outputs_in_child(bundle: Path, clips: Path, runtime: str, precision: str,
                     threads: int | None, out: Path,
                     split: bool = False) -> list[dict[str, np.ndarray]]:  # fmt: skip
    """``outputs_child`` in a fresh process; its outputs, or RuntimeError naming why not."""
    what = f"the {runtime} {precision} {'split ' if split else ''}video graph on {clips}"
    try:
        result = run_in_child(outputs_child, (str(bundle), str(clips), runtime, precision,
                                              threads, str(out), split),
                              f"check-{precision}")  # fmt: skip
    except ChildDied as error:
        raise RuntimeError(f"{what}: {error}") from None
    if result["status"] != "ran":
        raise RuntimeError(f"{what}: {result['reason']}")
    log.info("%s ran in %s s a clip, peak RSS %.0f MiB in its process",
             what, result["seconds_per_clip"], result["peak_rss_mb"])  # fmt: skip
    return read_outputs(out, len(result["seconds_per_clip"]))


def calibrate_bundle(
    bundle: str | Path,
    data: str | Path,
    targets: tuple[str, ...] = TARGETS,
    method: str = "entropy",
    samples: int = 64,
    split: str = "train",
    seed: int = 0,
    check_split: str = "valid",
    check_samples: int = 8,
    exclude: list[str] | None = None,
    cpu_format: str = "qdq",
    threads: int | None = None,
    recalibrate: bool = False,
    frames: int | None = None,
    quantize_class_path: bool = False,
    range_backend: str = "calibrator",
    range_pieces: int = 1,
) -> Manifest:
    """Calibrate on ``samples`` clips of ``split`` and write one INT8 variant per target, of
    the video graph and, where the bundle has the split video graph, of its two parts (from
    the video graph's ranges, ``calibration.correspond``: no second calibration). A part's
    ``float_nodes`` are named as in the video graph.

    ``exclude`` names nodes left in float besides the class path, which stays float unless
    ``quantize_class_path`` (``calibration.quantize.class_path_nodes``).

    The samples are cached in ``bundle/calibration/`` (reused when the split, seed and count
    match) and so are the tensor ranges of each method; ``recalibrate`` rebuilds both.
    ``range_backend`` "onnxruntime" or "openvino" computes MinMax ranges in bounded memory
    (``calibration.ranges``); "calibrator" is onnxruntime's calibrator.

    ``range_pieces`` cuts the video graph into that many pieces for the bounded backend
    (``calibration.ranges``).

    The agreement with FP32 on ``check_samples`` held-out clips runs each graph in a child
    process of its own (``_check_agreement``): onnxruntime without its CPU memory arena (an
    arena keeps its peak, near 21 GB for paper-swin-t at 360x640 and 19 frames), or, on the
    bounded path (``range_backend`` not "calibrator") with OpenVINO installed and every target
    one it runs (int8-cpu), OpenVINO at f32. ``check_samples`` 0 skips it.
    """
    targets = tuple(precision_name(target, TARGETS, "calibration target") for target in targets)
    _check_counts(1, samples=samples, frames=frames)
    _check_counts(0, check_samples=check_samples)
    check_range_backend(range_backend, method)
    manifest = Manifest.load(bundle)
    calibration = _calibration_samples(
        manifest, data, split, samples, seed, recalibrate, method, frames
    )
    calibration_info = {
        "method": method, "samples": len(calibration), "split": split, "seed": seed,
        "data": str(data), "videos": calibration.info.get("videos", []),
        "ranges": f"calibration/{range_cache(manifest, method).name}",
        "range_backend": range_backend, "range_pieces": range_pieces,
    }  # fmt: skip
    # Quantize every target first (the ranges once), then check them: the two phases' memory
    # does not stack (OpenVINO's FP32 reference left 5.5 GB resident at the paper size, under
    # which the ranges then peaked at 12.8 GB).
    graphs = ("video", *SPLIT_GRAPHS) if manifest.split_precisions() else ("video",)
    made = {}
    for target in targets:
        for graph in graphs:  # the video graph first: the parts read its ranges
            started = time.perf_counter()
            path = quantize_video(manifest, calibration, target, method, exclude,
                                  cpu_format=cpu_format, class_path=quantize_class_path,
                                  range_backend=range_backend, threads=threads,
                                  range_pieces=range_pieces, graph=graph)  # fmt: skip
            calibration = None  # the ranges are cached now; what follows reuses them
            made[graph, target] = (path, round(time.perf_counter() - started, 1))
            manifest.add_variant(graph, target, {"file": path.name, "external_data": []})
            manifest.add_file(path.name, "onnx graph")
    manifest.save()  # the check's processes load the INT8 variants from the bundle
    trim_heap()
    results = _check_agreement(manifest, data, check_split, check_samples, seed, frames,
                               targets, range_backend, threads, split_graph=len(graphs) > 1)  # fmt: skip
    for (graph, target), (path, seconds) in made.items():
        fp32_path = manifest.variant_path(graph, "fp32")
        info = calibration_info
        if graph != "video":
            ranges = range_cache(manifest, method, graph).name
            info = calibration_info | {"ranges": f"calibration/{ranges}", "ranges_from": "video"}
        class_path = [] if quantize_class_path or graph == SPLIT_GRAPHS[0] else class_path_nodes(
            fp32_path)  # fmt: skip
        entry = {
            "file": path.name,
            "external_data": [],
            "target": target,
            "format": "qdq" if target == INT8_TENSORRT or cpu_format == "qdq" else "qoperator",
            "calibration": info,
            "float_nodes": list(exclude or []),
            "class_path_float": class_path,
            "quantization": qdq_summary(path),
            "agreement_vs_fp32": results.get((graph != "video", target)),
            "seconds": seconds,
        }  # fmt: skip
        manifest.add_variant(graph, target, entry)
    _refresh_tensorrt_report(manifest)
    manifest.save()
    return manifest


def _check_agreement(manifest: Manifest, data, split: str, clips: int, seed: int,
                     frames: int | None, targets: tuple[str, ...], range_backend: str,
                     threads: int | None, split_graph: bool = False) -> dict[tuple, dict]:  # fmt: skip
    """Each target's agreement with FP32 on ``clips`` held-out clips of ``split`` (seed + 1000),
    every graph in a child process of its own (``outputs_in_child``), so that neither the
    calibration's leftovers nor one graph's memory stacks under the next: at the paper size the
    check in the calibrating process had peaked at 11.9 GiB; in its own processes, 6.05 GiB
    (the OpenVINO INT8 graph). ``clips`` 0
    skips the check (an empty result; the manifest then records no agreement).

    Keyed by (split, target): ``split_graph`` also checks each target's split graph (encoder,
    then decoder) against the same FP32 outputs, as (True, target).

    The bounded path checks in OpenVINO where it can (its FP32 graph peaks at 4.7 GB at the
    paper size against onnxruntime's 9.7); onnxruntime runs the symmetric target right.
    """
    if not clips:
        log.warning("the INT8 graphs were not checked against FP32 (no held-out clips asked for)")
        return {}
    bounded = range_backend != "calibrator" and openvino_status() == AVAILABLE
    engine = "openvino" if bounded and INT8_TENSORRT not in targets else "onnxruntime"
    results = {}
    with tempfile.TemporaryDirectory(prefix="proxyformer-check-") as folder:
        work = Path(folder)
        held_out = build_calibration_set(manifest, data, split, clips, seed + 1000, frames)
        held_out.save(work / "clips")
        del held_out
        reference = outputs_in_child(manifest.root, work / "clips", engine, "fp32", threads,
                                     work / "fp32.npz")  # fmt: skip
        for target, parts in itertools.product(targets, (False, True) if split_graph else (False,)):
            started = time.perf_counter()
            outputs = outputs_in_child(manifest.root, work / "clips", engine, target, threads,
                                       work / f"{target}.npz", parts)  # fmt: skip
            result = agreement(reference, outputs)
            graphs = list(SPLIT_GRAPHS) if parts else ["video"]
            results[parts, target] = result | {
                "split": split, "clips": len(reference), "engine": engine, "graphs": graphs,
                "seconds": round(time.perf_counter() - started, 1),
            }  # fmt: skip
            log.info(
                "%s %s: mask IoU vs FP32 %.4f, same query %.3f on %d held-out tracks (%s)",
                target, " + ".join(graphs), result["mask_iou"], result["same_query"],
                result["tracks"], engine,
            )  # fmt: skip
    return results


def _check_counts(minimum: int, **counts: int | None) -> None:
    """Refuse a count below ``minimum`` before the bundle, the data or a graph is read
    (``None`` is a default left to the bundle, e.g. the profile's frames)."""
    for name, value in counts.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an int of at least {minimum}, got {value!r}")


def _calibration_samples(
    manifest, data, split, samples, seed, recalibrate, method, frames=None
) -> CalibrationSet:
    directory = manifest.root / "calibration" / "samples"
    info_path = directory / "calibration.json"
    if info_path.is_file() and not recalibrate:
        info = json.loads(info_path.read_text())
        wanted = {"split": split, "seed": seed, "data": str(data)}
        if frames is not None:
            wanted["frames_per_clip"] = frames
        if (
            all(info.get(k) == v for k, v in wanted.items())
            and info["samples"] == min(samples, info["samples"])
            and info.get("requested") == samples
        ):
            log.info("reusing %d calibration samples in %s", info["samples"], directory)
            return CalibrationSet.load(directory, manifest)
    calibration = build_calibration_set(manifest, data, split, samples, seed, frames)
    calibration.info["requested"] = samples
    calibration.save(directory)
    range_cache(manifest, method).unlink(missing_ok=True)  # new samples, new ranges
    for other in (manifest.root / "calibration").glob("ranges-*.json"):
        other.unlink()
    del calibration
    return CalibrationSet.load(directory, manifest)  # read back one clip at a time


def _refresh_tensorrt_report(manifest: Manifest) -> None:
    import onnx

    from export.tensorrt_ops import tensorrt_report

    graphs = {
        f"{name}.{precision}": onnx.load(str(manifest.path(v["file"])), load_external_data=False)
        for name, graph in manifest.data["graphs"].items()
        for precision, v in graph["variants"].items()
        if precision != "int8-cpu"  # ONNX Runtime's CPU form is not meant for TensorRT
    }
    report = tensorrt_report(graphs)
    atomic_write_text(manifest.root / "tensorrt_report.json", json.dumps(report, indent=2) + "\n")
    manifest.add_file("tensorrt_report.json", "tensorrt compatibility report")
    manifest.data["tensorrt_compatibility"] = {
        "ok": report["ok"], "problems": report["problems"], "file": "tensorrt_report.json",
    }  # fmt: skip
    if not report["ok"]:
        log.warning("TensorRT compatibility problems: %s", "; ".join(report["problems"]))


def sensitivity(
    bundle: str | Path,
    target: str = INT8_TENSORRT,
    method: str = "entropy",
    data: str | Path | None = None,
    check_split: str = "valid",
    check_samples: int = 4,
    seed: int = 0,
    threads: int | None = None,
    max_nodes: int | None = None,
) -> list[dict]:
    """Per quantized node, the agreement when that node alone stays in float; best first.

    ``max_nodes`` limits the pass to the first nodes in graph order (a quick look; one
    re-quantization and ``check_samples`` inferences per node).

    Uses the cached ranges (run ``calibrate_bundle`` first). Written to
    ``bundle/calibration/sensitivity-<target>.json``; apply the top K with
    ``calibrate.py --keep-float K``.
    """
    target = precision_name(target, TARGETS, "calibration target")
    manifest = Manifest.load(bundle)
    if data is None:
        data = json.loads(
            (manifest.root / "calibration" / "samples" / "calibration.json").read_text()
        )["data"]
    held_out = build_calibration_set(manifest, data, check_split, check_samples, seed + 1000)
    reference = run_graph(load_backend(manifest, "video", "onnxruntime", "fp32", threads=threads),
                          held_out.samples)  # fmt: skip
    candidates = quantized_nodes(manifest.variant_path("video", target))
    # as the variant was made: class path in float unless it was quantized too
    class_path = not manifest.variant("video", target).get("class_path_float")
    candidates = candidates[:max_nodes] if max_nodes else candidates
    scratch = manifest.root / "calibration" / "sensitivity.onnx"
    rows = []
    import onnxruntime as ort

    for node in tqdm(candidates, desc="sensitivity", unit="node"):
        quantize_video(manifest, None, target, method, [node], output=scratch,
                       class_path=class_path)  # fmt: skip
        session = ort.InferenceSession(str(scratch), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        outputs = [dict(zip(names, session.run(names, s))) for s in held_out.samples]
        error = float(np.mean([np.mean((o["pred_masks"] - r["pred_masks"]) ** 2)
                               for o, r in zip(outputs, reference)]))  # fmt: skip
        rows.append({"node": node, "mask_logit_mse": error} | agreement(reference, outputs))
    scratch.unlink(missing_ok=True)
    rows.sort(key=lambda r: (-r["mask_iou"], r["mask_logit_mse"]))
    out = manifest.root / "calibration" / f"sensitivity-{target}.json"
    atomic_write_text(out, json.dumps(rows, indent=2) + "\n")
    log.info("sensitivity of %d nodes written to %s", len(rows), out)
    return rows


def float_nodes_from_sensitivity(bundle: str | Path, target: str, count: int) -> list[str]:
    target = precision_name(target, TARGETS, "calibration target")
    path = Path(bundle) / "calibration" / f"sensitivity-{target}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run calibrate.py --sensitivity first")
    return [row["node"] for row in json.loads(path.read_text())[:count]]
