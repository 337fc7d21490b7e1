"""A synthetic referring-video dataset in the Ref-YouTube-VOS on-disk layout.

    python -m training.data.synthetic --out data/synth --videos 400 --frames 12 --size 128x224 --seed 0

writes (the layout ReferFormer reads for Ref-YouTube-VOS)::

    data/synth/
      meta_expressions/{train,valid}/meta_expressions.json
      {train,valid}/JPEGImages/<video>/<frame>.jpg
      {train,valid}/Annotations/<video>/<frame>.png      palette PNG, one id per object
      {train,valid}/meta.json                            objects, categories, frames

Every video holds 2-4 shapes moving over a textured background; objects occlude each other
and may enter or leave the frame. Each expression names one object by colour, shape, size,
position, motion or its relation to another object ("the small red circle moving left",
"the square above the green triangle"). Distractors share attributes with the target, and an
expression is kept only if it picks out exactly one object, so the whole expression is
needed. Generation is deterministic: video ``i`` depends only on (seed, split, i).

``--ref-davis`` writes instead a small Ref-DAVIS17-like ``valid`` split (``write_ref_davis``:
four annotator expression sets per object, void pixels) on which the ReferFormer protocol of
``training/evaluate.py --dataset davis`` runs.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

log = logging.getLogger(__name__)

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 50),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = {"small": (0.10, 0.13), "big": (0.19, 0.24)}  # radius as a fraction of min(H, W)
MOTIONS = ("left", "right", "up", "down", "still")
# Direction of each motion in (dx, dy) image coordinates.
_MOTION_VECTORS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}


def palette() -> list[int]:
    """DAVIS/YouTube-VOS style palette: 0 black, then distinct colours per object id."""
    colors = [(0, 0, 0), (236, 95, 103), (249, 145, 87), (250, 200, 99), (153, 199, 148),
              (98, 179, 178), (102, 153, 204), (197, 148, 199), (171, 121, 103)]  # fmt: skip
    flat = [c for color in colors for c in color]
    return flat + [0] * (768 - len(flat))


@dataclass
class SceneObject:
    obj_id: int
    shape: str
    color: str
    size: str
    motion: str
    radius: float  # pixels
    start: np.ndarray  # (x, y) centre at frame 0, pixels
    velocity: np.ndarray  # pixels per frame
    shade: np.ndarray  # RGB with a little per-object variation

    def center(self, t: int) -> np.ndarray:
        return self.start + self.velocity * t


def shape_mask(shape: str, center: np.ndarray, radius: float, height: int, width: int) -> np.ndarray:
    """Boolean (H, W) mask of a shape centred at ``center`` (x, y) with circumradius ``radius``."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    dx, dy = xs + 0.5 - center[0], ys + 0.5 - center[1]
    if shape == "circle":
        return dx * dx + dy * dy <= radius * radius
    if shape == "square":
        half = radius * 0.8
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= radius
    if shape == "triangle":  # pointing up, inscribed in the circle of ``radius``
        top, bottom = -radius, radius * 0.5
        half_width = (dy - top) / (bottom - top) * radius * 0.87
        return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= half_width)
    raise ValueError(f"unknown shape {shape!r}")


def textured_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Low-contrast smooth noise plus a random stripe or checker pattern, float (H, W, 3)."""
    coarse = rng.uniform(0, 1, size=(height // 16 + 2, width // 16 + 2, 3)).astype(np.float32)
    noise = np.asarray(
        Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC),
        dtype=np.float32,
    )
    base = rng.uniform(60, 150, size=3).astype(np.float32)
    image = base * 0.6 + noise * 0.35
    ys, xs = np.mgrid[0:height, 0:width]
    period = rng.integers(8, 24)
    pattern = rng.integers(0, 3)
    if pattern == 0:
        image += ((xs + ys) // period % 2)[..., None] * rng.uniform(8, 20)
    elif pattern == 1:
        image += ((xs // period + ys // period) % 2)[..., None] * rng.uniform(8, 20)
    return image


def sample_objects(
    rng: np.random.Generator, height: int, width: int, frames: int
) -> list[SceneObject]:
    """2-4 objects; each distractor shares colour or shape (often both) with an earlier one."""
    count = int(rng.integers(2, 5))
    objects: list[SceneObject] = []
    short = min(height, width)
    for obj_id in range(1, count + 1):
        if objects and rng.uniform() < 0.8:
            anchor = objects[int(rng.integers(len(objects)))]
            shape = anchor.shape if rng.uniform() < 0.6 else str(rng.choice(SHAPES))
            color = anchor.color if rng.uniform() < 0.6 else str(rng.choice(list(COLORS)))
        else:
            shape, color = str(rng.choice(SHAPES)), str(rng.choice(list(COLORS)))
        size = str(rng.choice(list(SIZES)))
        motion = str(rng.choice(MOTIONS))
        radius = float(rng.uniform(*SIZES[size]) * short)
        speed = float(rng.uniform(0.6, 1.2)) * (width if motion in ("left", "right") else height)
        speed /= max(frames, 2) * 1.6
        direction = np.array(_MOTION_VECTORS[motion], dtype=np.float32)
        velocity = direction * speed
        # Start so that most of the path is inside the frame; some objects enter or leave.
        travel = velocity * (frames - 1)
        margin = radius * (0.2 if rng.uniform() < 0.8 else -0.6)  # negative: partly outside
        low = np.array([margin, margin]) - np.minimum(travel, 0)
        high = np.array([width - margin, height - margin]) - np.maximum(travel, 0)
        start = rng.uniform(np.minimum(low, high), np.maximum(low, high)).astype(np.float32)
        shade = np.clip(np.array(COLORS[color], np.float32) + rng.normal(0, 8, 3), 0, 255)
        objects.append(
            SceneObject(obj_id, shape, color, size, motion, radius, start, velocity, shade)
        )
    return objects


def render_video(
    objects: list[SceneObject], rng: np.random.Generator, frames: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W, 3) uint8 frames and (T, H, W) uint8 id maps; later objects occlude earlier."""
    images = np.empty((frames, height, width, 3), np.uint8)
    labels = np.zeros((frames, height, width), np.uint8)
    for t, (image, label) in enumerate(iter_render(objects, rng, frames, height, width)):
        images[t], labels[t] = image, label
    return images, labels


def iter_render(
    objects: list[SceneObject], rng: np.random.Generator, frames: int, height: int, width: int
):
    """``render_video`` one frame at a time: (H, W, 3) uint8 frame, (H, W) uint8 id map, so a
    long video need not be held whole."""
    background = textured_background(rng, height, width)
    for t in range(frames):
        image = background.copy()
        label = np.zeros((height, width), np.uint8)
        for obj in objects:
            mask = shape_mask(obj.shape, obj.center(t), obj.radius, height, width)
            image[mask] = obj.shade
            label[mask] = obj.obj_id
        image += rng.normal(0, 4, size=image.shape).astype(np.float32)  # sensor noise
        yield np.clip(image, 0, 255).astype(np.uint8), label


# ----------------------------------------------------------------------------------------
# Referring expressions
# ----------------------------------------------------------------------------------------


def _visible_centers(obj: SceneObject, labels: np.ndarray) -> np.ndarray | None:
    points = []
    for frame in labels:
        ys, xs = np.nonzero(frame == obj.obj_id)
        if len(xs):
            points.append((xs.mean(), ys.mean()))
    return np.array(points) if points else None


def _phrase(obj: SceneObject, words: tuple[str, ...]) -> str:
    parts = []
    if "size" in words:
        parts.append(obj.size)
    if "color" in words:
        parts.append(obj.color)
    parts.append(obj.shape)
    phrase = " ".join(parts)
    if "motion" in words:
        phrase += " that stays still" if obj.motion == "still" else f" moving {obj.motion}"
    return phrase


def _matches(obj: SceneObject, target: SceneObject, words: tuple[str, ...]) -> bool:
    return obj.shape == target.shape and all(
        getattr(obj, word) == getattr(target, word) for word in words
    )


_DESCRIPTORS = (
    ("color",), ("size",), ("motion",), ("size", "color"), ("color", "motion"),
    ("size", "motion"), ("size", "color", "motion"),
)  # fmt: skip


def describe(
    target: SceneObject, objects: list[SceneObject], labels: np.ndarray, rng: np.random.Generator
) -> list[str]:
    """All unambiguous expressions for ``target`` among ``objects``, in random order."""
    options: list[str] = []
    for words in _DESCRIPTORS:
        matching = [o for o in objects if _matches(o, target, words)]
        if matching == [target]:
            options.append(f"the {_phrase(target, words)}")
    centers = {o.obj_id: _visible_centers(o, labels) for o in objects}
    if centers[target.obj_id] is None:
        return []  # never visible: nothing to refer to
    mean = {k: v.mean(axis=0) for k, v in centers.items() if v is not None}
    # Position among objects of the same shape ("the circle on the left").
    same_shape = [o for o in objects if o.shape == target.shape and o.obj_id in mean]
    if len(same_shape) >= 2:
        for axis, (low, high) in ((0, ("left", "right")), (1, ("top", "bottom"))):
            order = sorted(same_shape, key=lambda o: mean[o.obj_id][axis])
            gap = abs(mean[order[0].obj_id][axis] - mean[order[1].obj_id][axis])
            if order[0] is target and gap > target.radius:
                options.append(f"the {target.shape} on the {low}")
            gap = abs(mean[order[-1].obj_id][axis] - mean[order[-2].obj_id][axis])
            if order[-1] is target and gap > target.radius:
                options.append(f"the {target.shape} on the {high}")
    # Relation to another object named by colour and shape ("the square above the green triangle").
    for other in objects:
        if other is target or other.obj_id not in mean:
            continue
        if [o for o in objects if _matches(o, other, ("color",))] != [other]:
            continue  # the reference object itself must be unambiguous
        dx, dy = mean[target.obj_id] - mean[other.obj_id]
        if abs(dy) > abs(dx) and abs(dy) > target.radius + other.radius:
            relation = "above" if dy < 0 else "below"
        elif abs(dx) > target.radius + other.radius:
            relation = "to the left of" if dx < 0 else "to the right of"
        else:
            continue
        candidates = [o for o in objects if o.shape == target.shape and o.obj_id in mean]
        if len(candidates) > 1:
            # Unambiguous only if no other object of the target's shape has the same relation.
            def related(o: SceneObject) -> bool:
                ox, oy = mean[o.obj_id] - mean[other.obj_id]
                return {
                    "above": oy < 0 and abs(oy) > abs(ox),
                    "below": oy > 0 and abs(oy) > abs(ox),
                    "to the left of": ox < 0 and abs(ox) >= abs(oy),
                    "to the right of": ox > 0 and abs(ox) >= abs(oy),
                }[relation]

            if [o for o in candidates if o is not other and related(o)] != [target]:
                continue
        options.append(f"the {target.shape} {relation} the {other.color} {other.shape}")
    rng.shuffle(options)
    return options


# ----------------------------------------------------------------------------------------
# Writing the dataset
# ----------------------------------------------------------------------------------------


def generate_video(
    seed: int, split: str, index: int, frames: int, height: int, width: int, per_object: int = 2
) -> tuple[np.ndarray, np.ndarray, list[SceneObject], list[tuple[str, int]]]:
    """One video: frames, id maps, objects and (expression, object id) pairs."""
    split_key = {"train": 0, "valid": 1}[split]
    rng = np.random.default_rng([seed, split_key, index])
    for _ in range(20):  # resample scenes in which no object can be referred to
        objects = sample_objects(rng, height, width, frames)
        images, labels = render_video(objects, rng, frames, height, width)
        expressions = []
        for obj in objects:
            expressions += [(text, obj.obj_id) for text in describe(obj, objects, labels, rng)[:per_object]]
        if expressions:
            return images, labels, objects, expressions
    raise RuntimeError(f"could not generate a referable scene for video {index} of {split}")


def write_dataset(
    out: str | Path,
    videos: int = 400,
    frames: int = 12,
    size: tuple[int, int] = (128, 224),
    seed: int = 0,
    valid_fraction: float = 0.1,
    jpeg_quality: int = 92,
) -> Path:
    """Generate the dataset under ``out`` (see the module docstring) and return ``out``."""
    out = Path(out)
    height, width = size
    num_valid = max(1, round(videos * valid_fraction)) if videos > 1 else 0
    splits = {"train": videos - num_valid, "valid": num_valid}
    flat_palette = palette()
    for split, count in splits.items():
        meta_videos, expression_videos = {}, {}
        for index in tqdm(range(count), desc=f"synthetic {split}", unit="video"):
            images, labels, objects, expressions = generate_video(
                seed, split, index, frames, height, width
            )
            name = f"{split[0]}{index:05d}"
            frame_names = [f"{t:05d}" for t in range(frames)]
            image_dir = out / split / "JPEGImages" / name
            label_dir = out / split / "Annotations" / name
            image_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)
            for frame_name, image, label in zip(frame_names, images, labels):
                Image.fromarray(image).save(image_dir / f"{frame_name}.jpg", quality=jpeg_quality)
                png = Image.fromarray(label, mode="P")
                png.putpalette(flat_palette)
                png.save(label_dir / f"{frame_name}.png")
            meta_videos[name] = {
                "objects": {
                    str(o.obj_id): {
                        "category": o.shape,
                        "frames": [f for f, lab in zip(frame_names, labels) if (lab == o.obj_id).any()],
                        "attributes": {"color": o.color, "size": o.size, "motion": o.motion},
                    }
                    for o in objects
                }
            }
            expression_videos[name] = {
                "expressions": {
                    str(i): {"exp": text, "obj_id": str(obj_id)}
                    for i, (text, obj_id) in enumerate(expressions)
                },
                "frames": frame_names,
            }
        (out / split).mkdir(parents=True, exist_ok=True)
        (out / split / "meta.json").write_text(json.dumps({"videos": meta_videos}, indent=1))
        exp_dir = out / "meta_expressions" / split
        exp_dir.mkdir(parents=True, exist_ok=True)
        (exp_dir / "meta_expressions.json").write_text(
            json.dumps({"videos": expression_videos}, indent=1)
        )
    info = {
        "generator": "training.data.synthetic",
        "videos": videos, "frames": frames, "size": [height, width], "seed": seed,
        "splits": splits,
    }  # fmt: skip
    (out / "synthetic.json").write_text(json.dumps(info, indent=2))
    log.info("wrote %s: %s", out, splits)
    return out


# ----------------------------------------------------------------------------------------
# A Ref-DAVIS17-like valid split (for the ReferFormer protocol, training/davis.py)
# ----------------------------------------------------------------------------------------

ANNOTATORS = 4
VOID = 255


def write_ref_davis(
    out: str | Path,
    videos: int = 3,
    frames: int = 5,
    size: tuple[int, int] = (64, 96),
    seed: int = 0,
    void_width: int = 1,
    jpeg_quality: int = 92,
) -> Path:
    """A small ``valid`` split laid out as ReferFormer's conversion of Ref-DAVIS17 lays it out
    (tools/data/convert_davis_to_ytvos.py in github.com/wjn922/ReferFormer): several objects per
    video, every object visible in the first frame (DAVIS counts a video's objects there), four
    expressions per object, one per annotator set, numbered object-major (expression
    ``4 * k + a`` is object ``k + 1`` in annotator set ``a``), and a ring of void (255) pixels
    ``void_width`` wide around the objects, as DAVIS marks uncertain boundaries. Separate from
    ``write_dataset``, whose output it leaves unchanged. Returns ``out``."""
    from scipy import ndimage

    out = Path(out)
    height, width = size
    flat_palette = palette()
    expression_videos = {}
    for index in range(videos):
        rng = np.random.default_rng([seed, 2, index])  # 2: neither train (0) nor valid (1)
        for _ in range(50):
            objects = sample_objects(rng, height, width, frames)
            images, labels = render_video(objects, rng, frames, height, width)
            options = [describe(obj, objects, labels, rng) for obj in objects]
            first = set(np.unique(labels[0]).tolist())
            if all(options) and first >= {o.obj_id for o in objects}:
                break
        else:
            raise RuntimeError(f"could not generate a Ref-DAVIS-like scene for video {index}")
        ring = np.stack([
            ndimage.binary_dilation(frame > 0, iterations=void_width) & (frame == 0) for frame in labels
        ])  # fmt: skip
        labels = labels.copy()
        labels[ring] = VOID
        name = f"d{index:05d}"
        frame_names = [f"{t:05d}" for t in range(frames)]
        image_dir = out / "valid" / "JPEGImages" / name
        label_dir = out / "valid" / "Annotations" / name
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        for frame_name, image, label in zip(frame_names, images, labels):
            Image.fromarray(image).save(image_dir / f"{frame_name}.jpg", quality=jpeg_quality)
            png = Image.fromarray(label, mode="P")
            png.putpalette(flat_palette)
            png.save(label_dir / f"{frame_name}.png")
        expressions = {}
        for k, (obj, texts) in enumerate(zip(objects, options)):
            for a in range(ANNOTATORS):  # fewer wordings than annotators: some repeat one
                expressions[str(ANNOTATORS * k + a)] = {"exp": texts[a % len(texts)], "obj_id": str(obj.obj_id)}
        expression_videos[name] = {"expressions": expressions, "frames": frame_names}
    exp_dir = out / "meta_expressions" / "valid"
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / "meta_expressions.json").write_text(json.dumps({"videos": expression_videos}, indent=1))
    info = {
        "generator": "training.data.synthetic.write_ref_davis", "videos": videos, "frames": frames,
        "size": [height, width], "seed": seed, "void_width": void_width, "splits": {"valid": videos},
    }  # fmt: skip
    (out / "synthetic.json").write_text(json.dumps(info, indent=2))
    log.info("wrote %s: a Ref-DAVIS-like valid split of %d videos", out, videos)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the synthetic referring-video dataset.")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--videos", type=int, default=400)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", default="128x224", help="HxW")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--valid-fraction", type=float, default=0.1)
    parser.add_argument("--ref-davis", action="store_true",
                        help="write instead a Ref-DAVIS17-like valid split of --videos videos (four "
                             "annotator expression sets per object, void pixels), for "
                             "training/evaluate.py --dataset davis")
    args = parser.parse_args(argv)
    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must look like 128x224, got {args.size!r}")
    if args.videos < 2 or args.frames < 1 or min(height, width) < 32:
        parser.error("need --videos >= 2, --frames >= 1 and a size of at least 32x32")
    logging.basicConfig(level=logging.INFO)
    if args.ref_davis:
        write_ref_davis(args.out, args.videos, args.frames, (height, width), args.seed)
    else:
        write_dataset(args.out, args.videos, args.frames, (height, width), args.seed, args.valid_fraction)


if __name__ == "__main__":
    main()
