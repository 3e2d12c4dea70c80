"""Handing memory freed by a large job back to the operating system.

Two kinds of memory stay resident in a replica after a job on a large photo:

* glibc's malloc keeps freed memory for reuse: per-thread arenas, and chunks below its mmap
  threshold (which grows to 32 MB after large frees), stay mapped. ``malloc_trim(0)`` returns the
  free pages of every arena.
* Pages of a shared-memory object store the replica read from or wrote to (Ray's plasma store:
  photos cross replicas there) stay mapped into it and count in its RSS, although the store owns
  them and frees them for other objects. ``madvise(MADV_DONTNEED)`` on a *shared* mapping only
  unmaps this process's view (the data stays in the store; a later access maps it again), so it is
  safe while other jobs still read objects there. Which mappings: ``release_shared_mappings``
  (deployments set Ray's; nothing by default).

Linux with glibc only; elsewhere a no-op. ``COLORIZE_MALLOC_TRIM=0`` turns both off (to measure).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

TRIM_ABOVE_PIXELS = 8_000_000  # below this a job's buffers are small, and the next job reuses them
MADV_DONTNEED = 4

log = logging.getLogger(__name__)


def _load_libc():
    if not sys.platform.startswith("linux") or os.environ.get("COLORIZE_MALLOC_TRIM") == "0":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.malloc_trim, libc.madvise  # noqa: B018 -- both must exist (musl has no malloc_trim)
    except (OSError, AttributeError):
        return None
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


_libc = _load_libc()
_shared_prefixes: tuple[str, ...] = ()


def release_shared_mappings(*basename_prefixes: str) -> None:
    """After a large job, also unmap this process's resident pages of shared file mappings whose
    file name starts with one of these (e.g. ``"plasma"``: Ray's object store)."""
    global _shared_prefixes
    _shared_prefixes = tuple(basename_prefixes)


def trim_after(pixels: int) -> None:
    """After a job on ``pixels`` pixels (its arrays already dropped): give memory back when large."""
    if _libc is None or pixels < TRIM_ABOVE_PIXELS:
        return
    _libc.malloc_trim(0)
    if _shared_prefixes:
        _drop_shared_pages(_shared_prefixes)


def shared_mappings(prefixes: tuple[str, ...], maps_path: str = "/proc/self/maps") -> list[tuple[int, int]]:
    """(start, end) of this process's shared file mappings whose file name starts with a prefix."""
    found = []
    try:
        with open(maps_path) as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) < 6 or "s" not in fields[1]:  # private mappings: never (that would lose data)
                    continue
                name = os.path.basename(fields[5].strip().removesuffix(" (deleted)"))
                if name.startswith(prefixes):
                    start, end = (int(address, 16) for address in fields[0].split("-"))
                    found.append((start, end))
    except OSError:
        return []
    return found


def _drop_shared_pages(prefixes: tuple[str, ...]) -> None:
    for start, end in shared_mappings(prefixes):
        if _libc.madvise(start, end - start, MADV_DONTNEED) != 0:
            log.debug("madvise(MADV_DONTNEED) failed: errno %d", ctypes.get_errno())
