"""Access-control settings (pydantic v2): the ``auth:`` section of the application settings.

Secrets never live here: a PostgreSQL URL with a password belongs in the environment
variable named by ``database_url_env``, which overrides ``database_url`` when set.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

RouteAuth = Literal["api_key", "app_check", "either", "none"]

DEFAULT_DATABASE_URL = "sqlite:///data/ledger.sqlite3"
DATABASE_URL_ENV = "COLORIZE_DATABASE_URL"
# The key API is metered; the App Check API's routes take App Check tokens. /health, /results and
# /uploads never call admit, so they need no entry.
DEFAULT_ROUTES: dict[str, RouteAuth] = {
    "POST /api/v1/colorize": "api_key",
    "POST /upload": "app_check",
    "POST /colorize": "app_check",
    "GET /download": "app_check",
}
_ROUTE = re.compile(r"^(GET|POST|PUT|PATCH|DELETE) /\S*$")
_ENV_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AppCheckSettings(_Strict):
    project_id: str | None = Field(
        None, description="the Firebase project id (or number) whose tokens are accepted; none: App Check "
                          "routes answer 503")
    replay_protection: bool = Field(
        False, description="limited-use tokens: ask Google whether each token was already used (a network call "
                           "per request; needs Application Default Credentials with the App Check permission)")
    jwks_url: str | None = Field(None, description="tests only: where signing keys are fetched; none: Google's")
    max_token_chars: int = Field(4096, ge=256, le=65536, description="longer tokens are refused unparsed")


class AuthSettings(_Strict):
    database_url: str | None = Field(
        DEFAULT_DATABASE_URL, description="SQLAlchemy URL of the credit ledger: `sqlite:///path` (embedded) or "
                                          "`postgresql+psycopg://...`; none: no API keys (their routes answer 503)")
    database_url_env: str | None = Field(
        DATABASE_URL_ENV, description="name of the env var that, when set, overrides `database_url` "
                                      "(so passwords stay out of files)")
    default_rate_per_s: float = Field(
        1.0, gt=0, le=10_000, description="token bucket refill (requests/s) for keys without their own")
    default_burst: int = Field(10, ge=1, le=100_000, description="token bucket size for keys without their own")
    megapixels_per_token: float | None = Field(
        12.0, gt=0, le=1000, description="rate limits count megapixels: a photo takes one more token from its key's "
                                         "bucket per started this many megapixels beyond the first (12: a 49 MP photo "
                                         "takes 5 tokens; at most `burst` in all), else 429 with Retry-After and "
                                         "nothing charged; none: one token per request whatever its size")
    reservation_ttl_s: int = Field(
        900, ge=30, description="a reservation not committed or released by then (its process died) is released "
                                "by the sweep; must exceed the longest request (upload + `limits.request_timeout_s`)")
    idempotency_ttl_s: int = Field(
        3600, ge=60, description="how long a success can be replayed; keep it within the life of the links it "
                                 "returns (`storage.url_expiry_seconds` or `storage.retention_seconds`)")
    sweep_interval_s: int = Field(60, ge=1, description="how often a replica releases expired reservations")
    commit_retry_s: float = Field(
        10.0, ge=0, le=120, description="a result is delivered only once its charge is committed; the ledger is "
                                        "retried this long before the answer is 503 (result withheld, nothing charged)")
    failed_auth_rate_per_s: float = Field(
        0.5, gt=0, le=1000, description="failed authentications (API keys, App Check tokens) per client address and "
                                        "process: refill rate of a bucket; an empty bucket answers 429 before "
                                        "credentials are read")
    failed_auth_burst: int = Field(20, ge=1, le=100_000, description="size of that bucket")
    app_check: AppCheckSettings = Field(AppCheckSettings(), description="Firebase App Check")
    routes: dict[str, RouteAuth] = Field(
        default_factory=dict, description="the access policy per route (`\"METHOD /path\": policy`), merged over "
        + ", ".join(f"`{route}: {policy}`" for route, policy in DEFAULT_ROUTES.items()))

    @field_validator("routes")
    @classmethod
    def _route_names(cls, value: dict[str, RouteAuth]) -> dict[str, RouteAuth]:
        for route in value:
            if not _ROUTE.fullmatch(route):
                raise ValueError(f"route {route!r} must look like 'POST /api/v1/colorize' (method, space, path)")
        return value

    @field_validator("database_url_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_VAR_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not an environment variable name (put the name here, not the URL)")
        return value

    @field_validator("database_url")
    @classmethod
    def _supported_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite://", "postgresql")):
            raise ValueError("use sqlite:///path/to/ledger.sqlite3 or postgresql+psycopg://user@host/db")
        return value

    def route_policy(self) -> dict[str, RouteAuth]:
        return {**DEFAULT_ROUTES, **self.routes}

    def effective_database_url(self, environ: Mapping[str, str] = os.environ) -> str | None:
        """The ledger URL, read late (in the replica) so the env var can hold a password."""
        if self.database_url_env and environ.get(self.database_url_env):
            return environ[self.database_url_env]
        return self.database_url

    def resolved(self, base_dir: Path) -> AuthSettings:
        """A relative SQLite path made absolute against ``base_dir`` (replicas may run elsewhere)."""
        url = self.database_url
        prefix = "sqlite:///"
        if url and url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite://":
            path = url[len(prefix):]
            if path and not path.startswith(":memory:"):
                return self.model_copy(update={"database_url": prefix + str(base_dir / path)})
        return self
