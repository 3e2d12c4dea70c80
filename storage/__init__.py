"""Object storage for uploads and colorized results: one small interface, two backends."""

from __future__ import annotations

from .base import (
    ALLOWED_EXTENSIONS,
    CONTENT_TYPES,
    KINDS,
    InvalidObjectName,
    Kind,
    ObjectStore,
    StorageError,
    StoredObject,
    content_type_for,
    new_object_name,
    validate_kind,
    validate_object_name,
)
from .local import LocalStore
from .minio_store import MinioStore
from .settings import LocalStoreSettings, MinioStoreSettings, StorageSettings


def make_store(settings: LocalStoreSettings | MinioStoreSettings) -> ObjectStore:
    """Build the configured store. Does no network I/O: call `store.check()` at startup."""
    if isinstance(settings, LocalStoreSettings):
        return LocalStore(settings.root, retention_seconds=settings.retention_seconds)
    if isinstance(settings, MinioStoreSettings):
        access_key, secret_key = settings.credentials()
        return MinioStore(
            endpoint=settings.endpoint,
            access_key=access_key,
            secret_key=secret_key,
            bucket=settings.bucket,
            secure=settings.secure,
            region=settings.region,
            public_endpoint=settings.public_endpoint,
            public_secure=settings.public_secure,
            url_expiry_seconds=settings.url_expiry_seconds,
            lifecycle_days=settings.lifecycle_days,
            create_bucket=settings.create_bucket,
            timeout_seconds=settings.timeout_seconds,
        )
    raise TypeError(f"unsupported storage settings type: {type(settings).__name__}")


__all__ = [
    "ALLOWED_EXTENSIONS",
    "CONTENT_TYPES",
    "KINDS",
    "InvalidObjectName",
    "Kind",
    "LocalStore",
    "LocalStoreSettings",
    "MinioStore",
    "MinioStoreSettings",
    "ObjectStore",
    "StorageError",
    "StorageSettings",
    "StoredObject",
    "content_type_for",
    "make_store",
    "new_object_name",
    "validate_kind",
    "validate_object_name",
]
