"""Memory handed back after a large job (service.memory): an object store's shared pages leave the
process's resident set, their data stays; private mappings are never touched."""
from __future__ import annotations

import ctypes
import mmap
import os
import sys
import tempfile
from pathlib import Path

import pytest

from service import memory

pytestmark = pytest.mark.skipif(memory._libc is None, reason="needs Linux with glibc")
SIZE = 16 << 20


def _resident_kib(view: mmap.mmap) -> int:
    start = ctypes.addressof(ctypes.c_char.from_buffer(view))
    with open("/proc/self/smaps") as smaps:
        inside = False
        for line in smaps:
            if "-" in line.split()[0] and not line.split()[0].endswith(":"):
                low, high = (int(part, 16) for part in line.split()[0].split("-"))
                inside = low <= start < high
            elif inside and line.startswith("Rss:"):
                return int(line.split()[1])
    raise AssertionError("mapping not found")


def _mapped(directory: Path, name: str, *, shared: bool) -> tuple[mmap.mmap, int]:
    descriptor, path = tempfile.mkstemp(prefix=name, dir=directory)
    os.ftruncate(descriptor, SIZE)
    view = mmap.mmap(descriptor, SIZE, flags=mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE)
    os.close(descriptor)
    os.unlink(path)  # as Ray's store does: the mapping outlives the name ("(deleted)" in /proc/self/maps)
    view[:] = b"\x07" * SIZE  # every page touched, hence resident
    return view, ctypes.addressof(ctypes.c_char.from_buffer(view))


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else tmp_path


def test_a_large_job_releases_the_stores_shared_pages_and_keeps_their_data(directory, monkeypatch):
    store, address = _mapped(directory, "plasma", shared=True)
    other, _ = _mapped(directory, "other", shared=True)
    monkeypatch.setattr(memory, "_shared_prefixes", ())
    memory.release_shared_mappings("plasma")
    assert any(start <= address < end for start, end in memory.shared_mappings(("plasma",)))
    assert _resident_kib(store) >= SIZE >> 10

    memory.trim_after(memory.TRIM_ABOVE_PIXELS - 1)  # a small job: nothing happens
    assert _resident_kib(store) >= SIZE >> 10
    memory.trim_after(memory.TRIM_ABOVE_PIXELS)
    assert _resident_kib(store) < 1024  # gone from this process's resident set ...
    assert store[:4] == b"\x07" * 4 and store[-1:] == b"\x07"  # ... not from the store
    assert _resident_kib(other) >= SIZE >> 10  # a mapping of another name is left alone
    store.close(), other.close()


def test_private_mappings_are_never_released(directory, monkeypatch):
    private, _ = _mapped(directory, "plasma", shared=False)  # dropping these pages would lose the data
    monkeypatch.setattr(memory, "_shared_prefixes", ("plasma",))
    memory.trim_after(memory.TRIM_ABOVE_PIXELS)
    assert _resident_kib(private) >= SIZE >> 10 and private[:1] == b"\x07"
    private.close()


def test_off_when_asked(monkeypatch):
    monkeypatch.setenv("COLORIZE_MALLOC_TRIM", "0")
    assert memory._load_libc() is None or not sys.platform.startswith("linux")


_FAULTS_PER_PHOTO = """
import resource, sys
import numpy as np
from service import memory
if sys.argv[1] != "default":
    assert memory.keep_photo_buffers()
if sys.argv[1] in ("during_large", "after_large"):
    memory.large_job_started(memory.TRIM_ABOVE_PIXELS)
if sys.argv[1] == "after_large":
    memory.large_job_ended(memory.TRIM_ABOVE_PIXELS)
def photo():  # what a 512 px job allocates and frees: float32 RGB buffers of 3 MB
    rgb = np.full((512, 512, 3), 0.5, np.float32)
    return float((rgb * 2.0).sum())
photo()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    photo()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _faults_per_photo(mode: str) -> float:
    import subprocess

    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", _FAULTS_PER_PHOTO, mode], capture_output=True, text=True,
                          env=env, check=True, cwd=Path(__file__).resolve().parents[2])
    return float(done.stdout)


def test_small_jobs_reuse_their_buffers_instead_of_faulting_them_in_again():
    # Two 3 MB buffers are 1,536 pages: glibc's defaults unmap them after each job.
    assert _faults_per_photo("default") > 1000
    assert _faults_per_photo("keep") < 50


def test_glibcs_own_settings_win(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert memory.keep_photo_buffers() is False


def test_while_a_large_job_runs_freed_buffers_go_back_at_once():
    # malloc_trim cannot reach a thread arena's top below the trim threshold: a large job's
    # buffers must go back as they are freed, and small jobs keep theirs again after it.
    assert _faults_per_photo("during_large") > 1000
    assert _faults_per_photo("after_large") < 50


def test_small_photos_do_not_count_as_large_jobs(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "_set_thresholds", lambda *sizes: calls.append(sizes) or True)
    monkeypatch.setattr(memory, "_keeping", True)
    memory.large_job_started(512 * 512)
    memory.large_job_ended(512 * 512)
    assert calls == []
    memory.large_job_started(memory.TRIM_ABOVE_PIXELS)
    memory.large_job_started(memory.TRIM_ABOVE_PIXELS)  # two in flight: switched once
    memory.large_job_ended(memory.TRIM_ABOVE_PIXELS)
    memory.large_job_ended(memory.TRIM_ABOVE_PIXELS)  # the last one restores
    assert calls == [(memory.GLIBC_THRESHOLD_BYTES,) * 2, (memory.MMAP_THRESHOLD_BYTES, memory.TRIM_THRESHOLD_BYTES)]
