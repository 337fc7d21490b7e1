"""Streaming long videos: windows that overlap, read frames only as needed, and keep one object
per expression (runtime.stream, RVOSPredictor.stream, the segment command)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from runtime.__main__ import main
from runtime.stream import (
    Choice,
    TrackLinker,
    call_frames,
    check_overlap,
    iter_windows,
    merge_shared,
)
from runtime.writers import paint

TEXTS = ["the small red circle", "the big blue square"]


def numbered(count: int, pulled: list[int] | None = None):
    """(name, frame) pairs of a 4x6 video whose pixels hold the frame index; ``pulled`` counts
    the frames taken so far."""
    for index in range(count):
        if pulled is not None:
            pulled.append(index)
        yield f"{index:05d}", np.full((4, 6, 3), index, np.uint8)


@pytest.mark.parametrize(
    ("count", "window", "overlap"), [(30, 8, 2), (8, 8, 3), (9, 8, 7), (1, 4, 1)]
)
def test_windows_cover_every_frame_and_share_the_overlap(count, window, overlap):
    windows = list(iter_windows(numbered(count), window, overlap))
    assert windows[0].start == 0 and windows[0].overlap == 0 and windows[-1].last
    assert not any(w.last for w in windows[:-1])
    for before, after in itertools.pairwise(windows):
        assert len(before.frames) == window  # only the last window may be short
        assert after.overlap == overlap
        assert after.names[:overlap] == before.names[-overlap:]
        assert after.start == before.start + window - overlap
    for w in windows:
        assert [int(f[0, 0, 0]) for f in w.frames] == list(range(w.start, w.start + len(w.frames)))
    assert windows[-1].start + len(windows[-1].frames) == count
    # Every window brings at least one new frame.
    assert all(len(w.frames) > w.overlap for w in windows)


def test_windows_pull_frames_only_as_needed():
    pulled: list[int] = []
    windows = iter_windows(numbered(1000, pulled), window=10, overlap=3)
    next(windows)
    assert len(pulled) == 11  # the window and one frame ahead, not the video
    next(windows)
    assert len(pulled) == 18


def naive_windows(count: int, window: int, overlap: int) -> list[int]:
    """Window lengths without the shared tail: full windows, then whatever is left."""
    lengths, start = [], 0
    while True:
        lengths.append(min(window, count - start))
        if start + window >= count:
            return lengths
        start += window - overlap


@pytest.mark.parametrize(
    ("count", "window", "overlap", "min_frames", "expected"),
    [
        (19, 16, 0, 9, [10, 9]),  # not 16 + 3 padded to 9
        (19, 16, 2, 9, [11, 10]),
        (40, 16, 0, 9, [16, 12, 12]),
        (17, 16, 0, 9, [8, 9]),  # the first is padded to 9: 18 frames computed, not 25
        (25, 16, 0, 9, [16, 9]),  # the tail already fits: unchanged
        (16, 16, 0, 9, [16]),
        (5, 16, 0, 9, [5]),
    ],
)
def test_a_short_tail_is_shared_by_the_last_two_windows(count, window, overlap, min_frames,
                                                         expected):  # fmt: skip
    windows = list(iter_windows(numbered(count), window, overlap, min_frames))
    assert [len(w.frames) for w in windows] == expected
    assert windows[-1].last and not any(w.last for w in windows[:-1])
    for before, after in itertools.pairwise(windows):
        assert after.overlap == overlap and after.start == before.start + len(before.frames) - overlap
        assert after.names[:overlap] == before.names[len(before.frames) - overlap :]
    for w in windows:
        assert [int(f[0, 0, 0]) for f in w.frames] == list(range(w.start, w.start + len(w.frames)))
    assert windows[-1].start + len(windows[-1].frames) == count
    # Fewer frames computed (short windows padded to min_frames) than full windows and a
    # short last one.
    computed = sum(max(n, min_frames) for n in expected)
    assert computed <= sum(max(n, min_frames) for n in naive_windows(count, window, overlap))


@pytest.mark.parametrize("overlap", [0, 3, 6])
@pytest.mark.parametrize("count", range(1, 60, 3))
def test_windows_with_a_shortest_call_cover_the_video_once(count, overlap):
    window, min_frames = 9, 7
    pulled: list[int] = []
    windows = list(iter_windows(numbered(count, pulled), window, overlap, min_frames))
    assert len(pulled) == count
    new = [len(w.frames) - w.overlap for w in windows]
    assert sum(new) == count and all(n > 0 for n in new)
    assert all(len(w.frames) <= window for w in windows)
    assert all(len(w.frames) == window for w in windows[:-2])
    if count >= window + min_frames - overlap:  # room for a second window of min_frames
        assert len(windows[-1].frames) >= min_frames


def test_windows_hold_only_what_shows_the_end_coming():
    pulled: list[int] = []
    windows = iter_windows(numbered(1000, pulled), window=16, overlap=2, min_frames=9)
    next(windows)
    assert len(pulled) == 16 + 7  # the window and min_frames - overlap frames ahead
    next(windows)
    assert len(pulled) == 16 + 7 + 14


def test_short_windows_are_padded_to_the_shortest_call_or_the_compiled_shape():
    assert call_frames(3, 9) == 9
    assert call_frames(12, 9) == 12
    # A static-shape backend keeps the previous call's 10 frames: both compute 16 padded frames.
    assert call_frames(9, 9, previous=10, step=8) == 10
    assert call_frames(3, 9, previous=16, step=8) == 16
    # ...but not across the padding step, nor without one.
    assert call_frames(9, 9, previous=17, step=8) == 9
    assert call_frames(9, 9, previous=10) == 9
    assert call_frames(4, 1, previous=6, step=8) == 4  # below the window: P(T) = T


@pytest.mark.parametrize(("overlap", "window"), [(-1, 8), (8, 8), (9, 8)])
def test_overlap_outside_the_window_is_refused(overlap, window):
    with pytest.raises(ValueError, match=f"overlap of {overlap} frames"):
        check_overlap(overlap, window)
    with pytest.raises(TypeError, match="whole number"):
        check_overlap(1.5, 8)


def two_objects(frames: int, swapped_scores: bool) -> tuple[np.ndarray, np.ndarray]:
    """One expression, two queries tracking two disjoint squares; query 1 scores higher when
    ``swapped_scores``, query 0 otherwise."""
    masks = np.full((1, frames, 2, 8, 8), -5.0, np.float32)
    masks[0, :, 0, :4, :4] = 5.0
    masks[0, :, 1, 4:, 4:] = 5.0
    logits = np.zeros((1, frames, 2), np.float32)
    logits[0, :, 1 if swapped_scores else 0] = 0.4  # probability 0.60 against 0.50
    return logits, masks


def test_linking_keeps_the_object_the_score_alone_would_leave():
    for link, expected, switch in ((True, 0, False), (False, 1, True)):
        linker = TrackLinker(threshold_logit=0.0, link=link)
        linker.choose(*two_objects(6, swapped_scores=False), overlap=0)
        tracks, (choice,) = linker.choose(*two_objects(6, swapped_scores=True), overlap=2)
        assert choice.independent_query == 1
        assert choice.query == expected and choice.switch is switch
        assert choice.overlap_iou == pytest.approx(1.0 if link else 0.0)
        assert (tracks[0] > 0).sum() == 6 * 16  # the chosen square in every frame


def test_an_empty_previous_track_leaves_the_choice_to_the_score():
    linker = TrackLinker(threshold_logit=0.0)
    logits, masks = two_objects(4, swapped_scores=False)
    linker.choose(logits, np.full_like(masks, -5.0), overlap=0)  # nothing segmented
    _, (choice,) = linker.choose(*two_objects(4, swapped_scores=True), overlap=2)
    assert choice.query == 1 and choice.overlap_iou is None and not choice.switch


def test_shared_frames_are_merged_except_across_a_switch():
    held = np.full((2, 2, 3, 3), 4.0, np.float32)
    tracks = np.full((2, 5, 3, 3), -2.0, np.float32)
    choices = [Choice(0, 0, 0.9, 0.8, False), Choice(1, 1, 0.9, 0.1, True)]
    merged = merge_shared(held, tracks, choices)
    assert merged.shape == (2, 2, 3, 3)
    assert np.all(merged[0] == 1.0) and np.all(merged[1] == 4.0)


def test_paint_is_uint8_leaves_the_frame_alone_and_draws_a_legend():
    frame = np.full((96, 160, 3), 40, np.uint8)
    masks = np.zeros((2, 96, 160), bool)
    masks[0, 50:80, 20:60] = True
    painted = paint(frame, masks, ["the red circle", "a blue square"])
    assert painted.dtype == np.uint8 and np.all(frame == 40)
    assert np.any(painted[60, 40] != 40)  # tinted
    assert np.any(painted[:30, :100] != 40)  # the legend
    assert np.all(paint(frame, masks)[:30, 100:] == 40)  # no labels, no legend


@pytest.fixture(scope="module")
def predictor(tiny_bundle):
    from runtime.predictor import RVOSPredictor

    return RVOSPredictor(tiny_bundle, backend="onnxruntime", threads=1)


@pytest.fixture(scope="module")
def long_clip(synth_data):
    """A 20-frame clip: four 5-frame synthetic videos one after the other, as an array."""
    from runtime.video import read_video

    folders = sorted((synth_data / "train" / "JPEGImages").iterdir())[:4]
    return np.concatenate([read_video(folder)[0] for folder in folders])


def test_independent_windows_equal_one_call_per_window(predictor, long_clip):
    whole = predictor.segment(long_clip, TEXTS, window=6)  # the test bundle's T is [1, 6]
    assert whole.masks.shape[:2] == (2, len(long_clip)) and whole.queries.shape == (2, 4)
    for index, start in enumerate(range(0, len(long_clip), 6)):
        part = predictor.segment(long_clip[start : start + 6], TEXTS, window=6)
        assert np.array_equal(whole.masks[:, start : start + 6], part.masks)
        assert np.array_equal(whole.queries[:, index], part.queries[:, 0])


def test_stream_reads_lazily_and_finishes_every_frame_once(predictor, long_clip):
    pulled: list[int] = []

    def frames():
        for index, frame in enumerate(long_clip):
            pulled.append(index)
            yield frame

    results = predictor.stream(frames(), TEXTS, window=6, overlap=2)
    first = next(results)
    assert len(pulled) == 7 and first.names == [f"{i:05d}" for i in range(4)]
    assert first.window == (0, 6) and first.masks.shape[:2] == (2, 4)
    rest = list(results)
    names = [name for r in [first, *rest] for name in r.names]
    assert names == [f"{i:05d}" for i in range(len(long_clip))]
    assert [r.window for r in rest] == [(4, 10), (8, 14), (12, 18), (16, 20)]
    assert all(len(r.choices) == 2 for r in rest)


def test_the_segment_command_streams_and_records_each_window(tiny_bundle, long_clip, tmp_path):
    from runtime.writers import write_video

    video = write_video(long_clip, tmp_path / "long.mp4")
    out = tmp_path / "out"
    argv = ["segment", "--bundle", str(tiny_bundle), "--video", str(video), "--out", str(out),
            "--window", "6", "--overlap", "2", *(a for t in TEXTS for a in ("--text", t))]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "long_result.json").read_text())
    assert result["frames"] == len(long_clip) and result["overlap"] == 2 and result["linked"]
    assert [w["frames"] for w in result["windows"]] == [[0, 6], [4, 10], [8, 14], [12, 18],
                                                        [16, 20]]  # fmt: skip
    for entry in result["expressions"]:
        assert len(entry["queries"]) == 5
        switches = sum(w["choices"][entry["index"]]["switch"] for w in result["windows"])
        assert entry["identity_switches"] == switches
    for index in range(2):
        pngs = sorted(p.stem for p in (out / "Annotations" / "long" / str(index)).glob("*.png"))
        assert pngs == [f"{i:05d}" for i in range(len(long_clip))]
    import cv2

    capture = cv2.VideoCapture(str(out / "long_overlay.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == len(long_clip)
    capture.release()
