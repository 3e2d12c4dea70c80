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

And the opposite case, the many small jobs between large ones: ``keep_photo_buffers`` stops glibc
from handing a photo's buffers back after *every* job. By default a freed multi-megabyte buffer is
unmapped (or the heap's top trimmed), so the next photo's buffers start as fresh pages and fault
in one 4 KiB page at a time: at 512 px that was 2.3 of 3.7 ms of the colorizer's lightness and 2.6
of 4.9 ms of its Lab merge (one thread, measured). Fixed thresholds keep up to 64 MB (the Ingress:
16) of freed heap for reuse. Large jobs would pay for that: ``malloc_trim`` cannot return a worker thread's arena's
freed top below the trim threshold (after 8 x 49 MP jobs the Ingress kept 163 instead of 68 MB,
`python -m bench.big_images`). So while a large job is in flight (``large_job_started`` ...
``large_job_ended``) the process runs with glibc's own thresholds again, which hand a big buffer
back as it is freed.

Linux with glibc only; elsewhere a no-op. ``COLORIZE_MALLOC_TRIM=0`` turns all of it off (to measure),
``COLORIZE_KEEP_PHOTO_BUFFERS=0`` only the thresholds.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading

TRIM_ABOVE_PIXELS = 8_000_000  # below this a job's buffers are small, and the next job reuses them
MADV_DONTNEED = 4
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD_BYTES = 32 << 20  # buffers of photos up to ~2 MP (float32 RGB) come from the heap...
TRIM_THRESHOLD_BYTES = 64 << 20  # ...and up to this much freed heap is kept for the next job
GLIBC_THRESHOLD_BYTES = 128 << 10  # glibc's initial mmap and trim thresholds

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
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


_libc = _load_libc()
_shared_prefixes: tuple[str, ...] = ()
_keeping = False      # keep_photo_buffers() is in force
_kept_bytes = TRIM_THRESHOLD_BYTES
_large_jobs = 0       # large jobs in flight (they run with glibc's own thresholds)
_large_jobs_lock = threading.Lock()


def release_shared_mappings(*basename_prefixes: str) -> None:
    """After a large job, also unmap this process's resident pages of shared file mappings whose
    file name starts with one of these (e.g. ``"plasma"``: Ray's object store)."""
    global _shared_prefixes
    _shared_prefixes = tuple(basename_prefixes)


def keep_photo_buffers(keep_bytes: int = TRIM_THRESHOLD_BYTES) -> bool:
    """Fixed malloc thresholds for this process (see the module's doc), keeping up to ``keep_bytes``
    of freed heap per arena; True when set. Leaves glibc's own environment settings
    (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``) alone."""
    global _kept_bytes, _keeping
    if _libc is None or os.environ.get("COLORIZE_KEEP_PHOTO_BUFFERS") == "0" or \
            any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    with _large_jobs_lock:
        _kept_bytes = keep_bytes
        _keeping = _apply_thresholds()
    return _keeping


def _apply_thresholds() -> bool:
    """The thresholds for the moment (under the lock): glibc's while a large job runs, else the kept ones."""
    if _large_jobs:
        return _set_thresholds(GLIBC_THRESHOLD_BYTES, GLIBC_THRESHOLD_BYTES)
    return _set_thresholds(MMAP_THRESHOLD_BYTES, _kept_bytes)


def _set_thresholds(mmap_bytes: int, trim_bytes: int) -> bool:
    # Setting either one also turns off glibc's dynamic threshold, which would otherwise move them.
    return bool(_libc.mallopt(M_MMAP_THRESHOLD, mmap_bytes)) and bool(_libc.mallopt(M_TRIM_THRESHOLD, trim_bytes))


def large_job_started(pixels: int) -> None:
    """Before a job (or batch) on ``pixels`` pixels: a large one switches the process to giving
    freed memory back at once, until the last large job in flight ends. Pair with ``large_job_ended``."""
    global _large_jobs
    if _libc is None or pixels < TRIM_ABOVE_PIXELS:
        return
    with _large_jobs_lock:
        _large_jobs += 1
        if _large_jobs == 1 and _keeping:
            _apply_thresholds()


def large_job_ended(pixels: int) -> None:
    """After it (whether it succeeded or not): the last large one restores the kept thresholds."""
    global _large_jobs
    if _libc is None or pixels < TRIM_ABOVE_PIXELS:
        return
    with _large_jobs_lock:
        _large_jobs = max(0, _large_jobs - 1)
        if not _large_jobs and _keeping:
            _apply_thresholds()


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
