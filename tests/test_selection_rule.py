"""One query-selection rule (``runtime.selection``) behind PyTorch evaluation, calibration and
the runtime: the three pick the same query and score on the same outputs, ties included."""

import numpy as np
import pytest
import torch

from calibration.int8 import select as calibration_select
from proxyformer.postprocess import select_masks
from runtime.selection import chosen_tracks, select_queries


def outputs(seed: int, expressions=3, frames=4, queries=5, size=(6, 8)):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(expressions, frames, queries)).astype(np.float32)
    masks = rng.normal(size=(expressions, frames, queries, *size)).astype(np.float32)
    return logits, masks


def test_select_queries_by_hand():
    probabilities = np.array([[[0.2, 0.7, 0.7], [0.8, 0.5, 0.3]]])
    logits = np.log(probabilities / (1 - probabilities))
    best, score = select_queries(logits)  # means: 0.5, 0.6, 0.5
    assert best.tolist() == [1] and score == pytest.approx([0.6])
    tie = np.zeros((1, 2, 3))
    assert select_queries(tie)[0].tolist() == [0]  # ties go to the lowest index
    with pytest.raises(ValueError, match=r"\(E, T, N\).*\(2, 3\)"):
        select_queries(np.zeros((2, 3)))


@pytest.mark.parametrize("seed", range(5))
def test_pytorch_calibration_and_runtime_agree(seed, tmp_path):
    logits, masks = outputs(seed)
    best, score = select_queries(logits)
    # PyTorch evaluation
    _, torch_scores, torch_best = select_masks(
        {"pred_logits": torch.from_numpy(logits), "pred_masks": torch.from_numpy(masks)},
        input_size=(24, 32),
    )
    assert torch_best.tolist() == best.tolist()
    np.testing.assert_allclose(torch_scores.numpy(), score, rtol=1e-6)
    # INT8 calibration's agreement check
    calib_best, calib_tracks = calibration_select(logits, masks)
    assert calib_best.tolist() == best.tolist()
    np.testing.assert_array_equal(calib_tracks, chosen_tracks(masks, best))


@pytest.mark.parametrize("seed", range(3))
def test_the_runtime_predictor_chooses_by_the_rule(tiny_bundle, seed):
    """``RVOSPredictor.postprocess`` on a real bundle picks the rule's query and returns its
    score and that query's upsampled masks."""
    from runtime.predictor import RVOSPredictor

    predictor = RVOSPredictor(tiny_bundle, backend="onnxruntime")
    logits, masks = outputs(seed, size=(16, 24))  # the bundle's stride-4 grid of 64x96
    best, score = select_queries(logits)
    got_masks, got_scores, got_best = predictor.postprocess(logits, masks, (64, 96))
    assert got_best.tolist() == best.tolist()
    np.testing.assert_allclose(got_scores, score, rtol=1e-6)
    assert got_masks.shape == (3, 4, 64, 96)
    other = predictor.postprocess(logits, np.flip(masks, axis=2).copy(), (64, 96))[0]
    flipped = [int(q) != masks.shape[2] - 1 - int(q) for q in best]
    assert any(flipped) and not np.array_equal(got_masks, other)  # the chosen query's masks
