"""The synthetic dataset: layout, determinism, unambiguous expressions with distractors."""

import json

import numpy as np
import pytest
from PIL import Image

from training.data.synthetic import COLORS, SHAPES, generate_video


@pytest.fixture(scope="module")
def dataset(make_synthetic):
    return make_synthetic(videos=12, frames=4, seed=3)


def test_ref_youtube_vos_layout(dataset):
    for split in ("train", "valid"):
        expressions = json.loads((dataset / "meta_expressions" / split / "meta_expressions.json").read_text())
        meta = json.loads((dataset / split / "meta.json").read_text())
        assert expressions["videos"] and expressions["videos"].keys() == meta["videos"].keys()
        for video, data in expressions["videos"].items():
            for frame in data["frames"]:
                image = Image.open(dataset / split / "JPEGImages" / video / f"{frame}.jpg")
                label = Image.open(dataset / split / "Annotations" / video / f"{frame}.png")
                assert image.size == (96, 64) and image.mode == "RGB"
                assert label.mode == "P" and label.size == (96, 64)
            for exp in data["expressions"].values():
                assert exp["obj_id"] in meta["videos"][video]["objects"]


def test_generation_is_deterministic_by_seed():
    a = generate_video(7, "train", 5, 4, 64, 96)
    b = generate_video(7, "train", 5, 4, 64, 96)
    c = generate_video(8, "train", 5, 4, 64, 96)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[3] == b[3]
    assert not np.array_equal(a[0], c[0])


def test_expressions_name_their_target_and_distractors_share_attributes():
    shared, total = 0, 0
    for index in range(30):
        _, labels, objects, expressions = generate_video(0, "train", index, 6, 96, 160)
        by_id = {o.obj_id: o for o in objects}
        for text, obj_id in expressions:
            target = by_id[obj_id]
            words = text.split()
            assert words[0] == "the" and target.shape in words
            assert (labels == obj_id).any()  # the referred object is visible somewhere
            # Words of colour and shape before any relation belong to the target.
            head = text.split(" above ")[0].split(" below ")[0].split(" to the ")[0]
            for color in COLORS:
                if f" {color} " in f" {head} ":
                    assert color == target.color, text
            for shape in SHAPES:
                if f" {shape}" in f" {head}":
                    assert shape == target.shape, text
            total += 1
            others = [o for o in objects if o is not target]
            shared += any(o.shape == target.shape or o.color == target.color for o in others)
    assert total > 50
    assert shared / total > 0.6  # most targets have a distractor sharing colour or shape
