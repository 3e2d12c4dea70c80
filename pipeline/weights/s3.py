"""`s3://bucket/prefix`: mirror a folder of weights from MinIO/S3 into `cache_dir/s3/bucket/prefix`.

A cluster fetches from the hub once into MinIO and every node pulls from there. Files already
present with the size and ETag recorded at their download are skipped, so a warm node lists the
prefix and downloads nothing. Each file is staged and renamed into place once its size checks out.
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import certifi
import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from pipeline.errors import ModelLoadError
from pipeline.weights.cache import (
    CHUNK_BYTES,
    entry_lock,
    read_json,
    remove_file_and_empty_parents,
    remove_stale_parts,
    safe_relative_path,
    staged_file,
    write_json_atomic,
)
from pipeline.weights.progress import DownloadProgress

_ENDPOINT: Final = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_BUCKET: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
MANIFESTS_DIR: Final = ".manifests"  # under cache_dir/s3; bucket names cannot start with '.'


@dataclass(frozen=True)
class S3Settings:
    """Where the model store is; credentials come from the environment, never from config files."""

    endpoint: str                                 # host:port, no scheme (see `secure`)
    secure: bool = True                           # https
    region: str = "us-east-1"                     # explicit, so the SDK never asks the server
    access_key_env: str = "MODEL_STORE_ACCESS_KEY"
    secret_key_env: str = "MODEL_STORE_SECRET_KEY"

    def __post_init__(self) -> None:
        if not _ENDPOINT.fullmatch(self.endpoint):
            raise ValueError(f"S3 endpoint {self.endpoint!r} must be 'host' or 'host:port' without scheme "
                             "(use secure=True for https)")

    def credentials(self) -> tuple[str, str]:
        access, secret = os.environ.get(self.access_key_env), os.environ.get(self.secret_key_env)
        if not access or not secret:
            raise ModelLoadError(f"model store credentials missing: set {self.access_key_env} and "
                                 f"{self.secret_key_env} to read models from {self.endpoint}")
        return access, secret


@dataclass(frozen=True)
class _Listed:
    key: str
    size: int
    etag: str


def parse_s3_source(source: str) -> tuple[str, str]:
    """'s3://bucket/some/prefix' -> ('bucket', 'some/prefix'); the prefix may be empty."""
    rest = source[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not _BUCKET.fullmatch(bucket):
        raise ModelLoadError(f"{source}: {bucket!r} is not a valid bucket name")
    if prefix:
        safe_relative_path(prefix, what=f"S3 prefix in {source}")
    return bucket, prefix


def _client(settings: S3Settings, timeout_s: float) -> Minio:
    access, secret = settings.credentials()
    # The SDK default is 5-minute timeouts with 5 retries; a dead store must fail a replica quickly.
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        cert_reqs="CERT_REQUIRED" if settings.secure else "CERT_NONE",
        ca_certs=certifi.where() if settings.secure else None,
    )
    return Minio(settings.endpoint, access_key=access, secret_key=secret, secure=settings.secure,
                 region=settings.region, http_client=http)


def _wanted(source: str, client: Minio, bucket: str, prefix: str,
            files: Sequence[str] | None) -> dict[str, _Listed]:
    """Relative name -> object for everything under the prefix that `files` (glob patterns) selects."""
    list_prefix = f"{prefix}/" if prefix else ""
    found: dict[str, _Listed] = {}
    for obj in client.list_objects(bucket, prefix=list_prefix, recursive=True):
        name = obj.object_name or ""
        if obj.is_dir or name.endswith("/"):
            continue  # folder markers some tools create
        relative = name[len(list_prefix):]
        if files is None or any(fnmatch.fnmatchcase(relative, pattern) for pattern in files):
            safe_relative_path(relative, what=f"object {name!r} in {source}")
            found[relative] = _Listed(key=name, size=int(obj.size or 0), etag=(obj.etag or "").strip('"'))
    if files is not None:
        unmatched = [p for p in files if not any(fnmatch.fnmatchcase(r, p) for r in found)]
        if unmatched:
            raise ModelLoadError(f"{source} has no {', '.join(map(repr, unmatched))} "
                                 f"(found: {', '.join(sorted(found)) or 'nothing'})")
    elif not found:
        raise ModelLoadError(f"no objects under {source}; s3:// names a folder prefix, not a single object")
    return found


def _download(client: Minio, bucket: str, item: _Listed, target: Path) -> None:
    remove_stale_parts(target.parent, prefix=f".{target.name}.")
    with staged_file(target.parent, prefix=f".{target.name}.") as (handle, staging):
        # If-Match: fail rather than mix a newer upload into the version that was listed.
        response = client.get_object(bucket, item.key, request_headers={"If-Match": f'"{item.etag}"'})
        progress = DownloadProgress(f"s3://{bucket}/{item.key}", total=item.size)
        progress.start()
        try:
            for chunk in response.stream(CHUNK_BYTES):
                handle.write(chunk)
                progress.add(len(chunk))
        finally:
            response.close()
            response.release_conn()
        handle.close()
        if staging.stat().st_size != item.size:
            raise ModelLoadError(f"download of s3://{bucket}/{item.key} was cut short: "
                                 f"{staging.stat().st_size} of {item.size} bytes")
        os.replace(staging, target)
        progress.finish()


def _sync(source: str, client: Minio, bucket: str, prefix: str, entry: Path, manifest_path: Path,
          files: Sequence[str] | None) -> None:
    wanted = _wanted(source, client, bucket, prefix, files)
    recorded = read_json(manifest_path).get("files")
    recorded = recorded if isinstance(recorded, dict) else {}
    if files is None:  # a full mirror: drop what we downloaded earlier and the bucket no longer has
        for gone in set(recorded) - set(wanted):
            remove_file_and_empty_parents(entry / safe_relative_path(gone, what="manifest entry"), stop_at=entry)
            del recorded[gone]
    for relative, item in sorted(wanted.items()):
        target = entry / relative
        record = {"size": item.size, "etag": item.etag}
        if recorded.get(relative) == record and target.is_file() and target.stat().st_size == item.size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        _download(client, bucket, item, target)
        recorded[relative] = record
        write_json_atomic(manifest_path, {"source": source, "files": recorded})


def resolve_s3(source: str, *, cache_dir: Path, files: Sequence[str] | None,
               settings: S3Settings | None, timeout_s: float) -> Path:
    bucket, prefix = parse_s3_source(source)
    if settings is None:
        raise ModelLoadError(f"{source} needs S3 settings (the model store's endpoint) to be configured")
    client = _client(settings, timeout_s)
    entry = cache_dir / "s3" / bucket / prefix
    key = f"s3/{bucket}/{prefix}"
    manifest_path = cache_dir / "s3" / MANIFESTS_DIR / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
    where = f"{source} at {settings.endpoint}"
    try:
        with entry_lock(cache_dir, key):
            _sync(source, client, bucket, prefix, entry, manifest_path, files)
    except S3Error as exc:
        hint = {"NoSuchBucket": " (the bucket does not exist)",
                "PreconditionFailed": " (an object changed while downloading; try again)",
                "AccessDenied": " (check the model store credentials)"}.get(exc.code or "", "")
        raise ModelLoadError(f"cannot fetch {where}: {exc.code}: {exc.message}{hint}") from exc
    except (MinioException, urllib3.exceptions.HTTPError) as exc:
        raise ModelLoadError(f"cannot fetch {where}: {exc}") from exc
    except OSError as exc:
        raise ModelLoadError(f"cannot store {where} under {entry}: {exc}") from exc
    return entry
