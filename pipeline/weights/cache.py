"""Cache primitives shared by the model-source resolvers: per-entry locks, staged files, manifests.

Every download lands in a temporary file inside the cache (same filesystem) and is renamed into
place only once complete and verified, so a path under an entry is either absent or whole.
Several processes on one node (replicas) serialise on an exclusive `flock` per cache entry.
"""
from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Any

from pipeline.errors import ModelLoadError

LOCKS_DIR = ".locks"
CHUNK_BYTES = 1024 * 1024
_PART_TOKEN_HEX = 8  # staged names are '<prefix><16 hex digits>.part'


@contextmanager
def entry_lock(cache_dir: Path, entry_key: str) -> Iterator[None]:
    """Hold an exclusive lock for one cache entry (blocks until other holders finish).

    Lock files live apart from the entries (named by a hash of the key) so they never collide with
    downloaded names; they are never deleted, because unlinking a lock file races with its waiters.
    """
    locks = cache_dir / LOCKS_DIR
    locks.mkdir(parents=True, exist_ok=True)
    path = locks / f"{hashlib.sha256(entry_key.encode()).hexdigest()[:32]}.lock"
    # Each open() is its own open file description, so threads of one process also exclude each other.
    with open(path, "ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def staged_file(directory: Path, prefix: str) -> Iterator[tuple[IO[bytes], Path]]:
    """A temporary file in `directory`, removed unless the caller moved it away (os.replace)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{prefix}{secrets.token_hex(_PART_TOKEN_HEX)}.part"
    try:
        with open(path, "xb") as handle:
            yield handle, path
    finally:
        path.unlink(missing_ok=True)


def remove_stale_parts(directory: Path, prefix: str) -> None:
    """Delete partial files left by a process that died mid-download (call with the entry locked)."""
    if directory.is_dir():
        # Exactly the staged shape, so '.a.' never sweeps up the parts of a sibling named 'a.b'.
        for leftover in directory.glob(f"{glob.escape(prefix)}{'?' * 2 * _PART_TOKEN_HEX}.part"):
            leftover.unlink(missing_ok=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} when missing or unreadable (a cache hint, never authority)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    with staged_file(path.parent, prefix=f".{path.name}.") as (handle, staging):
        handle.write(json.dumps(data, indent=1, sort_keys=True).encode())
        handle.close()
        os.replace(staging, path)


def remove_file_and_empty_parents(path: Path, *, stop_at: Path) -> None:
    path.unlink(missing_ok=True)
    for parent in path.parents:
        if parent == stop_at or stop_at not in parent.parents:
            break
        try:
            parent.rmdir()
        except OSError:
            break  # not empty


def safe_relative_path(name: str, *, what: str) -> PurePosixPath:
    """`name` as a relative path that cannot escape its directory (no '..', no absolute paths)."""
    path = PurePosixPath(name)
    parts = name.split("/")
    if not name or path.is_absolute() or any(part in ("", ".", "..") for part in parts) or "\0" in name:
        raise ModelLoadError(f"refusing {what} {name!r}: not a plain relative path inside the model directory")
    return path
