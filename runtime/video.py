"""Reading videos: a file, a folder of frames, an array, or any iterable of frames.

``open_video`` decodes frame by frame (``VideoStream``), so a long video is never held whole:
the predictor's ``stream`` reads one window at a time. ``read_video`` / ``load_video`` collect
a stream into one ``uint8 [T, H, W, 3]`` RGB array. OpenCV decodes files; PIL reads frame
folders. No torch. Writing masks and overlays is ``runtime.writers``.

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

- an iterable of frames (a generator, say): each frame must be ``uint8 [H, W, 3]`` of the
  first frame's size; it is checked as it arrives and named by its index.

A stream finds out that a file is cut short when it gets there: it then raises ``VideoError``
naming the file and the last frame that decoded, after the frames before it were yielded (a
caller writing outputs as it goes must not commit them: ``runtime.outputs`` stages them).
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


class VideoError(ValueError):
    """A video that cannot be read: missing, undecodable, empty or of inconsistent size."""


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
            ``[T, H, W, 3]`` uint8 RGB, or a list (or any iterable) of ``[H, W, 3]`` frames.
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
    stream = open_video(source, max_frames, allow_partial)
    names, frames = [], []
    for name, frame in stream:
        names.append(name)
        frames.append(frame)
    return Video(np.stack(frames), names, stream.source, stream.expected_frames, stream.partial)


def open_video(source, max_frames: int | None = None, allow_partial: bool = False) -> VideoStream:
    """A ``VideoStream`` over ``source`` (see ``read_video`` for what it can be). What can be
    checked before decoding is checked here: the path exists and is a regular file or a
    folder of uniquely named images, the file opens, an array has the right shape and type."""
    if max_frames is not None and max_frames < 1:
        raise VideoError(f"max_frames must be at least 1, got {max_frames}")
    if isinstance(source, (np.ndarray, list, tuple)):
        frames = _check_array(source)[:max_frames]
        names = (f"{i:05d}" for i in range(len(frames)))
        return VideoStream(zip(names, frames), "array", length=len(frames))
    if not isinstance(source, (str, Path)):
        return VideoStream(_checked_frames(source, max_frames), "iterable")
    path = Path(source)
    if not path.exists():
        raise VideoError(f"video {path} does not exist")
    if path.is_dir():
        files = frame_files(path)[:max_frames]
        return VideoStream(_folder_frames(files), str(path), length=len(files))
    _check_regular(path, "video")
    return _file_stream(path, max_frames, allow_partial)


class VideoStream:
    """Frames of one video as ``(name, uint8 [H, W, 3] RGB)`` pairs, decoded as they are asked
    for. Iterate it once. ``count`` is the frames yielded so far; ``partial`` is set when
    ``allow_partial`` let a cut file through (after the iteration ends)."""

    def __init__(self, frames, source: str, expected_frames: int | None = None,
                 length: int | None = None) -> None:  # fmt: skip
        self._frames = frames
        self.source = source
        # The count a file's container records, which the decoded frames must reach.
        self.expected_frames = expected_frames
        # How many frames there will be, where that is known before decoding (progress).
        self.length = length if length is not None else expected_frames
        self.count = 0
        self.partial: dict | None = None
        self.size: tuple[int, int] | None = None  # (H, W) of the first frame

    def __iter__(self):
        for name, frame in self._frames:
            if self.size is None:
                self.size = frame.shape[:2]
            self.count += 1
            yield name, frame
        if self.count == 0:
            raise VideoError(f"no frame could be decoded from {self.source} (an empty video)")


def _checked_frames(frames, max_frames: int | None):
    """Frames of an iterable, each checked as it arrives: uint8 ``[H, W, 3]``, one size."""
    first = None
    for index, frame in enumerate(frames):
        if max_frames is not None and index >= max_frames:
            return
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
            raise VideoError(
                f"frame {index} must be uint8 [H, W, 3] RGB, got {frame.dtype} {tuple(frame.shape)}"
            )
        if first is not None and frame.shape != first:
            raise VideoError(f"frame {index} is {frame.shape[1]}x{frame.shape[0]}, the first "
                             f"frame {first[1]}x{first[0]}")  # fmt: skip
        first = frame.shape
        yield f"{index:05d}", np.ascontiguousarray(frame)


def _folder_frames(files: list[Path]):
    first = None
    for file in files:
        frame = read_image(file)
        if first is not None and frame.shape != first:
            raise VideoError(
                f"frame {file.name} is {frame.shape[1]}x{frame.shape[0]}, "
                f"the first frame {first[1]}x{first[0]}"
            )
        first = frame.shape
        yield file.stem, frame


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


def _file_stream(path: Path, max_frames: int | None, allow_partial: bool) -> VideoStream:
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise VideoError(f"cannot open video {path} (not a video OpenCV can decode)")
    # The container's count; 0 or negative (or NaN) when it records none.
    reported = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    expected = int(reported) if math.isfinite(reported) and reported > 0 else None
    stream = VideoStream(None, str(path), expected)
    stream._frames = _decode(capture, path, stream, max_frames, allow_partial)
    return stream


def _decode(capture, path: Path, stream: VideoStream, max_frames: int | None,
            allow_partial: bool):  # fmt: skip
    import cv2

    expected = stream.expected_frames
    wanted = expected if max_frames is None else min(expected or max_frames, max_frames)
    count = 0
    try:
        while max_frames is None or count < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            yield f"{count:05d}", cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            count += 1
    finally:
        capture.release()
    if count == 0:
        raise VideoError(f"no frame could be decoded from {path} (corrupt or empty video)")
    if expected is None:
        log.warning(
            "%s records no frame count: read %d frames until decoding stopped, which cannot "
            "tell a whole video from a truncated one", path, count,
        )  # fmt: skip
    elif count < wanted:
        message = (
            f"video {path}: decoding failed at frame {count} of {expected} (the frame count "
            f"its container records; the last good frame is {count - 1}): the file is "
            "truncated or corrupt"
        )
        if not allow_partial:
            raise VideoError(
                f"{message}; to segment the {count} frames that decode, allow a partial "
                "video (--allow-partial, or allow_partial=True)"
            )
        log.warning("%s; using the %d frames that decode (partial video allowed)", message,
                    count)  # fmt: skip
        stream.partial = {"frames_decoded": count, "frames_expected": expected,
                          "reason": message}  # fmt: skip


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``[T, H, W, 3]`` to ``size`` (H, W); a no-op at that size."""
    import cv2

    height, width = size
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack(
        [cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) for f in frames]
    )
