"""Reading videos (a file, a folder of frames, an array) and writing masks and overlays.

Frames are returned as one ``uint8 [T, H, W, 3]`` RGB array. OpenCV decodes files; PIL writes
PNG masks and GIFs. No torch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# One colour per expression in overlays (RGB), cycling beyond ten.
PALETTE = np.array(
    [(230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180),
     (70, 240, 240), (245, 130, 48), (240, 50, 230), (210, 245, 60), (250, 190, 190)],
    dtype=np.uint8,
)  # fmt: skip


class VideoError(ValueError):
    """A video that cannot be read: missing, undecodable, empty or of inconsistent size."""


def read_video(source, max_frames: int | None = None) -> tuple[np.ndarray, list[str]]:
    """RGB frames ``uint8 [T, H, W, 3]`` and frame names from a file, a folder or an array.

    Args:
        source: a video file (anything OpenCV decodes: mp4, avi, mkv, ...), a directory of
            images (sorted by name), an array ``[T, H, W, 3]`` uint8 RGB, or a list of arrays.
        max_frames: read at most this many frames.
    Returns:
        (frames, names): names are the image stems for a folder, else zero-padded indices.
    """
    if isinstance(source, np.ndarray) or isinstance(source, (list, tuple)):
        frames = _check_array(source)
        names = [f"{i:05d}" for i in range(len(frames))]
    else:
        path = Path(source)
        if not path.exists():
            raise VideoError(f"video {path} does not exist")
        if path.is_dir():
            frames, names = _read_folder(path, max_frames)
        else:
            frames = _read_file(path, max_frames)
            names = [f"{i:05d}" for i in range(len(frames))]
    if max_frames is not None:
        frames, names = frames[:max_frames], names[:max_frames]
    return frames, names


def _check_array(source) -> np.ndarray:
    if isinstance(source, (list, tuple)):
        if not source:
            raise VideoError("the frame list is empty")
        shapes = {np.asarray(f).shape for f in source}
        if len(shapes) > 1:
            raise VideoError(f"frames of one video must share a size, got shapes {sorted(shapes)}")
        source = np.stack([np.asarray(f) for f in source])
    if source.ndim != 4 or source.shape[-1] != 3:
        raise VideoError(f"frames must be [T, H, W, 3] RGB, got shape {tuple(source.shape)}")
    if source.shape[0] == 0:
        raise VideoError("the video has no frames (T = 0)")
    if source.dtype != np.uint8:
        raise VideoError(f"frames must be uint8 RGB, got dtype {source.dtype}")
    return np.ascontiguousarray(source)


def _read_folder(path: Path, max_frames: int | None) -> tuple[np.ndarray, list[str]]:
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise VideoError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    files = files[:max_frames] if max_frames else files
    frames = []
    for file in files:
        try:
            with Image.open(file) as image:
                frames.append(np.asarray(image.convert("RGB")))
        except OSError as error:
            raise VideoError(f"cannot decode frame {file}: {error}") from None
        if frames[-1].shape != frames[0].shape:
            raise VideoError(
                f"frame {file.name} is {frames[-1].shape[1]}x{frames[-1].shape[0]}, "
                f"the first frame {frames[0].shape[1]}x{frames[0].shape[0]}"
            )
    return np.stack(frames), [f.stem for f in files]


def _read_file(path: Path, max_frames: int | None) -> np.ndarray:
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise VideoError(f"cannot open video {path} (not a video OpenCV can decode)")
    frames = []
    try:
        while max_frames is None or len(frames) < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    if not frames:
        raise VideoError(f"no frame could be decoded from {path} (corrupt or empty video)")
    return np.stack(frames)


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``[T, H, W, 3]`` to ``size`` (H, W); a no-op at that size."""
    import cv2

    height, width = size
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack(
        [cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) for f in frames]
    )


def write_masks(masks: np.ndarray, names: list[str], out_dir: Path) -> None:
    """One expression's masks ``[T, H, W]`` bool as 0/255 PNGs named after the frames."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, mask in zip(names, masks):
        Image.fromarray(mask.astype(np.uint8) * 255).save(out_dir / f"{name}.png")


def overlay(frames: np.ndarray, masks: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Frames ``[T, H, W, 3]`` with each expression's masks ``[E, T, H, W]`` tinted in its
    palette colour and outlined."""
    import cv2

    out = frames.astype(np.float32)
    for index, expression_masks in enumerate(masks):
        colour = PALETTE[index % len(PALETTE)].astype(np.float32)
        for t, mask in enumerate(expression_masks):
            out[t][mask] = (1 - alpha) * out[t][mask] + alpha * colour
    out = out.astype(np.uint8)
    for index, expression_masks in enumerate(masks):
        colour = tuple(int(c) for c in PALETTE[index % len(PALETTE)])
        for t, mask in enumerate(expression_masks):
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)  # fmt: skip
            cv2.drawContours(out[t], contours, -1, colour, 1)
    return out


def write_video(frames: np.ndarray, path: Path, fps: float = 10.0) -> Path:
    """Write RGB frames as ``.mp4`` (OpenCV, mp4v) or ``.gif`` (PIL), by the suffix asked for."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:],
                       duration=int(1000 / fps), loop=0)  # fmt: skip
        return path
    import cv2

    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise VideoError(f"OpenCV cannot write {path}; use a .gif path instead")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path
