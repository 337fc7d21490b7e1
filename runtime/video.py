"""Reading videos (a file, a folder of frames, an array) and writing masks and overlays.

Frames are returned as one ``uint8 [T, H, W, 3]`` RGB array. OpenCV decodes files; PIL reads
frame folders and writes PNG masks and GIFs. No torch.

What counts as a whole video (a partial one is an error unless ``allow_partial``):

- a file: only a regular file (a FIFO, device or socket would block or never end), and it
  must decode to the frame count its container records (``CAP_PROP_FRAME_COUNT``); a read
  that fails before that count is a truncated or corrupt file. When a container records no
  count, decoding until the first failure is all there is to go on, and a warning says so.
- a folder: its images (``IMAGE_SUFFIXES``, any case; names starting with "." are ignored)
  in natural order of their names: digit runs compare as numbers, the rest case-insensitively
  (``frame2`` before ``frame10``, ``00009`` before ``00010``). Frame names are the file names
  without suffix; two images whose names differ only in suffix or case (``00000.jpg`` and
  ``00000.png``) are an error, since their masks would be written to the same file.
- 16-bit images (PNG, TIFF) are scaled to 8 bits (65535 -> 255), as every decoder does for
  colour images; 32-bit integer and floating-point images are refused (their range is not
  known).

Writes check what they wrote: a PNG or GIF that cannot be written raises ``WriteError`` naming
it, and an MP4 is reopened and its frames counted, since OpenCV's writer reports no error (a
full disk or a file-size limit leaves a cut, unplayable file behind it silently).
"""

from __future__ import annotations

import logging
import math
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# PIL modes that convert to RGB without losing range; 16-bit ones are scaled first.
EIGHT_BIT_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
# One colour per expression in overlays (RGB), cycling beyond ten.
PALETTE = np.array(
    [(230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180),
     (70, 240, 240), (245, 130, 48), (240, 50, 230), (210, 245, 60), (250, 190, 190)],
    dtype=np.uint8,
)  # fmt: skip


class VideoError(ValueError):
    """A video that cannot be read: missing, undecodable, empty or of inconsistent size."""


class WriteError(OSError):
    """A mask or overlay that could not be written, or does not read back as written;
    ``path`` is the file."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


@dataclass
class Video:
    """What ``load_video`` read: the frames, their names, and whether the source was whole.

    ``expected_frames`` is the count the container records (files only; None when it records
    none or the source is a folder or an array). ``partial`` describes where decoding stopped
    early; it is set only when ``allow_partial`` let such a video through.
    """

    frames: np.ndarray
    names: list[str]
    source: str
    expected_frames: int | None = None
    partial: dict | None = None


def read_video(
    source, max_frames: int | None = None, allow_partial: bool = False
) -> tuple[np.ndarray, list[str]]:
    """RGB frames ``uint8 [T, H, W, 3]`` and frame names from a file, a folder or an array.

    Args:
        source: a video file (anything OpenCV decodes: mp4, avi, mkv, ...), a directory of
            images (in natural order of their names, see the module's docstring), an array
            ``[T, H, W, 3]`` uint8 RGB, or a list of arrays.
        max_frames: read at most this many frames.
        allow_partial: use the frames that decode from a truncated or corrupt file (with a
            warning) instead of raising ``VideoError``.
    Returns:
        (frames, names): names are the image stems for a folder, else zero-padded indices.
    """
    video = load_video(source, max_frames, allow_partial)
    return video.frames, video.names


def load_video(source, max_frames: int | None = None, allow_partial: bool = False) -> Video:
    """``read_video``, returning a ``Video`` that also says whether the source was whole."""
    if max_frames is not None and max_frames < 1:
        raise VideoError(f"max_frames must be at least 1, got {max_frames}")
    if isinstance(source, (np.ndarray, list, tuple)):
        frames = _check_array(source)[:max_frames]
        return Video(frames, [f"{i:05d}" for i in range(len(frames))], "array")
    path = Path(source)
    if not path.exists():
        raise VideoError(f"video {path} does not exist")
    if path.is_dir():
        frames, names = _read_folder(path, max_frames)
        return Video(frames, names, str(path))
    _check_regular(path, "video")
    return _read_file(path, max_frames, allow_partial)


def _check_regular(path: Path, what: str) -> None:
    """Refuse anything but a regular file: opening a FIFO blocks until a writer comes, and a
    device or socket has no end, so the read would hang instead of failing."""
    mode = path.stat().st_mode
    if stat.S_ISREG(mode):
        return
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISDIR, "a directory"))  # fmt: skip
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    raise VideoError(f"{what} {path} is {kind}, expected a regular file")


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


def natural_key(name: str) -> tuple:
    """Sort key of natural order: digit runs as numbers, the rest case-insensitively, ties
    broken by the name itself (so the order is total and stable across file systems)."""
    parts = re.split(r"(\d+)", name)
    # re.split alternates text and digits (starting with text), so the types line up.
    return tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts)), name


def frame_files(path: Path) -> list[Path]:
    """A folder's frame images in natural order, after checking that every frame name (the
    name without suffix, ignoring case) is unique and every image is a regular file."""
    files = [
        p
        for p in path.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]
    if not files:
        raise VideoError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    by_stem: dict[str, list[Path]] = {}
    for file in files:
        by_stem.setdefault(file.stem.casefold(), []).append(file)
    clashes = [sorted(p.name for p in group) for group in by_stem.values() if len(group) > 1]
    if clashes:
        shown = "; ".join(" and ".join(group) for group in sorted(clashes)[:5])
        raise VideoError(
            f"frame folder {path} has {len(clashes)} frame name(s) used by more than one image "
            f"({shown}): each frame's mask is named after it, so one would overwrite another; "
            "keep one image per frame"
        )
    for file in files:
        _check_regular(file, "frame")
    return sorted(files, key=lambda p: natural_key(p.stem))


def _read_folder(path: Path, max_frames: int | None) -> tuple[np.ndarray, list[str]]:
    files = frame_files(path)[:max_frames]
    frames = []
    for file in files:
        frames.append(read_image(file))
        if frames[-1].shape != frames[0].shape:
            raise VideoError(
                f"frame {file.name} is {frames[-1].shape[1]}x{frames[-1].shape[0]}, "
                f"the first frame {frames[0].shape[1]}x{frames[0].shape[0]}"
            )
    return np.stack(frames), [f.stem for f in files]


def read_image(file: Path) -> np.ndarray:
    """One image as ``uint8 [H, W, 3]`` RGB; 16-bit grayscale scaled to 8 bits.

    PIL's ``convert("RGB")`` clips 16-bit values at 255, which turns a 16-bit grayscale frame
    white; they are scaled here instead. PIL already scales 16-bit colour PNGs and TIFFs when
    it opens them (mode "RGB").
    """
    from PIL import Image

    try:
        with Image.open(file) as image:
            mode, kind = image.mode, image.format
            if mode in EIGHT_BIT_MODES:
                return np.asarray(image.convert("RGB"))
            pixels = np.asarray(image)
    except OSError as error:
        raise VideoError(f"cannot decode frame {file}: {error}") from None
    # PIL opens 16-bit grayscale PNGs as "I" (32-bit) in some versions; PNG has at most 16.
    if mode in SIXTEEN_BIT_MODES or (mode == "I" and kind == "PNG"):
        gray = (pixels.astype(np.uint32) * 255 + 32767) // 65535
        return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)
    raise VideoError(
        f"frame {file} has {mode!r} pixels ({pixels.dtype}), which have no fixed range to map "
        "to 8 bits; save the frames as 8- or 16-bit images"
    )


def _read_file(path: Path, max_frames: int | None, allow_partial: bool) -> Video:
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise VideoError(f"cannot open video {path} (not a video OpenCV can decode)")
    # The container's count; 0 or negative (or NaN) when it records none.
    reported = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    expected = int(reported) if math.isfinite(reported) and reported > 0 else None
    wanted = expected if max_frames is None else min(expected or max_frames, max_frames)
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
    video = Video(np.stack(frames), [f"{i:05d}" for i in range(len(frames))], str(path), expected)
    if expected is None:
        log.warning(
            "%s records no frame count: read %d frames until decoding stopped, which cannot "
            "tell a whole video from a truncated one", path, len(frames),
        )  # fmt: skip
    elif len(frames) < wanted:
        message = (
            f"video {path}: decoding failed at frame {len(frames)} of {expected} (the frame "
            "count its container records): the file is truncated or corrupt"
        )
        if not allow_partial:
            raise VideoError(
                f"{message}; to segment the {len(frames)} frames that decode, allow a partial "
                "video (--allow-partial, or allow_partial=True)"
            )
        log.warning("%s; using the %d frames that decode (partial video allowed)", message,
                    len(frames))  # fmt: skip
        video.partial = {"frames_decoded": len(frames), "frames_expected": expected,
                         "reason": message}  # fmt: skip
    return video


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``[T, H, W, 3]`` to ``size`` (H, W); a no-op at that size."""
    import cv2

    height, width = size
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack(
        [cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) for f in frames]
    )


def write_masks(masks: np.ndarray, names: list[str], out_dir: Path) -> list[Path]:
    """One expression's masks ``[T, H, W]`` bool as 0/255 PNGs named after the frames; returns
    the files written. A failed write raises ``WriteError`` naming the file."""
    from PIL import Image

    if len(set(names)) != len(names):
        raise ValueError("frame names must be unique: each names its mask file")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, mask in zip(names, masks):
        file = out_dir / f"{name}.png"
        try:
            Image.fromarray(mask.astype(np.uint8) * 255).save(file)
        except OSError as error:
            message = f"cannot write mask {file}: {error.strerror or error}"
            raise WriteError(message, file) from error
        written.append(file)
    return written


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


def check_fps(fps: float) -> float:
    """``fps`` as a float, if it is a finite number above zero."""
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise ValueError(f"fps must be a number above 0, got {fps!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"fps must be a finite number above 0, got {fps!r}")
    return value


def write_video(frames: np.ndarray, path: Path, fps: float = 10.0) -> Path:
    """Write RGB frames as ``.mp4`` (OpenCV, mp4v) or ``.gif`` (PIL), by the suffix asked for,
    then read the file back: ``WriteError`` names it if it is cut short or unreadable."""
    fps = check_fps(fps)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        _write_gif(frames, path, fps)
        return path
    import cv2

    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise WriteError(f"OpenCV cannot write {path}; use a .gif path instead", path)
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    _check_mp4(path, len(frames))
    return path


def _check_mp4(path: Path, count: int) -> None:
    """Reopen a just-written video: it must record ``count`` frames and decode the last one.
    OpenCV's writer ignores failed writes, so this is the only sign of a cut file."""
    import cv2

    hint = "the write was cut short (a full disk or a file-size limit?)"
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise WriteError(
                f"overlay {path} was written but does not open as a video: {hint}", path
            )
        recorded = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if recorded != count:
            raise WriteError(
                f"overlay {path} holds {recorded} frames, {count} were written: {hint}", path
            )
        capture.set(cv2.CAP_PROP_POS_FRAMES, count - 1)
        if not capture.read()[0]:
            raise WriteError(
                f"overlay {path}: its last frame ({count - 1}) does not decode: {hint}", path
            )
    finally:
        capture.release()


def _write_gif(frames: np.ndarray, path: Path, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    try:
        images[0].save(path, save_all=True, append_images=images[1:],
                       duration=int(1000 / fps), loop=0)  # fmt: skip
    except OSError as error:
        message = f"cannot write overlay {path}: {error.strerror or error}"
        raise WriteError(message, path) from error
    # PIL merges identical consecutive frames into one, so a GIF may hold fewer frames than
    # were given, never more; each must decode.
    try:
        with Image.open(path) as gif:
            stored = gif.n_frames
            for index in range(stored):
                gif.seek(index)
                gif.load()
    except (OSError, EOFError) as error:
        raise WriteError(f"overlay {path} does not read back as a GIF: {error}", path) from error
    if not 1 <= stored <= len(frames):
        raise WriteError(f"overlay {path} holds {stored} frames, {len(frames)} were written", path)
