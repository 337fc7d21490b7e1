"""Issue items on reading videos: a truncated or corrupt file is refused, not silently cut
(#5); 16-bit frames are scaled, not clipped white (#6); a frame folder's names are unique and
in natural order (#7); only a regular file is read as a video (#14, a FIFO hung the run).

Real files in real formats: an MJPG AVI and an MP4 written by OpenCV and then cut or
corrupted, 16-bit PNG and TIFF frames written by OpenCV, a real FIFO.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from runtime.__main__ import main
from runtime.video import VideoError, read_video
from runtime.writers import write_video

REPO = Path(__file__).parents[2]
FRAMES = 12


def noise(count: int = FRAMES, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 48, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def whole_avi(tmp_path_factory) -> Path:
    """12 MJPG frames in an AVI; AVI keeps its frame count in the header, so a cut file still
    opens, and decodes to the frames before the cut."""
    path = tmp_path_factory.mktemp("avi") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (48, 32))
    for frame in noise():
        writer.write(frame)
    writer.release()
    return path


def cut(source: Path, fraction: float, target: Path) -> Path:
    target.write_bytes(source.read_bytes()[: int(source.stat().st_size * fraction)])
    return target


@pytest.mark.parametrize("fraction", [0.6, 0.3])
def test_a_truncated_video_is_refused_unless_partial_is_allowed(fraction, whole_avi, tmp_path,
                                                                caplog):  # fmt: skip
    assert len(read_video(whole_avi)[0]) == FRAMES
    video = cut(whole_avi, fraction, tmp_path / "cut.avi")
    with pytest.raises(VideoError, match="decoding failed at frame") as refused:
        read_video(video)
    found = re.search(r"video (\S+): decoding failed at frame (\d+) of (\d+)", str(refused.value))
    assert found and found[1] == str(video) and found[3] == str(FRAMES)

    with caplog.at_level(logging.WARNING, logger="runtime.video"):
        frames, names = read_video(video, allow_partial=True)
    assert len(frames) == len(names) == int(found[2]) < FRAMES
    assert f"frame {found[2]} of {FRAMES}" in caplog.text



def test_the_command_line_refuses_a_video_cut_mid_stream_and_writes_nothing(
    whole_avi, tiny_bundle, tmp_path, capsys
):
    """The command line decodes window by window, so it meets the break after earlier windows
    were segmented: it is still an error naming the file and the last good frame, and none of
    the windows' outputs is left behind."""
    video = cut(whole_avi, 0.6, tmp_path / "cut.avi")
    good = len(read_video(video, allow_partial=True)[0])
    out = tmp_path / "out"
    argv = ["segment", "--bundle", str(tiny_bundle), "--video", str(video), "--text",
            "the red circle", "--out", str(out), "--window", "2", "--overlap", "1"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: video {video}: decoding failed at frame {good} of {FRAMES}" in err
    assert f"the last good frame is {good - 1}" in err
    assert "--allow-partial" in err and "Traceback" not in err
    assert not out.exists() or not any(out.rglob("*.png")) and not list(out.glob("cut_*"))

    assert main([*argv, "--allow-partial"]) == 0
    result = json.loads((out / "cut_result.json").read_text())
    assert result["frames"] == good and result["partial_video"]["frames_decoded"] == good
    assert len(list((out / "Annotations" / "cut" / "0").glob("*.png"))) == good


def test_an_mp4_corrupt_mid_stream_is_refused(tmp_path):
    whole = write_video(noise(), tmp_path / "whole.mp4")
    data = bytearray(whole.read_bytes())
    box = data.index(b"mdat") - 4  # the frame data's box: a 4-byte size, then "mdat"
    size = struct.unpack(">I", data[box : box + 4])[0]
    start = box + int(size * 0.6)
    data[start : start + 3000] = bytes(3000)  # zeros over frames 60% of the way in
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(VideoError, match=rf"corrupt.mp4: decoding failed at frame \d+ of {FRAMES}"):
        read_video(corrupt)


def gradient16() -> np.ndarray:
    """A 16-bit grayscale ramp over the whole range, 0 .. 65535."""
    return np.linspace(0, 65535, 32 * 48).round().astype(np.uint16).reshape(32, 48)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grayscale_frames_are_scaled_not_clipped(suffix, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    ramp = gradient16()
    for t in range(2):
        assert cv2.imwrite(str(folder / f"{t:05d}{suffix}"), ramp)
    with Image.open(folder / f"00000{suffix}") as image:
        assert image.mode.startswith("I;16")  # a real 16-bit file
    frames, _ = read_video(folder)
    expected = np.round(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert frames.dtype == np.uint8 and frames.shape == (2, 32, 48, 3)
    for channel in range(3):
        np.testing.assert_array_equal(frames[0, ..., channel], expected)
    assert frames.min() == 0 and frames.max() == 255 and 100 < frames.mean() < 155


def test_16_bit_colour_and_float_frames(tmp_path):
    colour = tmp_path / "colour"
    colour.mkdir()
    ramp = gradient16()
    assert cv2.imwrite(str(colour / "00000.png"), np.stack([ramp, ramp // 2, ramp // 4], -1))
    frames, _ = read_video(colour)
    # OpenCV wrote BGR: red is the quarter ramp. Within one step of an exact 16 -> 8 scaling.
    exact = (ramp // 4).astype(np.float64) * 255 / 65535
    assert np.abs(frames[0, ..., 0] - exact).max() <= 1
    floats = tmp_path / "floats"
    floats.mkdir()
    assert cv2.imwrite(str(floats / "00000.tif"), np.random.rand(32, 48).astype(np.float32))
    with pytest.raises(VideoError, match=r"00000.tif has 'F' pixels .* no fixed range"):
        read_video(floats)


def test_two_images_of_one_frame_are_refused(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("00000.jpg", "00000.png", "00001.png"):
        Image.fromarray(noise(1)[0]).save(folder / name)
    with pytest.raises(VideoError, match=r"frames has 1 frame name.* \(00000.jpg and 00000.png\)"):
        read_video(folder)


def test_frames_are_in_natural_order(tmp_path):
    """Unpadded numbers: frame2 comes before frame10. Hidden files (macOS's ``._`` copies)
    are not frames."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(1, 13):
        Image.fromarray(np.full((8, 8, 3), index * 10, np.uint8)).save(folder / f"frame{index}.png")
    (folder / "._frame1.png").write_bytes(b"AppleDouble metadata, not an image")
    frames, names = read_video(folder)
    assert names == [f"frame{i}" for i in range(1, 13)]
    assert [int(f[0, 0, 0]) for f in frames] == [i * 10 for i in range(1, 13)]


READ_FIFO = """
import sys
from runtime.video import VideoError, read_video
try:
    read_video(sys.argv[1])
except VideoError as error:
    print(error)
    sys.exit(3)
"""


@pytest.mark.parametrize("where", ["video", "frame"])
def test_a_fifo_is_refused_at_once(where, tmp_path):
    """Opening a FIFO blocks until a writer comes: the read must refuse it, not wait. It runs
    in a child process so that a hang is a timeout, not a stuck test session."""
    if where == "video":
        source = fifo = tmp_path / "clip.mp4"
    else:
        source = tmp_path / "frames"
        source.mkdir()
        Image.fromarray(noise(1)[0]).save(source / "00000.png")
        fifo = source / "00001.png"
    os.mkfifo(fifo)
    try:
        run = subprocess.run([sys.executable, "-c", READ_FIFO, str(source)], cwd=REPO,
                             capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading {source} hung on the FIFO {fifo}")
    assert run.returncode == 3, run.stderr
    assert f"{fifo} is a FIFO, expected a regular file" in run.stdout
