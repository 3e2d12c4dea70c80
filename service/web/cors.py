"""Cross-origin access for browser clients (seed 003's web app, seed 000's JavaScript callers):
the ``cors:`` settings and Starlette's own ``CORSMiddleware`` built from them.

Clients authenticate with headers (``X-Api-Key``, ``X-Firebase-AppCheck``), never cookies, so
credentialed CORS is not needed; combined with a wildcard origin it would let any site read
any visitor's answers, and is refused at start.
"""
from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware

from pipeline.weights.settings import Strict

# What a browser page may send and read, on every route.
ALLOW_METHODS = ("GET", "POST")
ALLOW_HEADERS = ("X-Api-Key", "X-Firebase-AppCheck", "Idempotency-Key", "Content-Type", "X-Request-Id")
EXPOSE_HEADERS = ("X-Request-Id", "Retry-After", "X-Credits-Remaining")

_ORIGIN = re.compile(r"https?://[^/\s:]+(:\d{1,5})?")


class CorsSettings(Strict):
    """The ``cors:`` section."""
    allow_origins: tuple[str, ...] = Field(
        (), description="origins whose pages may call the API, e.g. `https://app.example.com`, or `*` for any; "
                        "none: no cross-origin access (same-origin pages such as the workbench still work)")
    allow_credentials: bool = Field(
        False, description="let browsers send cookies/HTTP auth cross-origin; the API needs neither")
    max_age_s: int = Field(600, ge=0, le=86_400, description="how long browsers may cache a preflight answer")

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        for origin in origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin: write scheme://host[:port], no path or "
                                 "trailing slash (e.g. https://app.example.com), or '*' for any")
        return origins

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> CorsSettings:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError("allow_origins '*' with allow_credentials: true would let every website read "
                             "responses made with its visitors' credentials; list your origins instead "
                             "(e.g. [https://app.example.com]) or set allow_credentials: false")
        return self


def add_cors(app: Starlette, settings: CorsSettings) -> None:
    """Starlette's ``CORSMiddleware`` for ``settings`` around ``app``'s routes; nothing when no
    origin is allowed (a preflight then meets the routes' own 405)."""
    if settings.allow_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.allow_origins),
                           allow_credentials=settings.allow_credentials, allow_methods=list(ALLOW_METHODS),
                           allow_headers=list(ALLOW_HEADERS), expose_headers=list(EXPOSE_HEADERS),
                           max_age=settings.max_age_s)
