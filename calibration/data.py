"""Calibration samples: real video clips and expressions, at the bundle's resolution.

A sample is what the video graph eats: ``frames`` (the bundle's frame format and size),
``text_features [E, L, C]`` from the bundle's own text graph (ONNX Runtime, FP32) and
``attention_mask [E, L]``. Samples come from a dataset split in the Ref-YouTube-VOS layout
(the synthetic set or Ref-YouTube-VOS itself): videos drawn by seed, a clip of the profile's
optimal frame count from a seeded start, and that video's expressions (up to the profile's
maximum).

On disk (``save``): ``shard-000.npz``... of up to ``SHARD_SIZE`` samples and
``calibration.json`` (bundle, split, seed, the videos, shapes and dtypes, sha256 of shards).
Loading checks every tensor against the bundle's video-graph inputs, so data made for another
resolution or dtype is refused with the tensor named.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.backends import check_feeds, load_backend
from runtime.manifest import Manifest, atomic_write_text, sha256_file
from runtime.video import resize_frames

log = logging.getLogger(__name__)

SHARD_SIZE = 16
INFO_NAME = "calibration.json"
SAMPLE_KEYS = ("frames", "text_features", "attention_mask")


class CalibrationDataError(ValueError):
    """Calibration data that does not fit the bundle (names the tensor and the shapes)."""


class ShardSamples(Sequence):
    """The samples of saved shards, each read from its ``.npz`` when indexed (a slice gives a
    list): a sequence of feeds that holds none of them."""

    def __init__(self, directory: Path, shards: list[dict]) -> None:
        self.places = [(directory / shard["file"], i) for shard in shards
                       for i in range(shard["samples"])]  # fmt: skip

    def __len__(self) -> int:
        return len(self.places)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        path, i = self.places[index]
        with np.load(path) as data:
            return {key: data[f"{key}_{i}"] for key in SAMPLE_KEYS}


@dataclass
class CalibrationSet:
    samples: Sequence[dict[str, np.ndarray]]
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        shards = []
        for index, start in enumerate(range(0, len(self.samples), SHARD_SIZE)):
            name = f"shard-{index:03d}.npz"
            arrays = {
                f"{key}_{i}": value
                for i, sample in enumerate(self.samples[start : start + SHARD_SIZE])
                for key, value in sample.items()
            }
            tmp = directory / f".{name}.tmp.npz"
            np.savez(tmp, **arrays)
            tmp.replace(directory / name)
            shards.append({"file": name, "sha256": sha256_file(directory / name),
                           "samples": min(SHARD_SIZE, len(self.samples) - start)})  # fmt: skip
        info = self.info | {"shards": shards, "samples": len(self.samples)}
        atomic_write_text(directory / INFO_NAME, json.dumps(info, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path, manifest: Manifest | None = None) -> CalibrationSet:
        """Open the shards (checking their sha256) and, given a manifest, every tensor's fit.

        The samples are read from the shards when used (:class:`ShardSamples`), one at a time:
        32 paper-size clips of 19 frames held at once are 0.4 GB on top of a calibration's peak.
        """
        directory = Path(directory)
        info_path = directory / INFO_NAME
        if not info_path.is_file():
            raise CalibrationDataError(f"{info_path} is missing: not a calibration set")
        info = json.loads(info_path.read_text())
        for shard in info["shards"]:
            path = directory / shard["file"]
            if not path.is_file() or sha256_file(path) != shard["sha256"]:
                raise CalibrationDataError(f"calibration shard {path} is missing or was changed")
        calibration = cls(ShardSamples(directory, info["shards"]), info)
        if manifest is not None:
            calibration.check(manifest, str(directory))
        return calibration

    def check(self, manifest: Manifest, where: str = "calibration data") -> None:
        """Every sample fits the video graph's inputs (dtype, rank, size, profile ranges)."""
        specs = manifest.inputs("video")
        for index, sample in enumerate(self.samples):
            try:
                check_feeds("video", specs, manifest.profiles, sample)
            except ValueError as error:
                raise CalibrationDataError(
                    f"{where}, sample {index}, does not fit bundle {manifest.root}: {error}"
                ) from None


def build_calibration_set(
    manifest: Manifest,
    data: str | Path,
    split: str = "train",
    samples: int = 64,
    seed: int = 0,
    frames: int | None = None,
) -> CalibrationSet:
    """``samples`` clips drawn by ``seed`` from a Ref-YouTube-VOS-layout ``split`` of ``data``.

    Each video gives at most one sample; with fewer videos than ``samples`` a warning says so.
    """
    from training.data.ytvos import read_expressions

    root = Path(data)
    meta = root / "meta_expressions" / split / "meta_expressions.json"
    videos = read_expressions(meta)
    image_dir = root / split / "JPEGImages"
    names = sorted(v for v, d in videos.items() if d.get("expressions"))
    if len(names) < samples:
        log.warning(
            "%s split %r has %d videos with expressions; %d calibration samples were asked for",
            root, split, len(names), samples,
        )  # fmt: skip
    chosen = random.Random(seed).sample(names, min(samples, len(names)))
    profiles = manifest.profiles
    clip_length = frames or profiles["T"]["opt"]
    clip_length = max(profiles["T"]["min"], min(clip_length, profiles["T"]["max"]))
    max_expressions = profiles["E"]["max"]
    pre = manifest.preprocessing
    tokenizer = manifest.load_tokenizer()
    text_graph = load_backend(manifest, "text_encoder", "onnxruntime", "fp32")
    # Every sample has the same shapes (ONNX Runtime's histogram calibrators stack them):
    # E expressions (a video's own, repeated when it has fewer), padded to the longest one.
    expressions_per_clip = min(max_expressions, 2)
    all_texts = [e["exp"] for v in chosen for e in videos[v]["expressions"].values()]
    length = max(len(e.ids) for e in tokenizer.encode_batch(all_texts))
    length = max(profiles["L"]["min"], min(length, profiles["L"]["max"]))
    rng = random.Random(seed + 1)
    result = []
    for video in chosen:
        frame_names = sorted(videos[video]["frames"])
        start = rng.randrange(max(1, len(frame_names) - clip_length + 1))
        clip_names = frame_names[start : start + clip_length]
        clip_names += clip_names[-1:] * (clip_length - len(clip_names))  # short videos
        clip = np.stack([_read_rgb(image_dir / video / f"{n}.jpg") for n in clip_names])
        clip = resize_frames(clip, tuple(pre["size"]))
        own = [e["exp"] for _, e in sorted(videos[video]["expressions"].items(),
                                           key=lambda kv: int(kv[0]))]  # fmt: skip
        expressions = [own[i % len(own)] for i in range(expressions_per_clip)]
        ids = np.full((len(expressions), length), pre.get("pad_token_id", 1), dtype=np.int64)
        mask = np.zeros((len(expressions), length), dtype=np.int64)
        for row, encoding in enumerate(tokenizer.encode_batch(expressions)):
            tokens = encoding.ids[:length]
            ids[row, : len(tokens)], mask[row, : len(tokens)] = tokens, 1
        text = text_graph.infer({"input_ids": ids, "attention_mask": mask})["text_features"]
        if pre["frame_format"] == "float-nchw":
            mean = np.asarray(pre["pixel_mean"], np.float32) * pre["pixel_scale"]
            std = np.asarray(pre["pixel_std"], np.float32) * pre["pixel_scale"]
            clip = ((clip.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2)
        result.append({"frames": np.ascontiguousarray(clip), "text_features": text,
                       "attention_mask": mask})  # fmt: skip
    info = {
        "data": str(root),
        "split": split,
        "seed": seed,
        "videos": chosen,
        "frames_per_clip": clip_length,
        "expressions_per_clip": expressions_per_clip,
        "text_length": length,
        "size": pre["size"],
        "frame_format": pre["frame_format"],
        "text_encoder_sha256": manifest.data["files"][
            manifest.variant("text_encoder", "fp32")["file"]
        ]["sha256"],
    }
    calibration = CalibrationSet(result, info)
    calibration.check(manifest)
    return calibration


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"frame not found: {path}")
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
