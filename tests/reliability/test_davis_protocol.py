"""Issue item: Ref-DAVIS17 scored as the field scores it (ReferFormer's protocol: four annotator
runs, each annotator's per-object probabilities merged into one label map, the DAVIS 2017
unsupervised evaluation with void pixels excluded). Hand-built probabilities and masks, and the
whole protocol on real PNG/JPEG files of a Ref-DAVIS-like synthetic split."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from training.data import build_dataset
from training.data.transforms import ClipTransform
from training.metrics import contour_accuracy, region_similarity


def square(top, left, side, shape=(100, 100)):
    mask = np.zeros(shape, bool)
    mask[top : top + side, left : left + side] = True
    return mask


# -- (a) the label-map merge ---------------------------------------------------------------


def test_merge_thresholds_then_takes_the_argmax():
    from training.davis import merge_label_map

    first = [[0.9, 0.4, 0.6], [0.2, 0.7, 0.5]]
    second = [[0.8, 0.45, 0.7], [0.1, 0.7, 0.49]]
    labels = merge_label_map(np.array([[first], [second]]))  # (objects 2, frames 1, 2, 3)
    assert labels.dtype == np.uint8 and labels.shape == (1, 2, 3)
    assert labels[0].tolist() == [
        [1, 0, 2],  # 0.9 beats 0.8; both below 0.5: background; 0.7 beats 0.6
        [0, 1, 1],  # both below 0.5; a tie goes to the lower object; 0.5 is kept, 0.49 is not
    ]
    # All below 0.5 everywhere: background, though an argmax alone would pick an object.
    assert not merge_label_map(np.full((3, 2, 4, 4), 0.49)).any()
    # Bool masks (backends that give no probabilities) count as 0 and 1.
    masks = np.zeros((2, 1, 2, 2), bool)
    masks[0, 0, 0] = masks[1, 0, :, 1] = True
    assert merge_label_map(masks)[0].tolist() == [[1, 1], [0, 2]]


# -- (b) void pixels are left out of J and F ----------------------------------------------


def test_void_is_excluded_from_j_by_hand():
    gt, pred = square(2, 2, 4, (10, 10)), square(2, 4, 4, (10, 10))
    void = np.zeros((10, 10), bool)
    void[:, 6:8] = True  # the 8 prediction pixels right of the object
    # Without void: intersection 8, union 24. The 8 void pixels leave the union: 8 / 16.
    assert region_similarity(gt, pred) == pytest.approx(8 / 24)
    assert region_similarity(gt, pred, void) == 0.5
    # Both masks empty outside the void: a perfect frame, as DAVIS counts it.
    assert region_similarity(np.zeros((10, 10), bool), void, void) == 1.0


def test_void_is_excluded_from_f_by_hand():
    gt = square(20, 20, 40)  # boundary 4 * 40 = 160 pixels (seg2bmap)
    pred = gt | square(70, 70, 10)  # and a far-away blob: 40 more boundary pixels
    void = np.zeros((100, 100), bool)
    void[65:86, 65:86] = True  # the blob lies in the void
    # Without void: precision 160 / 200, recall 1, F = 2 * 0.8 / 1.8 = 8 / 9.
    assert contour_accuracy(gt, pred) == pytest.approx(8 / 9)
    assert contour_accuracy(gt, pred, void=void) == 1.0


def test_davis_matching_pairs_objects_whatever_their_ids():
    """The unsupervised evaluation matches predicted to annotated objects (Hungarian on J&F):
    swapped ids cost nothing; a missing prediction scores 0 for its object."""
    from training.davis import ground_truth, match_objects, proposals

    labels = np.zeros((1, 100, 100), np.uint8)
    labels[0][square(10, 10, 20)] = 1
    labels[0][square(60, 60, 20)] = 2
    labels[0][square(8, 8, 24) & ~square(10, 10, 20)] = 255  # a void ring around object 1
    objects, void = ground_truth(labels)
    assert objects.shape == (2, 1, 100, 100) and void.sum() == 24 * 24 - 20 * 20
    swapped = np.zeros((1, 100, 100), np.uint8)
    swapped[0][square(9, 9, 22)] = 2  # object 1 as id 2, spilling into the void only
    swapped[0][square(60, 60, 20)] = 1
    j, f, matched = match_objects(objects, proposals(swapped), void)
    assert j.tolist() == [[1.0], [1.0]] and f.tolist() == [[1.0], [1.0]]
    assert matched.tolist() == [1, 0]
    only_one = np.zeros((1, 100, 100), np.uint8)
    only_one[0][square(60, 60, 20)] = 1
    j, f, matched = match_objects(objects, proposals(only_one), void)
    assert j.tolist() == [[0.0], [1.0]] and matched.tolist() == [-1, 0]


# -- (c) the whole protocol on a Ref-DAVIS-like split -------------------------------------


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory):
    from training.data.synthetic import write_ref_davis  # new with this protocol

    return write_ref_davis(
        tmp_path_factory.mktemp("ref-davis"), videos=3, frames=4, size=(64, 96), seed=1
    )


def davis_set(root):
    return build_dataset("davis", root, "valid", None, ClipTransform(False, eval_short_side=None))


def test_the_split_is_ref_davis_like(davis_root):
    dataset = davis_set(davis_root)
    meta = json.loads((davis_root / "meta_expressions/valid/meta_expressions.json").read_text())
    for video, data in meta["videos"].items():
        expressions = data["expressions"]
        assert len(expressions) % 4 == 0 and len(expressions) >= 8  # several objects, 4 each
        for index, exp in expressions.items():
            assert int(exp["obj_id"]) == int(index) // 4 + 1
        first = dataset.read_label(video, data["frames"][0])
        assert first.max() == 255 and set(range(len(expressions) // 4 + 1)) <= set(np.unique(first))


class Oracle:
    """A ``segment`` hook that answers from the annotations: per annotator run a different,
    known way to be right or wrong. It also records what it was asked."""

    def __init__(self, dataset, meta):
        self.dataset, self.meta = dataset, meta
        self.videos = {
            hashlib.sha1(dataset.read_frame(v, d["frames"][0]).tobytes()).hexdigest(): v
            for v, d in meta["videos"].items()
        }
        self.calls: dict[str, list[list[str]]] = {}

    def __call__(self, frames, expressions):
        video = self.videos[hashlib.sha1(frames[0].tobytes()).hexdigest()]
        run = len(self.calls.setdefault(video, []))
        self.calls[video].append(list(expressions))
        labels = np.stack(
            [self.dataset.read_label(video, n) for n in self.meta["videos"][video]["frames"]]
        )
        masks = np.stack([labels == k + 1 for k in range(len(expressions))])  # (O, T, H, W)
        ring = labels == 255
        if run == 0:  # right, and also claiming the void ring: excluded, so still perfect
            probs = np.where(masks | ring[None], 0.8, 0.1)
        elif run == 1:  # right but with the objects' ids rotated: the matching undoes it
            probs = np.roll(np.where(masks, 0.9, 0.2), 1, axis=0)
        elif run == 2:  # object 1 also claims the whole background at 0.55 (> 0.5)
            probs = np.where(masks, 0.6, 0.0)
            probs[0] = np.where(masks[0], 0.6, np.where(masks.any(0), 0.0, 0.55))
        else:  # bool masks, as a backend without probabilities gives
            return masks, np.zeros((len(expressions), 1))
        return probs.astype(np.float32), np.zeros((len(expressions), 1))


def expected_run2(dataset, meta):
    """Annotator run 2 by the metric functions alone: object 1 = everything but the others."""
    j, f = [], []
    for video, data in meta["videos"].items():
        labels = np.stack([dataset.read_label(video, n) for n in data["frames"]])
        void = labels == 255
        count = len(data["expressions"]) // 4
        others = (labels >= 2) & (labels <= count)
        for k in range(1, count + 1):
            pred = ~others if k == 1 else labels == k
            gt = labels == k
            j.append(np.mean([region_similarity(g, p, v) for g, p, v in zip(gt, pred, void)]))
            f.append(np.mean([contour_accuracy(g, p, void=v) for g, p, v in zip(gt, pred, void)]))
    return float(np.mean(j)), float(np.mean(f))


def test_protocol_end_to_end_with_known_masks(davis_root, tmp_path):
    from training.evaluate import evaluate

    dataset = davis_set(davis_root)
    meta = json.loads((davis_root / "meta_expressions/valid/meta_expressions.json").read_text())
    oracle = Oracle(dataset, meta)
    result = evaluate(
        None, None, dataset, segment=oracle, protocol="referformer", submission=tmp_path / "sub"
    )
    assert result["protocol"] == "referformer"
    # Grouping: run a of a video got the expressions 4k + a, in object order.
    for video, data in meta["videos"].items():
        exps = data["expressions"]
        count = len(exps) // 4
        assert oracle.calls[video] == [
            [exps[str(4 * k + a)]["exp"] for k in range(count)] for a in range(4)
        ]
    runs = result["summary"]["per_annotator"]
    assert [run["annotator"] for run in runs] == [0, 1, 2, 3]
    objects = sum(len(d["expressions"]) // 4 for d in meta["videos"].values())
    assert (
        all(run["objects"] == objects for run in runs) and result["summary"]["objects"] == objects
    )
    for a in (0, 1, 3):
        assert runs[a]["J"] == 1.0 and runs[a]["F"] == 1.0
    j2, f2 = expected_run2(dataset, meta)
    assert j2 < 0.9  # the case is not trivially perfect
    assert runs[2]["J"] == pytest.approx(j2) and runs[2]["F"] == pytest.approx(f2)
    summary = result["summary"]
    assert summary["J"] == pytest.approx((3 + j2) / 4) and summary["F"] == pytest.approx(
        (3 + f2) / 4
    )
    assert summary["J&F"] == pytest.approx((summary["J"] + summary["F"]) / 2)
    assert len(result["per_object"]) == 4 * objects
    # The label maps ReferFormer hands to the DAVIS code: anno_<a>/<video>/<frame>.png.
    video = min(meta["videos"])
    from PIL import Image

    written = np.asarray(Image.open(tmp_path / "sub/anno_1" / video / "00000.png"))
    truth = dataset.read_label(video, "00000")
    count = len(meta["videos"][video]["expressions"]) // 4
    inside = (truth >= 1) & (truth <= count)
    assert (written[inside] == truth[inside] % count + 1).all()  # ids rotated by one


def test_per_expression_protocol_stays_available_and_counts_void_as_background(davis_root):
    from training.evaluate import evaluate

    dataset = davis_set(davis_root)
    meta = json.loads((davis_root / "meta_expressions/valid/meta_expressions.json").read_text())
    result = evaluate(None, None, dataset, segment=lambda f, e: _void_claiming(dataset, meta, f, e))
    assert result["protocol"] == "per-expression"
    assert result["summary"]["expressions"] == sum(
        len(d["expressions"]) for d in meta["videos"].values()
    )
    assert result["summary"]["J"] < 1.0  # the void the masks claim counts against them here


def _void_claiming(dataset, meta, frames, expressions):
    for video, data in meta["videos"].items():
        if np.array_equal(dataset.read_frame(video, data["frames"][0]), frames[0]):
            labels = np.stack([dataset.read_label(video, n) for n in data["frames"]])
            ids = [
                int(e["obj_id"])
                for _, e in sorted(data["expressions"].items(), key=lambda kv: int(kv[0]))
            ]
            assert [data["expressions"][str(i)]["exp"] for i in range(len(ids))] == expressions
            return np.stack([(labels == i) | (labels == 255) for i in ids]), np.zeros((len(ids), 1))
    raise AssertionError("frames of no video")


def test_the_command_line_names_the_protocol(davis_root, tmp_path, tiny_model, tokenizer, capsys):
    from proxyformer.checkpoint import save_checkpoint
    from training.evaluate import main

    checkpoint = save_checkpoint(tiny_model, tmp_path / "ckpt", tokenizer=tokenizer)
    main(["--checkpoint", str(checkpoint), "--data", str(davis_root), "--dataset", "davis",
          "--out", str(tmp_path / "eval.json"), "--limit", "1"])  # fmt: skip
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["protocol"] == "referformer"
    runs = result["summary"]["per_annotator"]
    assert len(runs) == 4
    assert result["summary"]["J&F"] == pytest.approx(np.mean([run["J&F"] for run in runs]))
    out = capsys.readouterr().out
    assert "referformer protocol: mean of 4 annotator runs" in out and "annotator 3:" in out
    main(["--checkpoint", str(checkpoint), "--data", str(davis_root), "--dataset", "davis",
          "--protocol", "per-expression", "--out", str(tmp_path / "ours.json"), "--limit", "1"])  # fmt: skip
    assert json.loads((tmp_path / "ours.json").read_text())["protocol"] == "per-expression"
    assert "per-expression protocol" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(
            [
                "--checkpoint",
                str(checkpoint),
                "--data",
                str(davis_root),
                "--protocol",
                "referformer",
            ]
        )
    assert "use it with --dataset davis" in capsys.readouterr().err


def test_a_set_without_four_expressions_per_object_is_refused_before_the_model(
    davis_root, tmp_path
):
    import shutil

    from training.evaluate import main

    root = tmp_path / "davis"
    shutil.copytree(davis_root, root)
    path = root / "meta_expressions/valid/meta_expressions.json"
    meta = json.loads(path.read_text())
    video = min(meta["videos"])
    del meta["videos"][video]["expressions"]["1"]  # one object keeps 3 expressions
    path.write_text(json.dumps(meta))
    # The checkpoint does not exist: the dataset must be refused first, naming the video.
    with pytest.raises(
        ValueError, match=f"video {video}: .* expressions; the ReferFormer protocol expects four"
    ):
        main(
            [
                "--checkpoint",
                str(tmp_path / "no-checkpoint"),
                "--data",
                str(root),
                "--dataset",
                "davis",
            ]
        )


@pytest.mark.slow
def test_accuracy_benchmark_offers_the_protocol(davis_root, tiny_bundle, tmp_path):
    """benchmarks/accuracy.py on a Ref-DAVIS-layout split: the protocol is recorded, and the
    PyTorch and ONNX Runtime rows, both merged from binary masks, agree."""
    from benchmarks.accuracy import markdown, measure

    report = measure(tiny_bundle, davis_root, rows=("pytorch", "fp32"), dataset_kind="davis")
    assert report["protocol"] == "referformer" and report["dataset"] == "davis"
    rows = report["rows"]
    assert (
        len(rows["fp32"]["per_annotator"]) == 4
        and len(rows["fp32"]["per_object_jf"]) == 4 * rows["fp32"]["objects"]
    )
    assert rows["pytorch"]["J&F"] == pytest.approx(rows["fp32"]["J&F"], abs=0.01)
    assert "referformer protocol" in markdown(report).splitlines()[0]
