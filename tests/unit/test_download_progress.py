"""Downloads into the model cache print progress (bytes of total, rate) at a bounded rate."""
from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import pytest

from pipeline.weights.progress import INTERVAL_ENV, DownloadProgress, hub_tqdm_class
from pipeline.weights.source import resolve_model_source
from tests.unit.test_model_source import BlobServer

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_are_bounded_by_the_interval_not_the_chunks() -> None:
    lines: list[str] = []
    clock = Clock()
    progress = DownloadProgress("hf://org/model", total=10_000_000, interval_s=5, write=lines.append, clock=clock)
    progress.start()
    for i in range(1, 1001):  # 1000 chunks of 10 kB over 20 s: one line per 5 s, not one per chunk
        clock.now = 100.0 + i / 50
        progress.add(10_000)
    progress.finish()
    progress.finish()  # once only
    assert lines[0] == "model download: hf://org/model (10.0 MB): starting, into the model cache (once)"
    assert 3 <= len(lines) - 2 <= 4, lines
    assert re.fullmatch(r"model download: hf://org/model: 2.5 MB of 10.0 MB \(25%\), 50[0-9].[0-9] kB/s", lines[1])
    assert lines[-1] == "model download: hf://org/model: done, 10.0 MB in 20.0 s (500.0 kB/s)"


def test_nothing_is_printed_when_nothing_arrives() -> None:
    lines: list[str] = []
    DownloadProgress("hf://org/cached", write=lines.append).finish()
    assert lines == []


def test_pinned_url_download_reports_bytes_total_and_rate(tmp_path: Path, monkeypatch, capsys) -> None:
    blob = random.Random(3).randbytes(1_500_000)
    monkeypatch.setenv(INTERVAL_ENV, "0.05")
    with BlobServer({"/GFPGANv1.4.pth": blob}, trickle_s=0.01) as base:  # 23 chunks of 64 kB over ~0.25 s
        resolve_model_source(f"{base}/GFPGANv1.4.pth", cache_dir=tmp_path,
                             sha256=hashlib.sha256(blob).hexdigest())
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("model download:")]
    assert lines[0] == f"model download: {base}/GFPGANv1.4.pth (1.5 MB): starting, into the model cache (once)"
    assert re.fullmatch(rf"model download: {base}/GFPGANv1.4.pth: done, 1.5 MB in [0-9.]+ s \([0-9.]+ [kM]B/s\)",
                        lines[-1])
    middle = lines[1:-1]
    assert middle and len(middle) <= 10, lines  # at most one per 0.05 s, whatever the chunk count
    assert all(re.fullmatch(r".*: [0-9.]+ [kM]?B of 1.5 MB \([0-9]+%\), [0-9.]+ [kM]?B/s", line) for line in middle)
    # Cached: no download, no lines.
    resolve_model_source(f"{base}/GFPGANv1.4.pth", cache_dir=tmp_path, sha256=hashlib.sha256(blob).hexdigest())
    assert "model download:" not in capsys.readouterr().err


def test_hub_snapshot_bars_report_through_the_tqdm_class() -> None:
    """As huggingface_hub's snapshot_download drives its tqdm_class: byte bars whose totals grow as
    files start, updated from worker threads, and a file-count bar over thread_map (not bytes)."""
    from huggingface_hub.utils.tqdm import _create_progress_bar
    from tqdm.contrib.concurrent import thread_map

    lines: list[str] = []
    clock = Clock()
    progress = DownloadProgress("hf://org/tiny", interval_s=1, write=lines.append, clock=clock)
    cls = hub_tqdm_class(progress)
    transfer = _create_progress_bar(cls=cls, log_level=20, name="x.transfer", desc="Downloading bytes",
                                    total=0, initial=0, unit="B", unit_scale=True)
    written = _create_progress_bar(cls=cls, log_level=20, name="x", desc="Reconstructing", total=0,
                                   initial=0, unit="B", unit_scale=True)

    def download(size: int) -> int:
        for bar in (transfer, written):
            bar.total += size
        for _ in range(size // 1000):
            clock.now += 0.01
            transfer.update(1000)
            written.update(1000)
        return size

    assert thread_map(download, [200_000, 100_000], tqdm_class=cls, desc="Fetching 2 files", max_workers=2) \
        == [200_000, 100_000]
    progress.finish()
    assert lines[0].startswith("model download: hf://org/tiny")
    assert re.fullmatch(r"model download: hf://org/tiny: done, 300.0 kB in [23].[0-9] s \(1[0-9][0-9].[0-9] kB/s\)",
                        lines[-1])
    assert any(" of 300.0 kB (" in line for line in lines[1:-1]), lines  # the totals of both files
    assert 2 <= len(lines) - 2 <= 3, lines  # one line per second of the 3 s, never per update


def test_hf_resolver_reports_the_hub_download(tmp_path: Path, monkeypatch, capsys) -> None:
    """resolve_hf hands snapshot_download a tqdm_class; here a stand-in for the hub drives it as the
    real one does (byte bars whose totals grow per file), since the Hub is out of reach."""
    import huggingface_hub
    from huggingface_hub.utils.tqdm import _create_progress_bar

    def snapshot_download(repo_id, *, tqdm_class, cache_dir, **kwargs):
        bar = _create_progress_bar(cls=tqdm_class, log_level=20, name="huggingface_hub.snapshot_download",
                                   desc="Reconstructing", total=0, initial=0, unit="B", unit_scale=True)
        for size in (220_000, 1_000):
            bar.total += size
            for _ in range(size // 1_000):
                bar.update(1_000)
        snapshot = Path(cache_dir) / "snapshot"
        snapshot.mkdir(parents=True)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv(INTERVAL_ENV, "0")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    resolve_model_source("hf://piddnad/ddcolor_paper_tiny", cache_dir=tmp_path)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("model download:")]
    assert lines[0] == ("model download: hf://piddnad/ddcolor_paper_tiny (220.0 kB): starting, into the model "
                        "cache (once)")  # the total known so far: the hub adds each file's as it starts
    assert re.fullmatch(r"model download: hf://piddnad/ddcolor_paper_tiny: done, 221.0 kB in [0-9.]+ s "
                        r"\([0-9.]+ [kMG]?B/s\)", lines[1])
    assert len(lines) == 2  # interval 0: start and done only
