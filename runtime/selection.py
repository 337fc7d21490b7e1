"""The inference rule that turns a graph's outputs into one mask track per expression.

Per expression, each query's class probability is averaged over the frames and the query with
the highest mean wins (ties go to the lowest query index); its masks are the expression's
track. The runtime, INT8 calibration's agreement check, PyTorch evaluation
(``proxyformer.postprocess``) and stage-2 training's selection score all call
``select_queries``, so that a query chosen in one place is the query chosen in every other.
The probabilities are computed in float64: FP16 and INT8 graphs return logits whose float32
sigmoid can tie where float64 does not.
"""

from __future__ import annotations

import numpy as np


def select_queries(pred_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class logits (E, T, N) -> the chosen query per expression (E,) int64 and its score (E,),
    the frame-averaged probability, float64."""
    probabilities = query_scores(pred_logits)
    best = probabilities.argmax(axis=1)
    return best, probabilities[np.arange(len(best)), best]


def query_scores(pred_logits: np.ndarray) -> np.ndarray:
    """Class logits (E, T, N) -> each query's frame-averaged probability (E, N), float64."""
    logits = np.asarray(pred_logits)
    if logits.ndim != 3 or 0 in logits.shape:
        raise ValueError(f"pred_logits must be (E, T, N) with no empty axis, got {logits.shape}")
    return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).mean(axis=1)


def chosen_tracks(pred_masks: np.ndarray, best: np.ndarray) -> np.ndarray:
    """Mask logits (E, T, N, h, w) and chosen queries (E,) -> the chosen tracks (E, T, h, w)."""
    return pred_masks[np.arange(len(best)), :, best]
