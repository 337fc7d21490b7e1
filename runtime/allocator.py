"""The C allocator under the runtime's graphs: what glibc's malloc does with the tensors that
onnxruntime allocates without its arena (a memory budget's bounded mode) and that calibration
frees between phases.

- ``release_freed_memory``: freed tensors of a megabyte or more go back to the system at once;
- ``trim_heap``: the heap's free pages go back now;
- ``huge_page_environment``: an environment in which glibc's malloc asks the kernel for
  transparent huge pages (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``). glibc reads it when a
  process starts, so ``python -m runtime`` restarts itself with it
  (``restart_with_huge_pages``), and ``benchmarks/memory.py`` and ``benchmarks/budget.py``
  set it for the children they measure in (``huge_pages_in_children``).

Why huge pages: without an arena every large tensor is fresh memory, and touching fresh memory
costs a page fault per 4 KiB page. On the AMD EPYC virtual machine the benchmarks ran on, whose
guest hands freed pages back to the host, that was about 2.7 s per GiB, and paper-swin-t's
video encoder at 19 frames took 40 s without an arena; with glibc asking for 2 MiB pages (the
kernel's transparent huge pages in ``madvise`` mode, as on most distributions) it took 16-24 s
at the same 4.40 GiB peak (``docs/benchmarks.md``, "Memory budget").
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# glibc serves blocks of at least this size with mmap and returns them to the system on free
# (``release_freed_memory``).
MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


@functools.cache
def _glibc():
    """The C library through ctypes where it is glibc (it has ``mallopt``), else None; looked
    up once (``find_library`` runs ``ldconfig``)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or "libc" not in name:
        return None
    try:
        library = ctypes.CDLL(name)
        library.mallopt  # noqa: B018 - musl and others have no mallopt
    except (OSError, AttributeError):
        return None
    return library


def release_freed_memory() -> bool:
    """Fix glibc's mmap threshold at ``MMAP_THRESHOLD`` for this process, so that freed
    tensors of a megabyte or more go back to the system at once. True where it was set
    (glibc), False elsewhere.

    By default glibc raises the threshold to the size of each mmapped block freed (up to 32
    MB), after which blocks below it come from the heap, where a later run's tensors of other
    sizes fragment what the earlier ones freed. onnxruntime without its arena allocates
    through malloc, so under a budget that was measured on single calls: on paper-swin-t
    (16 + 9 frames, four expressions) the second window raised the peak from 8.00 to 8.30
    GiB; with the threshold fixed it peaked at 7.81 GiB, at the same speed. It is process-wide,
    so the runtime sets it only where it runs onnxruntime without the arena.
    """
    library = _glibc()
    return library is not None and bool(library.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def trim_heap() -> None:
    """Hand the C heap's free pages back to the system now (glibc's ``malloc_trim``; nothing
    elsewhere): what one engine freed may otherwise stay with the allocator and count again
    under the next one's peak (calibration, between range pieces and phases)."""
    library = _glibc()
    if library is not None:
        library.malloc_trim(0)


# glibc's malloc tunable for transparent huge pages (glibc 2.35 and later): 1 = madvise each
# block it maps (and its heap) with MADV_HUGEPAGE.
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb"
HUGE_PAGES_MIN_GLIBC = (2, 35)
# Set to 0 to keep glibc's default (no restart, nothing set).
HUGE_PAGES_SWITCH = "PROXYFORMER_HUGE_PAGES"
_THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def transparent_huge_pages() -> str | None:
    """The kernel's transparent huge page mode ("always", "madvise", "never"), or None where
    there is none to read (not Linux)."""
    try:
        text = _THP_MODE.read_text()
    except OSError:
        return None
    chosen = [word[1:-1] for word in text.split() if word.startswith("[")]
    return chosen[0] if chosen else None


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the glibc this process runs on, or None for another C library."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (ValueError, OSError, AttributeError):
        return None


_THIS_MACHINE = object()


def huge_page_environment(environ: Mapping[str, str] | None = None,
                          glibc: Any = _THIS_MACHINE,
                          thp_mode: Any = _THIS_MACHINE) -> dict[str, str] | None:  # fmt: skip
    """``environ`` (default: this process's) with glibc's malloc asking for transparent huge
    pages, or None where that would change nothing or is not wanted: another C library or a
    glibc before 2.35, a kernel whose huge pages are "always" (already on) or "never" or
    absent, a ``GLIBC_TUNABLES`` that already sets the tunable (the user's choice), or
    ``PROXYFORMER_HUGE_PAGES=0``. ``glibc`` (``glibc_version``) and ``thp_mode``
    (``transparent_huge_pages``) default to this machine's."""
    environ = dict(os.environ if environ is None else environ)
    glibc = glibc_version() if glibc is _THIS_MACHINE else glibc
    thp_mode = transparent_huge_pages() if thp_mode is _THIS_MACHINE else thp_mode
    tunables = environ.get("GLIBC_TUNABLES", "")
    if (
        environ.get(HUGE_PAGES_SWITCH, "1") == "0"
        or glibc is None
        or glibc < HUGE_PAGES_MIN_GLIBC
        or thp_mode != "madvise"
        or HUGE_PAGES_TUNABLE in tunables
    ):
        return None
    environ["GLIBC_TUNABLES"] = ":".join(filter(None, (tunables, f"{HUGE_PAGES_TUNABLE}=1")))
    return environ


def malloc_huge_pages() -> bool:
    """Whether this process's malloc asks for transparent huge pages (set when it started)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "").split(":")
    return f"{HUGE_PAGES_TUNABLE}=1" in tunables and transparent_huge_pages() == "madvise"


@contextlib.contextmanager
def huge_pages_in_children() -> Iterator[bool]:
    """Within the block, the processes this one starts (``spawn`` children, subprocesses) run
    with the huge-page tunable, as ``python -m runtime`` does; this process's own malloc is
    unchanged, and its environment is restored after. Yields whether the tunable was set."""
    environment = huge_page_environment()
    before = os.environ.get("GLIBC_TUNABLES")
    if environment is not None:
        os.environ["GLIBC_TUNABLES"] = environment["GLIBC_TUNABLES"]
    try:
        yield environment is not None
    finally:
        if environment is not None:
            if before is None:
                os.environ.pop("GLIBC_TUNABLES", None)
            else:
                os.environ["GLIBC_TUNABLES"] = before


def restart_with_huge_pages() -> None:
    """Replace this process with itself, started again with the huge-page tunable
    (``os.execve``: the same interpreter and command line), where ``huge_page_environment``
    says it would change something; return otherwise. Call it first thing, before anything
    is loaded or written."""
    environment = huge_page_environment()
    if environment is None:
        return
    log.debug("restarting with GLIBC_TUNABLES=%s", environment["GLIBC_TUNABLES"])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), environment)
