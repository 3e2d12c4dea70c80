"""Handing memory freed by a large job back to the operating system (glibc's malloc).

glibc keeps freed memory for reuse: per-thread arenas, and chunks below its mmap threshold (which
grows to 32 MB after large frees), stay mapped. After a job on a large photo, a replica would keep
hundreds of MB it may not need again; ``malloc_trim(0)`` returns the free pages of every arena.
Linux with glibc only; elsewhere a no-op. ``COLORIZE_MALLOC_TRIM=0`` turns it off (to measure).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

TRIM_ABOVE_PIXELS = 8_000_000  # below this a job's buffers are small, and the next job reuses them


def _load_malloc_trim():
    if not sys.platform.startswith("linux") or os.environ.get("COLORIZE_MALLOC_TRIM") == "0":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl has no malloc_trim)
        return None


_malloc_trim = _load_malloc_trim()


def trim_after(pixels: int) -> None:
    """After a job on ``pixels`` pixels (its arrays already dropped): give free memory back when large."""
    if _malloc_trim is not None and pixels >= TRIM_ABOVE_PIXELS:
        _malloc_trim(0)
