"""Writing what the runtime produces: per-frame PNG masks, and overlay videos painted one frame
at a time with a legend that names each expression in its colour.

Writes check what they wrote: a PNG or GIF that cannot be written raises ``WriteError`` naming
it, and an MP4 is reopened and its frames counted, since OpenCV's writer reports no error (a
full disk or a file-size limit leaves a cut, unplayable file behind it silently).

Overlays are painted in uint8, frame by frame (``paint``): only the pixels of one mask are ever
widened, so a long video never has a float copy. ``OverlayWriter`` appends frames as windows
complete; an MP4 is written as it goes, a GIF is held until ``close`` (PIL writes a GIF in one
call), so long videos should use MP4.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Legend text: OpenCV's Hershey fonts draw ASCII only; longer texts are cut to this many.
LEGEND_CHARACTERS = 48


class WriteError(OSError):
    """A mask or overlay that could not be written, or does not read back as written;
    ``path`` is the file."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


# One colour per expression in overlays (RGB), cycling beyond ten.
PALETTE = np.array(
    [(230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180),
     (70, 240, 240), (245, 130, 48), (240, 50, 230), (210, 245, 60), (250, 190, 190)],
    dtype=np.uint8,
)  # fmt: skip


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


def _legend_text(index: int, text: str) -> str:
    ascii_text = text.encode("ascii", "replace").decode("ascii")
    if len(ascii_text) > LEGEND_CHARACTERS:
        ascii_text = ascii_text[: LEGEND_CHARACTERS - 3] + "..."
    return f"[{index}] {ascii_text}"


def paint(frame: np.ndarray, masks: np.ndarray, labels: list[str] | None = None,
          alpha: float = 0.5) -> np.ndarray:  # fmt: skip
    """One RGB frame ``[H, W, 3]`` uint8 with each expression's mask ``[E, H, W]`` tinted in its
    palette colour and outlined, and a legend of ``labels`` (one per expression) in the same
    colours in the top-left corner. Returns a new uint8 frame; the input is not changed."""
    import cv2

    out = frame.copy()
    for index, mask in enumerate(masks):
        colour = PALETTE[index % len(PALETTE)]
        if mask.any():
            region = out[mask].astype(np.float32)  # only this mask's pixels are widened
            out[mask] = ((1 - alpha) * region + alpha * colour + 0.5).astype(np.uint8)
    for index, mask in enumerate(masks):
        colour = tuple(int(c) for c in PALETTE[index % len(PALETTE)])
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)  # fmt: skip
        cv2.drawContours(out, contours, -1, colour, 1)
    if labels:
        _draw_legend(out, labels)
    return out


def _draw_legend(frame: np.ndarray, labels: list[str]) -> None:
    """Each label on its own line, in its expression's colour, over a dark band so it reads
    on any background; scaled to the frame's height."""
    import cv2

    height = frame.shape[0]
    scale = max(0.3, height / 720 * 0.6)
    thickness = 1 if scale < 0.8 else 2
    font = cv2.FONT_HERSHEY_SIMPLEX
    y = 4
    for index, label in enumerate(labels):
        text = _legend_text(index, label)
        (width, text_height), baseline = cv2.getTextSize(text, font, scale, thickness)
        if y + text_height + baseline + 2 > height:
            break  # no room for more lines: the JSON names every expression
        cv2.rectangle(frame, (2, y), (6 + width, y + text_height + baseline + 2), (0, 0, 0), -1)
        colour = tuple(int(c) for c in PALETTE[index % len(PALETTE)])
        cv2.putText(frame, text, (4, y + text_height + 1), font, scale, colour, thickness,
                    cv2.LINE_AA)  # fmt: skip
        y += text_height + baseline + 4


def overlay(frames: np.ndarray, masks: np.ndarray, labels: list[str] | None = None,
            alpha: float = 0.5) -> np.ndarray:  # fmt: skip
    """Frames ``[T, H, W, 3]`` painted with masks ``[E, T, H, W]`` (``paint``, frame by frame)."""
    return np.stack([paint(f, masks[:, t], labels, alpha) for t, f in enumerate(frames)])


def check_fps(fps: float) -> float:
    """``fps`` as a float, if it is a finite number above zero."""
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise ValueError(f"fps must be a number above 0, got {fps!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"fps must be a finite number above 0, got {fps!r}")
    return value


class OverlayWriter:
    """An overlay video written as frames arrive: ``.mp4`` (OpenCV, mp4v) or ``.gif`` (PIL), by
    the suffix. ``write`` paints and appends frames; ``close`` finishes the file and reads it
    back (``WriteError`` names it if it is cut short or unreadable)."""

    def __init__(self, path: str | Path, fps: float = 10.0, labels: list[str] | None = None):
        self.fps = check_fps(fps)
        self.path = Path(path)
        self.labels = labels
        self.count = 0
        self._gif: list[np.ndarray] | None = [] if self.path.suffix.lower() == ".gif" else None
        self._writer = None

    def write(self, frames: np.ndarray, masks: np.ndarray | None = None) -> None:
        """Append frames ``[t, H, W, 3]`` uint8, painted with masks ``[E, t, H, W]`` if given."""
        for t, frame in enumerate(frames):
            if masks is not None:
                frame = paint(frame, masks[:, t], self.labels)
            self._append(frame)

    def _append(self, frame: np.ndarray) -> None:
        self.count += 1
        if self._gif is not None:
            self._gif.append(frame)
            return
        import cv2

        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            height, width = frame.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (width, height))
            if not self._writer.isOpened():
                raise WriteError(f"OpenCV cannot write {self.path}; use a .gif path instead",
                                 self.path)  # fmt: skip
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))

    def close(self) -> Path:
        """Finish the file and check it; returns its path."""
        if self.count == 0:
            raise WriteError(f"overlay {self.path}: no frame was written", self.path)
        if self._gif is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _write_gif(self._gif, self.path, self.fps)
            self._gif = []
            return self.path
        self._writer.release()
        self._writer = None
        _check_mp4(self.path, self.count)
        return self.path

    def abort(self) -> None:
        """Stop without checking (after an error elsewhere); the file is left to the caller."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        self._gif = None


def write_video(frames: np.ndarray, path: Path, fps: float = 10.0) -> Path:
    """Write RGB frames as ``.mp4`` or ``.gif`` by the suffix asked for, then read the file
    back: ``WriteError`` names it if it is cut short or unreadable."""
    writer = OverlayWriter(path, fps)
    writer.write(frames)
    return writer.close()


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


def _write_gif(frames: list[np.ndarray], path: Path, fps: float) -> None:
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
