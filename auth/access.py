"""The one interface between the ingress and access control."""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any


KEYS_NOT_CONFIGURED = "API key access is not enabled or not configured on this server"


class AccessDenied(Exception):
    """Refused before any work: 400 (bad Idempotency-Key), 401 (who are you), 403 (no credits),
    409 (Idempotency-Key reused for another request, or still running), 429 (slow down), 503 (not configured).
    ``credits_remaining``: the key's balance when the key was identified before the refusal (403, 409, 429).
    ``reason`` says which refusal, in one of ``DENIAL_REASONS`` (metrics and logs use it; 429 and 503 have two each)."""

    def __init__(self, status: int, detail: str, headers: Mapping[str, str] | None = None,
                 credits_remaining: int | None = None, *, reason: str = "refused"):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, dict(headers or {})
        self.credits_remaining, self.reason = credits_remaining, reason


DENIAL_REASONS = ("refused", "bad_request", "unauthorized", "no_credits", "conflict", "rate_limited",
                  "auth_throttled", "not_configured", "ledger_unavailable")


@dataclass(frozen=True)
class Account:
    """What a key holder may read about their own key (``Access.account``)."""
    key_id: str
    name: str | None
    credits: int
    rate_per_s: float   # the key's own rate limit, or the configured default
    burst: int


@dataclass(frozen=True)
class JobRequest:
    route: str                    # e.g. "POST /api/v1/colorize"
    price: int = 0                # credits a success costs (0 for routes that are not metered)
    details: Mapping[str, str] = field(default_factory=dict)  # model, add-ons: recorded with the usage
    fingerprint: str | None = None  # hash of the request's content: same Idempotency-Key must mean same request


@dataclass
class Admission:
    """What ``admit`` yields: the caller's identity, and where to record the result.

    If ``replay`` is not None, this exact request already succeeded under the same
    Idempotency-Key: return ``replay`` as the response body and do not run the job again
    (nothing is charged). Otherwise run the job and, on success, set ``result_id`` and
    ``response`` (the JSON body sent to the client; it is stored for later replays)."""
    principal: str
    result_id: str | None = None          # set by the ingress once the result is stored
    response: dict[str, Any] | None = None  # set by the ingress on success
    replay: dict[str, Any] | None = None    # set by admit: the stored body of an earlier success
    # The key's balance: set by admit (after the reservation) and again once the job is settled
    # (after the charge or the release); None when no API key was identified.
    credits_remaining: int | None = None
    pixel_check: Callable[[int], Awaitable[None]] | None = field(default=None, repr=False)  # set by admit

    async def count_pixels(self, pixels: int) -> None:
        """The photo's size is known (from its header, before decoding): a rate limit that counts
        megapixels takes the photo's extra tokens now, or raises AccessDenied (429, Retry-After);
        leaving ``admit`` with that refusal releases the reservation, so nothing is charged."""
        if self.pixel_check is not None:
            await self.pixel_check(pixels)


def request_fingerprint(route: str, fields: Iterable[tuple[str, bytes | str]]) -> str:
    """A hash of what a request asks for (route plus form fields, in any order), for
    ``JobRequest.fingerprint``: a retry under the same Idempotency-Key must match it."""
    digest = hashlib.sha256(route.encode())
    for name, value in sorted((name, value.encode() if isinstance(value, str) else value) for name, value in fields):
        for part in (name.encode(), value):  # length-prefixed: ("ab", "c") and ("a", "bc") differ
            digest.update(len(part).to_bytes(8, "big") + part)
    return "sha256:" + digest.hexdigest()


class Access(ABC):
    def check(self) -> None:
        """Raise when what admitting needs (the ledger) cannot be reached; blocking, called from a
        worker thread by readiness checks. Nothing to check by default."""

    async def identify(self, route: str, headers: Mapping[str, str], client: str | None = None) -> None:
        """Check the caller's credentials from the headers alone, before a request body is read:
        raise AccessDenied (401, 429, 503) to refuse. ``admit`` still decides for real."""

    @abstractmethod
    def admit(self, job: JobRequest, headers: Mapping[str, str],
              client: str | None = None) -> AsyncIterator[Admission]:
        """Async context manager: raise AccessDenied to refuse; the body is the job.
        Leaving the body normally means success (charge); an exception means failure (no charge).
        ``client`` is the caller's address (failed attempts are throttled per address)."""

    @abstractmethod
    async def account(self, headers: Mapping[str, str], client: str | None = None) -> Account:
        """The presented API key's own account (charges nothing); raise AccessDenied (401, 429 after
        repeated failures from ``client``, 503)."""


class OpenAccess(Access):
    """No authentication configured: every caller is admitted and nothing is charged."""

    @asynccontextmanager
    async def admit(self, job: JobRequest, headers: Mapping[str, str],
                    client: str | None = None) -> AsyncIterator[Admission]:
        yield Admission(principal="anonymous")

    async def account(self, headers: Mapping[str, str], client: str | None = None) -> Account:
        raise AccessDenied(503, KEYS_NOT_CONFIGURED, reason="not_configured")
