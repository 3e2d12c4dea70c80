"""Storage configuration (pydantic v2). Secrets never live here: only the names of env vars holding them."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .base import StorageError
from .local import DEFAULT_RETENTION_SECONDS
from .minio_store import MAX_URL_EXPIRY_SECONDS, validate_bucket_name, validate_endpoint

_ENV_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class LocalStoreSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["local"] = Field("local", description="files on this node's disk, served by the service")
    root: Path = Field(Path("data/storage"), description="the directory (relative: to where the service starts)")
    retention_seconds: int = Field(DEFAULT_RETENTION_SECONDS, gt=0,
                                   description="files (and their links) expire after this")


class MinioStoreSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["minio"] = Field("minio", description="a MinIO/S3 bucket; links are presigned GET URLs")
    endpoint: str = Field(description="`host:port` the service uses, e.g. `minio:9000`")
    secure: bool = Field(description="https to `endpoint` (`false`: plain http)")
    region: str = Field("us-east-1", min_length=1, description="the bucket's region")
    bucket: str = Field(description="the bucket for `uploads/` and `results/`")
    access_key_env: str = Field("MINIO_ACCESS_KEY", description="name of the env var holding the access key")
    secret_key_env: str = Field("MINIO_SECRET_KEY", description="name of the env var holding the secret key")
    public_endpoint: str | None = Field(
        None, description="`host[:port]` browsers use; presigned URLs are signed for it; none: `endpoint`")
    public_secure: bool | None = Field(None, description="https for `public_endpoint`; none: as `secure`")
    url_expiry_seconds: int = Field(3600, ge=1, le=MAX_URL_EXPIRY_SECONDS, description="presigned URL lifetime")
    lifecycle_days: int = Field(
        0, ge=0, description="bucket expiration rule for `uploads/` and `results/`; 0: leave the bucket's alone")
    create_bucket: bool = Field(True, description="create the bucket at start if it is missing")
    timeout_seconds: float = Field(10.0, gt=0, le=300, description="connect and read time limit of each storage call")

    @field_validator("endpoint", "public_endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        return None if value is None else validate_endpoint(value)

    @field_validator("bucket")
    @classmethod
    def _check_bucket(cls, value: str) -> str:
        return validate_bucket_name(value)

    @field_validator("access_key_env", "secret_key_env")
    @classmethod
    def _check_env_var_name(cls, value: str) -> str:
        if not _ENV_VAR_NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is not an environment variable name "
                "(put the variable's name here, never the secret itself)"
            )
        return value

    def credentials(self, environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
        """(access key, secret key) read from the environment at store-creation time.

        Read late, not at validation, because config is often parsed in a different process
        (e.g. the Ray driver) from the one that holds the secrets (the replica).
        """
        missing = [var for var in (self.access_key_env, self.secret_key_env) if not environ.get(var)]
        if missing:
            raise StorageError(
                f"MinIO credentials missing: set environment variable(s) {', '.join(missing)}"
            )
        return environ[self.access_key_env], environ[self.secret_key_env]


StorageSettings = Annotated[LocalStoreSettings | MinioStoreSettings, Field(discriminator="backend")]
