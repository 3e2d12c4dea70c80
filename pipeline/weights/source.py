"""Resolve a stage's weights `source` string to a local directory that holds the files.

    /models/ddcolor, models/ddcolor   a local directory, used as-is
    hf://org/name[@revision]          a Hugging Face Hub snapshot (HF_HUB_OFFLINE=1: cache only)
    s3://bucket/prefix                every object under the prefix, from MinIO/S3 (`s3` settings)
    https://host/path/file.pth        one file pinned by `sha256` (or a #sha256=<hex> fragment)

Downloads go under `cache_dir`, land in temp files there and are renamed into place only when
complete and verified, under an exclusive per-entry file lock, so several replicas on one node
can resolve the same source at once and no one ever loads half a file.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import ModelLoadError
from pipeline.weights.hf import HfSource, parse_hf_source, resolve_hf
from pipeline.weights.s3 import S3Settings, parse_s3_source, resolve_s3
from pipeline.weights.url import PinnedUrl, parse_pinned_url, resolve_url

__all__ = [
    "HfSource", "PinnedUrl", "S3Settings", "parse_hf_source", "parse_pinned_url", "parse_s3_source",
    "resolve_model_source",
]

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_GLOB_CHARS = frozenset("*?[")


def resolve_model_source(source: str, *, cache_dir: Path, files: Sequence[str] | None = None,
                         sha256: str | None = None, s3: S3Settings | None = None,
                         timeout_s: float = 60.0) -> Path:
    """The local directory holding `source`'s files; ModelLoadError says what is wrong and what to do.

    `files` narrows a download (names or glob patterns relative to the source; ignored for https,
    which is one file) and every plain name in it must exist in the result. `timeout_s` bounds each
    network operation (connect, each read), not a whole download.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if isinstance(files, str):
        raise TypeError("files must be a sequence of names, not one string")
    scheme_match = _SCHEME.match(source)
    scheme = scheme_match.group(1).lower() if scheme_match else None
    cache_dir = Path(cache_dir)
    if scheme is None:
        directory = _local_directory(source)
    elif scheme == "hf":
        directory = resolve_hf(source, cache_dir=cache_dir, files=files, timeout_s=timeout_s)
    elif scheme == "s3":
        directory = resolve_s3(source, cache_dir=cache_dir, files=files, settings=s3, timeout_s=timeout_s)
    elif scheme in ("https", "http"):
        return resolve_url(source, cache_dir=cache_dir, sha256=sha256, timeout_s=timeout_s)
    else:
        raise ModelLoadError(f"unsupported model source {source!r}: use a local directory, hf://org/name, "
                             "s3://bucket/prefix or a sha256-pinned https:// URL")
    _require_files(source, directory, files)
    return directory


def _local_directory(source: str) -> Path:
    directory = Path(source).expanduser()
    if not directory.exists():
        raise ModelLoadError(f"model directory {directory} does not exist (source {source!r})")
    if not directory.is_dir():
        raise ModelLoadError(f"model source {directory} is a file, not a directory; point it at the folder")
    return directory


def _require_files(source: str, directory: Path, files: Sequence[str] | None) -> None:
    """Fail at resolve time, naming the files, rather than later inside a loader."""
    missing = [name for name in files or () if not _GLOB_CHARS & set(name) and not (directory / name).is_file()]
    if missing:
        raise ModelLoadError(f"{source} resolved to {directory}, which lacks {', '.join(missing)}")
