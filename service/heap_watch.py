"""Python heap snapshots over time, to find what grows in a long-running replica. A diagnostic, off
unless ``COLORIZE_HEAP_SNAPSHOTS`` names a folder: then every replica that calls
``start_heap_snapshots`` traces its Python allocations (``tracemalloc``, which slows allocation-heavy
code) and writes a snapshot there every ``COLORIZE_HEAP_SNAPSHOT_INTERVAL_S`` seconds (60).
``python -m bench.heap_growth FOLDER`` compares a process's first and last snapshots."""
from __future__ import annotations

import os
import threading
import tracemalloc
from pathlib import Path

FOLDER_ENV, INTERVAL_ENV = "COLORIZE_HEAP_SNAPSHOTS", "COLORIZE_HEAP_SNAPSHOT_INTERVAL_S"
FRAMES = 8  # enough to see which caller of a library keeps the memory


class HeapSnapshots:
    """A thread writing ``{role}-{pid}-{index:04d}.snap`` into ``folder`` every ``interval_s``."""

    def __init__(self, folder: Path, role: str, interval_s: float):
        self.folder, self.prefix, self.interval_s = folder, f"{role}-{os.getpid()}", interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heap-snapshots", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for index in range(10_000):  # bounded: a week at one a minute
            if self._stop.wait(self.interval_s):
                return
            snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            partial = self.folder / f"{self.prefix}-{index:04d}.snap.part"
            snapshot.dump(str(partial))
            partial.replace(partial.with_suffix(""))  # whole snapshots only

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        tracemalloc.stop()


def start_heap_snapshots(role: str) -> HeapSnapshots | None:
    """Start tracing and the snapshot thread when the folder is set (None otherwise)."""
    folder = os.environ.get(FOLDER_ENV)
    if not folder:
        return None
    text = os.environ.get(INTERVAL_ENV, "60")
    try:
        interval_s = float(text)
    except ValueError:
        interval_s = 0.0
    if not interval_s > 0:
        raise ValueError(f"{INTERVAL_ENV} must be a number of seconds above 0 (got {text!r}); unset it for 60")
    Path(folder).mkdir(parents=True, exist_ok=True)
    if not tracemalloc.is_tracing():
        tracemalloc.start(FRAMES)
    return HeapSnapshots(Path(folder), role, interval_s)
