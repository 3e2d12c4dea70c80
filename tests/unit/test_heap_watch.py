"""The heap-growth diagnostic: snapshots written by service/heap_watch.py while something grows, and
bench/heap_growth.py naming the line that grew."""
from __future__ import annotations

import time

import pytest

from bench.heap_growth import growth, snapshots_by_process
from service.heap_watch import FOLDER_ENV, INTERVAL_ENV, start_heap_snapshots

kept: list[bytearray] = []


def grow_a_little() -> None:
    kept.append(bytearray(64 * 1024))


def test_off_unless_a_folder_is_named(monkeypatch):
    monkeypatch.delenv(FOLDER_ENV, raising=False)
    assert start_heap_snapshots("Ingress") is None


def test_a_bad_interval_is_refused_with_what_to_set(monkeypatch, tmp_path):
    monkeypatch.setenv(FOLDER_ENV, str(tmp_path))
    for bad in ("soon", "0", "-5", "nan"):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        with pytest.raises(ValueError, match=INTERVAL_ENV):
            start_heap_snapshots("Ingress")


def test_snapshots_over_time_name_the_line_that_grew(monkeypatch, tmp_path):
    monkeypatch.setenv(FOLDER_ENV, str(tmp_path))
    monkeypatch.setenv(INTERVAL_ENV, "0.2")
    watch = start_heap_snapshots("Ingress")
    try:
        deadline = time.monotonic() + 20
        while len(list(tmp_path.glob("*.snap"))) < 3 and time.monotonic() < deadline:
            grow_a_little()
            time.sleep(0.02)
    finally:
        watch.stop()
        grown, kept[:] = len(kept), []
    [(process, paths)] = snapshots_by_process(tmp_path).items()
    assert process.startswith("Ingress-") and len(paths) >= 3 and not list(tmp_path.glob("*.part"))
    start, end, lines = growth(paths[0], paths[-1], top=5)
    assert end - start >= 64 * 1024 and grown >= 2
    assert "test_heap_watch.py" in lines[0] and "KiB" in lines[0], lines
