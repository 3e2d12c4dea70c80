"""Progress lines for downloads into the model cache, at a bounded rate (never one per chunk).

A first start of the CPU profile fetches about a gigabyte; without a word for minutes a user cannot
tell a slow link from a hung service. Each resolver reports bytes as they land, and this prints at
most one line per ``interval_s`` (plus one when a download starts and one when it ends) to stderr,
which a Ray replica forwards to the driver's console and its log file:

    model download: hf://piddnad/ddcolor_paper_tiny: 64.0 MB of 220.1 MB (29%), 12.8 MB/s
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

DEFAULT_INTERVAL_S = 5.0
INTERVAL_ENV = "COLORIZE_DOWNLOAD_PROGRESS_S"  # seconds between lines; 0: start and end lines only


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _interval_from_env() -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


class DownloadProgress:
    """Bytes of one download (one file, or a snapshot of several), reported at most every ``interval_s``.

    Thread-safe: a hub snapshot downloads several files at once and all of them add here.
    """

    def __init__(self, what: str, *, total: int | None = None, interval_s: float | None = None,
                 write: Callable[[str], None] = _stderr, clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.total = total
        self.received = 0
        self.interval_s = _interval_from_env() if interval_s is None else interval_s
        self._write = write
        self._clock = clock
        self._lock = threading.Lock()
        self._started: float | None = None
        self._last_line: float | None = None
        self._finished = False

    def _rate(self, now: float) -> float:
        elapsed = now - (self._started or now)
        return self.received / elapsed if elapsed > 0 else 0.0

    def _line(self, now: float) -> str:
        of = f" of {human_bytes(self.total)} ({100 * self.received / self.total:.0f}%)" if self.total else ""
        return f"model download: {self.what}: {human_bytes(self.received)}{of}, {human_bytes(self._rate(now))}/s"

    def start(self) -> None:
        with self._lock:
            if self._started is None:
                self._started = self._last_line = self._clock()
                size = f" ({human_bytes(self.total)})" if self.total else ""
                self._write(f"model download: {self.what}{size}: starting, into the model cache (once)")

    def set_total(self, total: int | None) -> None:
        with self._lock:
            self.total = total

    def add(self, count: int) -> None:
        self.update(None, add=count)

    def update(self, received: int | None, *, add: int = 0) -> None:
        """Set the bytes received so far (or ``add`` to them); prints when the interval has passed."""
        if self._started is None:
            self.start()
        with self._lock:
            self.received = self.received + add if received is None else max(self.received, received)
            now = self._clock()
            if self.interval_s > 0 and self._last_line is not None and now - self._last_line >= self.interval_s:
                self._last_line = now
                self._write(self._line(now))

    def finish(self) -> None:
        with self._lock:
            if self._finished or self._started is None:
                return
            self._finished = True
            now = self._clock()
            self._write(f"model download: {self.what}: done, {human_bytes(self.received)} in "
                        f"{now - self._started:.1f} s ({human_bytes(self._rate(now))}/s)")


def hub_tqdm_class(progress: DownloadProgress) -> type:
    """A ``tqdm_class`` for ``huggingface_hub.snapshot_download`` that reports into ``progress``.

    The hub aggregates every file's bytes into its byte bars (unit ``B``; totals grow as files
    start); this class draws nothing and reports the largest byte count and total among them.
    """
    from tqdm.std import tqdm

    class _Devnull:
        def write(self, text: str) -> int:
            return len(text)

        def flush(self) -> None:
            pass

    class ReportingTqdm(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            kwargs.update(file=_Devnull(), disable=False, mininterval=3600)
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            result = super().update(n)
            if self.unit == "B":
                total = int(self.total) if self.total else None
                if total and (progress.total or 0) < total:
                    progress.set_total(total)
                progress.update(int(self.n))
            return result

    return ReportingTqdm
