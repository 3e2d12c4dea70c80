"""Typed errors: each carries the service's ``detail``, the HTTP status and the response's
``X-Request-Id`` (quote it when reporting a problem; the service's logs carry the same id)."""
from __future__ import annotations


class ColorizeError(Exception):
    """Any failure of a call to the service. ``status`` is None when no HTTP answer came back."""
    retryable = False  # whether sending the same request again can succeed

    def __init__(self, detail: str, *, status: int | None = None, request_id: str | None = None,
                 retry_after: float | None = None):
        super().__init__(detail)
        self.detail, self.status, self.request_id, self.retry_after = detail, status, request_id, retry_after

    def __str__(self) -> str:
        where = [f"HTTP {self.status}"] if self.status else []
        if self.request_id:
            where.append(f"request id {self.request_id}")
        return f"{self.detail} ({', '.join(where)})" if where else self.detail


class BadImage(ColorizeError):
    """400/413: the service refused the request's content: not an image, truncated, too large,
    too many pixels, or a bad option value. Sending it again cannot succeed."""


class AuthError(ColorizeError):
    """401: the API key (or App Check token) is missing, unknown or revoked."""


class NoCredits(ColorizeError):
    """403: the key's balance is below this job's price. Nothing was charged."""


class Conflict(ColorizeError):
    """409: the Idempotency-Key was used for a different request, or its first request is still
    running. Only the second is worth retrying: the first attempt may still finish and be replayed."""

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return "in progress" in self.detail.lower()


class RateLimited(ColorizeError):
    """429: the key's rate limit or the service's queues; wait ``retry_after`` seconds."""
    retryable = True


class ServerError(ColorizeError):
    """5xx: a stage, storage, an image URL or the service itself failed; nothing was charged.
    503 may carry ``retry_after``."""
    retryable = True


class NotReady(ServerError):
    """404 without the service's JSON error shape: Ray Serve's proxy is up but the application is
    not deployed yet (a service starting or restarting answers so for several seconds), or the
    URL is not this service at all. Retried like a 5xx; if it persists, check --api."""


class NetworkError(ColorizeError):
    """No HTTP answer: connection refused or dropped, or the request timed out. The service may
    still have run the job: retry with the same Idempotency-Key so that it is charged once."""
    retryable = True


def error_for_status(status: int, detail: str, *, request_id: str | None,
                     retry_after: float | None, service_shape: bool = True) -> ColorizeError:
    if status == 404 and not service_shape:
        return NotReady(f"the service is not ready (404: {detail[:100]}); is it starting, and is this its URL?",
                        status=status, request_id=request_id, retry_after=retry_after)
    kind = {400: BadImage, 413: BadImage, 401: AuthError, 403: NoCredits, 409: Conflict, 429: RateLimited}.get(
        status, ServerError if status >= 500 else ColorizeError)
    return kind(detail, status=status, request_id=request_id, retry_after=retry_after)
