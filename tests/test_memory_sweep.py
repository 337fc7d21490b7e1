"""benchmarks/memory.py: peak RSS per (backend, T, E), each point in a process of its own, with a
table and a figure. Memory is only checked to be measured and consistent; no limit is asserted."""

from __future__ import annotations

import json

import pytest

from benchmarks import memory

pytestmark = pytest.mark.slow  # one process per point


def test_memory_sweep_measures_every_point(tiny_bundle, tmp_path, capsys):
    results = memory.main([
        "--bundle", str(tiny_bundle), "--backends", "ort", "--frames", "2", "6",
        "--expressions", "1", "4", "--threads", "1", "--out", str(tmp_path), "--tag", "t",
    ])  # fmt: skip
    data = json.loads((tmp_path / "memory-t.json").read_text())
    assert data == json.loads(json.dumps(results))
    points = {(p["frames"], p["expressions"]): p for p in data["points"]}
    assert set(points) == {(2, 1), (2, 4), (6, 1), (6, 4)}
    for point in points.values():
        assert point["status"] == "measured", point
        assert point["peak_rss_mb"] >= point["rss_loaded_mb"] >= point["rss_before_mb"] > 0
    # A call over 12 frame-expressions needs at least the memory of one over 2.
    assert points[(6, 4)]["peak_rss_mb"] >= points[(2, 1)]["peak_rss_mb"] * 0.95
    assert "| ort | video | 6 | 4 |" in capsys.readouterr().out
    if (tmp_path / "memory-t.png").exists():
        assert (tmp_path / "memory-t.png").stat().st_size > 0


def test_points_outside_the_profiles_are_refused_first(tiny_bundle, tmp_path):
    with pytest.raises(ValueError, match=r"T = \[7\] outside the bundle's T profile \[1, 6\]"):
        memory.main(["--bundle", str(tiny_bundle), "--frames", "7", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_rows_wait_for_freed_memory_to_be_handed_back(tmp_path, monkeypatch):
    """benchmarks.machine.settle_freed_memory waits while the page-reporting counter grows
    (a virtual machine's guest handing the previous row's memory to its host), not at all
    where there is no counter, and never past its timeout."""
    import threading

    from benchmarks import machine

    monkeypatch.setattr(machine, "PAGE_REPORTING", tmp_path / "absent")
    assert machine.settle_freed_memory() == 0.0
    counter = tmp_path / "reported_kib"

    def write(value: int) -> None:  # whole, as sysfs reads are
        (tmp_path / "next").write_text(f"{value}\n")
        (tmp_path / "next").replace(counter)

    write(1000)
    monkeypatch.setattr(machine, "PAGE_REPORTING", counter)
    assert machine.settle_freed_memory(timeout_s=5, interval_s=0.05) < 1  # already quiet
    stop = threading.Event()

    def report(ticks: int, start: int) -> None:  # 1 GiB a tick, every 0.05 s
        for tick in range(ticks):
            write(start + (tick + 1) * (1 << 20))
            if stop.wait(0.05):
                return

    writer = threading.Thread(target=report, args=(12, 1000))  # 0.6 s, then quiet
    writer.start()
    waited = machine.settle_freed_memory(timeout_s=5, interval_s=0.1)
    writer.join()
    assert 0.5 <= waited < 5
    growing = threading.Thread(target=report, args=(400, 1 << 30))  # 20 s: past the timeout
    growing.start()
    assert machine.settle_freed_memory(timeout_s=1, interval_s=0.1) == pytest.approx(1, abs=0.3)
    stop.set()
    growing.join()
