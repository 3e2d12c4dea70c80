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

    backend: Literal["local"] = "local"
    root: Path = Path("data/storage")
    retention_seconds: int = Field(DEFAULT_RETENTION_SECONDS, gt=0)


class MinioStoreSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["minio"] = "minio"
    endpoint: str  # 'host:port' the service uses, e.g. 'minio:9000'
    secure: bool
    region: str = Field("us-east-1", min_length=1)
    bucket: str
    access_key_env: str = "MINIO_ACCESS_KEY"
    secret_key_env: str = "MINIO_SECRET_KEY"
    public_endpoint: str | None = None  # 'host[:port]' browsers use; None = `endpoint`
    public_secure: bool | None = None  # None = same as `secure`
    url_expiry_seconds: int = Field(3600, ge=1, le=MAX_URL_EXPIRY_SECONDS)
    lifecycle_days: int = Field(0, ge=0)  # 0 = leave the bucket's lifecycle alone
    create_bucket: bool = True
    timeout_seconds: float = Field(10.0, gt=0, le=300)

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
