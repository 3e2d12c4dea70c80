"""The one interface between the ingress and access control."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


class AccessDenied(Exception):
    """Refused before any work: 401 (who are you), 403 (no credits), 429 (slow down), 503 (not configured)."""

    def __init__(self, status: int, detail: str, headers: Mapping[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, dict(headers or {})


@dataclass(frozen=True)
class JobRequest:
    route: str                    # e.g. "POST /api/v1/colorize"
    price: int = 0                # credits a success costs (0 for routes that are not metered)
    details: Mapping[str, str] = field(default_factory=dict)  # model, add-ons: recorded with the usage


@dataclass
class Admission:
    """What ``admit`` yields: the caller's identity, and where to record the result."""
    principal: str
    result_id: str | None = None  # set by the ingress once the result is stored


class Access(ABC):
    @abstractmethod
    def admit(self, job: JobRequest, headers: Mapping[str, str]) -> AsyncIterator[Admission]:
        """Async context manager: raise AccessDenied to refuse; the body is the job.
        Leaving the body normally means success (charge); an exception means failure (no charge)."""


class OpenAccess(Access):
    """No authentication configured: every caller is admitted and nothing is charged."""

    @asynccontextmanager
    async def admit(self, job: JobRequest, headers: Mapping[str, str]) -> AsyncIterator[Admission]:
        yield Admission(principal="anonymous")
