"""LocalStore: objects as files under a root directory, with time-based retention."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Final

from .base import (
    KINDS,
    Kind,
    ObjectStore,
    StorageError,
    StoredObject,
    checked_content_type,
    content_type_for,
    validate_kind,
    validate_object_name,
)

DEFAULT_RETENTION_SECONDS: Final = 24 * 3600
# A temp file this old belongs to a writer that crashed; a live put never takes this long.
STALE_TEMP_SECONDS: Final = 3600
_TEMP_PREFIX: Final = ".tmp-"


class LocalStore(ObjectStore):
    """Files at <root>/<kind>/<name>; the content type follows from the extension.

    An object is visible for `retention_seconds` after its last write (by mtime); after that
    `get` returns None, so links handed out by `public_url` expire with the retention.
    """

    def __init__(self, root: Path | str, retention_seconds: int = DEFAULT_RETENTION_SECONDS) -> None:
        if retention_seconds <= 0:
            raise ValueError(f"retention_seconds must be > 0, got {retention_seconds}")
        self.retention_seconds = retention_seconds
        try:
            self.root = Path(root).resolve()
            for kind in KINDS:
                (self.root / kind).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create local storage directories under {root}: {exc}") from exc

    def _path(self, kind: Kind, name: str) -> Path:
        directory = self.root / validate_kind(kind)
        path = (directory / validate_object_name(name)).resolve()
        # Validation already forbids separators; this catches anything else (e.g. a symlinked name).
        if path.parent != directory.resolve():
            raise StorageError(f"refusing {kind}/{name}: it resolves outside {directory}")
        return path

    def _is_expired(self, mtime: float, now: float | None = None) -> bool:
        return (time.time() if now is None else now) - mtime > self.retention_seconds

    def put(self, kind: Kind, name: str, data: bytes, content_type: str) -> None:
        path = self._path(kind, name)
        checked_content_type(name, content_type)
        temp_path: str | None = None
        try:
            # Same directory as the target, so os.replace is an atomic rename on one filesystem.
            fd, temp_path = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX, suffix=".part")
            with os.fdopen(fd, "wb") as temp_file:
                temp_file.write(data)
                temp_file.flush()
                os.fsync(temp_file.fileno())
            os.replace(temp_path, path)
            temp_path = None
            _fsync_directory(path.parent)
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc}") from exc
        finally:
            if temp_path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temp_path)

    def get(self, kind: Kind, name: str) -> StoredObject | None:
        path = self._path(kind, name)
        try:
            with open(path, "rb") as file:
                # fstat on the open file: the mtime belongs to exactly the bytes we read.
                if self._is_expired(os.fstat(file.fileno()).st_mtime):
                    return None
                data = file.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc}") from exc
        return StoredObject(data=data, content_type=content_type_for(name))

    def delete(self, kind: Kind, name: str) -> None:
        path = self._path(kind, name)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {path}: {exc}") from exc

    def public_url(self, kind: Kind, name: str, service_base_url: str) -> str:
        validate_kind(kind)
        validate_object_name(name)
        if not service_base_url.startswith(("http://", "https://")):
            raise ValueError(f"service_base_url must be an absolute http(s) URL, got {service_base_url!r}")
        return f"{service_base_url.rstrip('/')}/{kind}/{name}"

    def check(self) -> None:
        for kind in KINDS:
            directory = self.root / kind
            try:
                directory.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryFile(dir=directory, prefix=_TEMP_PREFIX):
                    pass
            except OSError as exc:
                raise StorageError(f"local storage directory {directory} is not writable: {exc}") from exc

    def sweep_expired(self) -> int:
        """Delete expired objects and stale temp files; return how many files were removed."""
        now = time.time()
        removed = 0
        for kind in KINDS:
            directory = self.root / kind
            try:
                entries = list(os.scandir(directory))
            except OSError as exc:
                raise StorageError(f"cannot list {directory}: {exc}") from exc
            for entry in entries:
                if self._should_sweep(entry, now):
                    try:
                        os.unlink(entry.path)
                        removed += 1
                    except FileNotFoundError:
                        pass  # another sweeper or a delete() got there first
                    except OSError as exc:
                        raise StorageError(f"cannot delete expired {entry.path}: {exc}") from exc
        return removed

    def _should_sweep(self, entry: os.DirEntry[str], now: float) -> bool:
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(info.st_mode):
            return False
        if entry.name.startswith(_TEMP_PREFIX):
            return now - info.st_mtime > STALE_TEMP_SECONDS
        try:
            validate_object_name(entry.name)
        except ValueError:
            return False  # not ours: leave unknown files alone
        return self._is_expired(info.st_mtime, now)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable; best effort, as some filesystems refuse directory fsync."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
