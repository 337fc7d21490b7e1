"""J and F on hand-computed cases (DAVIS 2017 protocol)."""

import numpy as np
import pytest

from training.metrics import (
    boundary_map,
    boundary_tolerance,
    contour_accuracy,
    region_similarity,
    summarize_jf,
    video_jf,
)


def square(top, left, side, shape=(100, 100)):
    mask = np.zeros(shape, bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_region_similarity_cases():
    empty = np.zeros((10, 10), bool)
    assert region_similarity(empty, empty) == 1.0  # both empty: perfect
    assert region_similarity(square(0, 0, 4, (10, 10)), empty) == 0.0
    assert region_similarity(square(0, 0, 4, (10, 10)), square(0, 0, 4, (10, 10))) == 1.0
    # 4x4 and a 4x4 shifted by 2 columns: intersection 8, union 24.
    assert region_similarity(square(0, 0, 4, (10, 10)), square(0, 2, 4, (10, 10))) == pytest.approx(8 / 24)


def test_boundary_map_of_a_square():
    boundary = boundary_map(square(2, 2, 4, (8, 8)))
    # seg2bmap marks the pixels that differ from their right/bottom neighbours: the square's
    # last row and column inside, and the row and column just outside its top-left edges.
    assert boundary.sum() > 0
    assert not boundary[4, 4]  # interior
    assert boundary[2:6, 5].all() and boundary[5, 2:6].all()


def test_contour_accuracy_identical_and_empty():
    empty = np.zeros((100, 100), bool)
    assert contour_accuracy(square(20, 20, 40), square(20, 20, 40)) == 1.0
    assert contour_accuracy(empty, empty) == 1.0
    assert contour_accuracy(square(20, 20, 40), empty) == 0.0
    assert contour_accuracy(empty, square(20, 20, 40)) == 0.0


def test_boundary_shifted_by_a_known_number_of_pixels():
    # 100x100: tolerance ceil(0.008 * 141.4) = 2 pixels.
    assert boundary_tolerance((100, 100)) == 2
    gt = square(20, 20, 40)
    assert contour_accuracy(gt, square(20, 22, 40)) == 1.0  # within tolerance
    shifted3 = contour_accuracy(gt, square(20, 23, 40))
    assert shifted3 < 1.0
    # Shifted 3 columns: the two vertical edges (40 px each) no longer match, the horizontal
    # edges (~40 px each) still do; precision = recall ~ 1/2.
    assert shifted3 == pytest.approx(0.5, abs=0.05)
    scores = [contour_accuracy(gt, square(20, 20 + k, 40)) for k in (3, 6, 12)]
    assert scores == sorted(scores, reverse=True)


def test_video_and_summary():
    gt = np.stack([square(20, 20, 40), np.zeros((100, 100), bool)])
    j, f = video_jf(gt, gt.copy())
    assert (j, f) == (1.0, 1.0)
    j, f = video_jf(gt, np.zeros_like(gt))
    assert j == 0.5 and f == 0.5  # frame 0 missed, frame 1 (both empty) perfect
    summary = summarize_jf([{"J": 1.0, "F": 0.5}, {"J": 0.0, "F": 0.5}])
    assert summary == {"J": 0.5, "F": 0.5, "J&F": 0.5, "expressions": 2}
    with pytest.raises(ValueError, match="differ in shape"):
        video_jf(gt, gt[:, :50])
