"""MinioStore: objects in one S3-compatible bucket (MinIO) at '<kind>/<name>'."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Final, TypeVar

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.error import MinioException, S3Error
from minio.lifecycleconfig import AbortIncompleteMultipartUpload, Expiration, LifecycleConfig, Rule

from .base import (
    KINDS,
    Kind,
    ObjectStore,
    StorageError,
    StoredObject,
    checked_content_type,
    validate_kind,
    validate_object_name,
)

MAX_URL_EXPIRY_SECONDS: Final = 7 * 24 * 3600  # the SigV4 presigning limit
_MISSING_CODES: Final = frozenset({"NoSuchKey", "NoSuchObject"})
_T = TypeVar("_T")


def validate_endpoint(endpoint: str) -> str:
    """Accept 'host' or 'host:port' only: the scheme comes from a separate `secure` flag."""
    if not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?", endpoint):
        raise ValueError(
            f"endpoint {endpoint!r} must be 'host' or 'host:port' without scheme or path "
            "(use the secure flag for https)"
        )
    return endpoint


def validate_bucket_name(bucket: str) -> str:
    """S3 bucket naming rules: 3-63 of [a-z0-9.-], alphanumeric ends, no '..', not an IP address."""
    problems = []
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        problems.append("use 3-63 lowercase letters, digits, '.' or '-', starting and ending alphanumeric")
    if ".." in bucket or ".-" in bucket or "-." in bucket:
        problems.append("no '..', '.-' or '-.'")
    if re.fullmatch(r"[0-9]+(\.[0-9]+){3}", bucket):
        problems.append("must not look like an IP address")
    if bucket.startswith("xn--") or bucket.endswith(("-s3alias", "--ol-s3")):
        problems.append("reserved prefix or suffix")
    if problems:
        raise ValueError(f"invalid S3 bucket name {bucket!r}: " + "; ".join(problems))
    return bucket


def _http_client(secure: bool, timeout_seconds: float) -> urllib3.PoolManager:
    # The SDK default is 5-minute timeouts and 5 retries: an unreachable MinIO would hang requests.
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout_seconds, read=timeout_seconds),
        retries=urllib3.Retry(total=1, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        maxsize=10,
        cert_reqs="CERT_REQUIRED" if secure else "CERT_NONE",
        ca_certs=certifi.where() if secure else None,
    )


class MinioStore(ObjectStore):
    """Objects at '<kind>/<name>' in `bucket`; public URLs are presigned GETs for `public_endpoint`.

    `check()` creates the bucket when missing (if `create_bucket`) and applies the lifecycle rule
    (if `lifecycle_days` > 0); call it at startup. The constructor does no network I/O.
    The public endpoint must reach MinIO with its Host header unchanged (the signature covers it).
    """

    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = True,
        region: str = "us-east-1",
        public_endpoint: str | None = None,
        public_secure: bool | None = None,
        url_expiry_seconds: int = 3600,
        lifecycle_days: int = 0,
        create_bucket: bool = True,
        timeout_seconds: float = 10.0,
    ) -> None:
        if not 1 <= url_expiry_seconds <= MAX_URL_EXPIRY_SECONDS:
            raise ValueError(
                f"url_expiry_seconds must be in 1..{MAX_URL_EXPIRY_SECONDS}, got {url_expiry_seconds}"
            )
        if lifecycle_days < 0:
            raise ValueError(f"lifecycle_days must be >= 0 (0 = no rule), got {lifecycle_days}")
        if timeout_seconds <= 0:
            raise ValueError(f"timeout_seconds must be > 0, got {timeout_seconds}")
        self.endpoint = validate_endpoint(endpoint)
        self.public_endpoint = validate_endpoint(public_endpoint or endpoint)
        self.bucket = validate_bucket_name(bucket)
        self.url_expiry_seconds = url_expiry_seconds
        self.lifecycle_days = lifecycle_days
        self.create_bucket = create_bucket
        self._lifecycle_applied = False
        self._client = Minio(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure,
            region=region, http_client=_http_client(secure, timeout_seconds),
        )
        public_is_secure = secure if public_secure is None else public_secure
        # Presigning is offline when the region is explicit, so this client never opens a connection.
        self._public_client = Minio(
            self.public_endpoint, access_key=access_key, secret_key=secret_key,
            secure=public_is_secure, region=region,
            http_client=_http_client(public_is_secure, timeout_seconds),
        )

    def _key(self, kind: Kind, name: str) -> str:
        return f"{validate_kind(kind)}/{validate_object_name(name)}"

    def _call(self, what: str, action: Callable[[], _T]) -> _T:
        """Run one SDK call, turning every backend failure into a StorageError that says where."""
        try:
            return action()
        except S3Error as exc:
            raise StorageError(
                f"MinIO {what} at {self.endpoint} failed: {exc.code}: {exc.message}"
            ) from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageError(f"MinIO {what} at {self.endpoint} failed: {exc}") from exc

    def put(self, kind: Kind, name: str, data: bytes, content_type: str) -> None:
        key = self._key(kind, name)
        canonical_type = checked_content_type(name, content_type)

        def put() -> None:
            self._call(f"put {self.bucket}/{key}", lambda: self._client.put_object(
                self.bucket, key, io.BytesIO(data), length=len(data), content_type=canonical_type))

        # S3 makes an object visible only once its upload completes, so a failed put leaves nothing.
        try:
            put()
        except StorageError as exc:
            if not _bucket_missing(exc):
                raise
            # The bucket went away after start (deleted, or a fresh server): check() re-creates it
            # when create_bucket is on, and says why not otherwise; then the put is tried once more.
            self._lifecycle_applied = False
            self.check()
            put()

    def get(self, kind: Kind, name: str) -> StoredObject | None:
        key = self._key(kind, name)
        try:
            return self._call(f"get {self.bucket}/{key}", lambda: self._read(key))
        except StorageError as exc:
            if isinstance(exc.__cause__, S3Error) and exc.__cause__.code in _MISSING_CODES:
                return None  # missing, or already removed by the lifecycle rule
            if _bucket_missing(exc):
                return None  # nothing can be in a bucket that is gone; the next put re-creates it
            raise

    def _read(self, key: str) -> StoredObject:
        response = self._client.get_object(self.bucket, key)
        try:
            content_type = response.headers.get("Content-Type", "application/octet-stream")
            return StoredObject(data=response.read(), content_type=content_type)
        finally:
            response.close()
            response.release_conn()

    def delete(self, kind: Kind, name: str) -> None:
        key = self._key(kind, name)
        try:
            # S3 DELETE of a missing key already succeeds; the check covers stricter servers.
            self._call(f"delete {self.bucket}/{key}", lambda: self._client.remove_object(self.bucket, key))
        except StorageError as exc:
            if not (isinstance(exc.__cause__, S3Error) and exc.__cause__.code in _MISSING_CODES):
                raise

    def public_url(self, kind: Kind, name: str, service_base_url: str) -> str:
        # service_base_url is unused: browsers fetch straight from the public MinIO endpoint.
        key = self._key(kind, name)
        return self._call(
            f"presign {self.bucket}/{key}",
            lambda: self._public_client.presigned_get_object(
                self.bucket, key, expires=timedelta(seconds=self.url_expiry_seconds)
            ),
        )

    def check(self) -> None:
        where = f"bucket {self.bucket}"
        if not self._call(f"check {where}", lambda: self._client.bucket_exists(self.bucket)):
            if not self.create_bucket:
                raise StorageError(f"MinIO {where} does not exist at {self.endpoint} (create_bucket is off)")
            self._make_bucket()
        if self.lifecycle_days > 0 and not self._lifecycle_applied:
            self._call(
                f"set lifecycle on {where}",
                lambda: self._client.set_bucket_lifecycle(self.bucket, self._lifecycle_config()),
            )
            self._lifecycle_applied = True

    def _make_bucket(self) -> None:
        try:
            self._call(f"create bucket {self.bucket}", lambda: self._client.make_bucket(self.bucket))
        except StorageError as exc:
            # Another replica starting at the same moment may have created it first.
            cause = exc.__cause__
            if not (isinstance(cause, S3Error) and cause.code == "BucketAlreadyOwnedByYou"):
                raise

    def _lifecycle_config(self) -> LifecycleConfig:
        # One rule per kind so objects outside our prefixes are never expired.
        # Note: this replaces any lifecycle configuration already on the bucket.
        return LifecycleConfig([
            Rule(
                ENABLED,
                rule_filter=Filter(prefix=f"{kind}/"),
                rule_id=f"expire-{kind}",
                expiration=Expiration(days=self.lifecycle_days),
                abort_incomplete_multipart_upload=AbortIncompleteMultipartUpload(1),
            )
            for kind in KINDS
        ])


def _bucket_missing(exc: StorageError) -> bool:
    return isinstance(exc.__cause__, S3Error) and exc.__cause__.code == "NoSuchBucket"
