"""Work in a child process of its own, and this process's peak resident memory.

Graphs run one after another in one process inherit each other's memory: a heap the allocator
keeps, an arena onnxruntime never returns, OpenVINO's compiled buffers. At the paper size one
onnxruntime FP32 call alone peaks near 21 GB, so two runs in one process may not fit in 24 GB,
and a peak measured after another run is not the run's own. In a ``spawn`` child (a fresh
interpreter, nothing inherited) a run's peak RSS is its own, the parent's memory does not stack
under it, and a child killed for memory is an error naming how it died instead of the end of
the parent. The benchmarks' rows and calibration's agreement check run this way.
"""

from __future__ import annotations

import multiprocessing
import resource
import signal
from pathlib import Path
from typing import Any


class ChildDied(RuntimeError):
    """A child process ended without sending its result (a signal, the OOM killer)."""


def max_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB.

    Linux's ``VmHWM`` (``/proc/self/status``), the high-water mark of this process's own
    address space. Not ``ru_maxrss``: it survives ``execve``, so a spawned child starts with its
    parent's peak (a child of a 1.4 GB pytest process reported 1.4 GB before doing anything).
    Elsewhere ``ru_maxrss`` is the fallback (KiB on Linux).
    """
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_in_child(target: Any, arguments: tuple, name: str) -> Any:
    """Run ``target(connection, *arguments)`` in a fresh ``spawn`` child and return what it
    sent; raise ``ChildDied`` naming how the child died if it sent nothing."""
    context = multiprocessing.get_context("spawn")
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=target, args=(writer, *arguments), name=name)
    process.start()
    writer.close()  # the child holds the only writer: a dead child means EOF here
    try:
        result = reader.recv()
    except EOFError:
        process.join()
        raise ChildDied(death_reason(process.exitcode, name)) from None
    finally:
        reader.close()
    process.join()
    return result


def death_reason(exitcode: int | None, name: str = "the row") -> str:
    """How a child that sent nothing ended, in words."""
    if exitcode is not None and exitcode < 0:
        signal_name = signal.Signals(-exitcode).name
        hint = " (killed: out of memory?)" if signal_name == "SIGKILL" else ""
        return f"{name}'s process died from {signal_name}{hint} before reporting"
    return f"{name}'s process exited with code {exitcode} before reporting"
