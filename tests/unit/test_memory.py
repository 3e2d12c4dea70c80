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
