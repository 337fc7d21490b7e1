"""A bundle's precision variants compared through Polygraphy: its onnxruntime runner runs the
reference graph (FP32) and the others (FP16, INT8 Q/DQ) on the same realistic feeds
(``export.polygraphy_data``), and its Comparator judges them.

    report = compare_variants("bundles/tiny", "video", candidates={"fp16": FP16_TOLERANCE})

The verdict is the export's parity rule (``export.parity``: an output passes when the max, or
a quantile, of ``|a - b|`` is at most ``atol + rtol * max|reference|``), expressed as
Polygraphy's ``SimpleCompareFunc`` (:func:`compare_func`): per output an absolute tolerance of
``atol + rtol * max|reference|`` and no relative one, on the "max" or "quantile" error
statistic. Polygraphy's own relative tolerance divides each element's error by that element's
reference value, which for mask logits near 0 flags rounding as failure; the parity rule's
scale is the output's range instead.

Needs ``polygraphy`` and ``onnxruntime`` (the export extra).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from export.parity import Tolerance
from export.polygraphy_data import iter_feeds
from runtime.backends.base import as_manifest
from runtime.manifest import Manifest

log = logging.getLogger(__name__)


def compare_func(
    tolerance: Tolerance | Mapping[str, Tolerance], reference: Mapping[str, np.ndarray]
):
    """The parity rule for outputs like ``reference`` as Polygraphy's ``SimpleCompareFunc``:
    per output ``atol + rtol * max|reference|`` as its absolute tolerance, relative tolerance 0,
    on the max (``quantile`` 1) or the quantile of ``|error|``. ``tolerance`` is one rule for
    every output or one per output name."""
    from polygraphy.comparator.compare import SimpleCompareFunc

    rules = {name: _rule(tolerance, name) for name in reference}
    atol, stat, quantile = {}, {}, {}
    for name, value in reference.items():
        rule = rules[name]
        scale = float(np.abs(value).max()) if value.size else 0.0
        atol[name] = rule.atol + rule.rtol * scale
        stat[name] = "max" if rule.quantile == 1.0 else "quantile"
        quantile[name] = rule.quantile
    return SimpleCompareFunc(
        atol=atol, rtol=0.0, check_error_stat=stat, error_quantile=quantile
    )


def _rule(tolerance: Tolerance | Mapping[str, Tolerance], name: str) -> Tolerance:
    if isinstance(tolerance, Tolerance):
        return tolerance
    if name not in tolerance:
        raise ValueError(f"no tolerance for output {name!r} (given: {sorted(tolerance)})")
    return tolerance[name]


def _runner(manifest: Manifest, graph: str, precision: str):
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    path = manifest.variant_path(graph, precision)
    return OnnxrtRunner(SessionFromOnnx(str(path), providers=["cpu"]), name=precision)


def compare_variants(
    bundle: str | Path | Manifest,
    graph: str,
    candidates: Mapping[str, Tolerance | Mapping[str, Tolerance]],
    reference: str = "fp32",
    sizes: Mapping[str, int] | None = None,
    iterations: int = 2,
    seed: int = 0,
) -> dict[str, dict]:
    """Run ``reference`` and each candidate variant of ``graph`` in Polygraphy's onnxruntime
    runner on ``iterations`` synthetic clips and judge each candidate with its tolerance.

    Args:
        bundle: the bundle directory or its manifest.
        graph: "video" or "text_encoder".
        candidates: precision variant -> the tolerance it is held to (one for every output,
            or one per output name).
        reference: the variant the others are compared with.
        sizes: T, E, L of the feeds (each left out: the profile's "opt").
        iterations: how many clips (feeds) each variant runs.
        seed: the first clip's seed.

    Returns:
        candidate -> {"passed": bool, "tolerance": rule, "outputs": {name: {"atol": the
        absolute tolerance, "max_abs_error": over all iterations, "passed": bool}}}.

    Raises:
        BundleError: a variant the bundle does not have (before anything runs).
    """
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    manifest = as_manifest(bundle, verify=False)
    for precision in (reference, *candidates):
        manifest.variant_path(graph, precision)  # a missing variant fails here, named
    feeds = list(iter_feeds(manifest, graph, sizes, iterations, seed))
    runners = [_runner(manifest, graph, reference)]
    runners += [_runner(manifest, graph, precision) for precision in candidates]
    with G_LOGGER.verbosity(G_LOGGER.WARNING):  # Polygraphy prints every statistic at INFO
        results = Comparator.run(runners, data_loader=feeds)
    reference_runs = results[0][1]
    largest = {
        name: np.stack([np.abs(np.asarray(run[name])).max() for run in reference_runs]).max()
        for name in reference_runs[0]
    }
    report = {}
    for index, (precision, tolerance) in enumerate(candidates.items(), start=1):
        func = compare_func(tolerance, {name: np.asarray(value) for name, value in largest.items()})
        with G_LOGGER.verbosity(G_LOGGER.WARNING):
            accuracy = Comparator.compare_accuracy(
                results, comparisons=[(index, 0)], compare_func=func
            )
        outputs = {}
        for name in largest:
            errors = np.concatenate([
                np.abs(np.asarray(got[name], np.float64) - np.asarray(ref[name])).ravel()
                for got, ref in zip(results[index][1], reference_runs, strict=True)
            ])  # fmt: skip
            rule = _rule(tolerance, name)
            outputs[name] = {"atol": func.atol[name], "max_abs_error": float(errors.max())}
            if rule.quantile < 1.0:  # over all iterations (Polygraphy judges each)
                outputs[name]["quantile_abs_error"] = rule.error(errors)
        verdicts = _per_output_verdicts(accuracy)
        for name, entry in outputs.items():
            entry["passed"] = verdicts.get(name, False)
        rules = (
            tolerance.to_dict()
            if isinstance(tolerance, Tolerance)
            else {name: rule.to_dict() for name, rule in tolerance.items()}
        )
        report[precision] = {"passed": bool(accuracy), "tolerance": rules, "outputs": outputs}
        log.info(
            "polygraphy %s %s vs %s: %s", graph, precision, reference,
            "passed" if accuracy else "FAILED",
        )  # fmt: skip
    return report


def _per_output_verdicts(accuracy) -> dict[str, bool]:
    """Output name -> passed in every iteration, from Polygraphy's ``AccuracyResults``."""
    verdicts: dict[str, bool] = {}
    for result in accuracy:
        for iterations in result.values():
            for iteration in iterations:
                for name, outcome in iteration.items():
                    verdicts[name] = verdicts.get(name, True) and bool(outcome)
    return verdicts
