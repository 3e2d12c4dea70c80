"""Every failure a request can meet, mapped to a status in one table, per API contract.

Both contracts answer errors as ``{"detail": "..."}``; they differ in a few statuses: the key
API (seed 000) documents 429 for "slow down" and 502 for failures behind it, the App Check API
(seed 003) uses 503 and 500. Route handlers raise; ``error_response`` answers.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.responses import JSONResponse

from auth import AccessDenied
from pipeline.errors import ImageTooLargeError, InvalidImageError
from pipeline.inputs.remote_image import RemoteImageError
from storage import StorageError

from .jobs import NotReady, Overloaded, StageFailed, StageUnavailable, StoreReadFailed, StoreWriteFailed

log = logging.getLogger("ray.serve")

KEY_API = "key API"              # POST /api/v1/... with X-Api-Key (seed 000)
APP_CHECK_API = "App Check API"  # /health, /upload, /colorize, /download, ... (seed 003)
RETRY_AFTER_S = 2
CREDITS_HEADER = "X-Credits-Remaining"  # the key's balance, on key API answers once the key is identified


class ApiError(Exception):
    """A refusal with its own status, the same on both contracts (bad form, unknown id, ...)."""

    def __init__(self, status: int, detail: str, headers: Mapping[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, dict(headers or {})


@dataclass(frozen=True)
class Outcome:
    key_api: int
    app_check_api: int
    detail: str = "{}"                # public text: "{}" is the exception's own message, {request_id} the id
    retry_after_s: int | None = None  # sent as Retry-After

    def status(self, contract: str) -> int:
        return self.key_api if contract == KEY_API else self.app_check_api


# Looked up along each exception's MRO, so a subclass's own row wins over its base's.
ERROR_TABLE: dict[type[BaseException], Outcome] = {
    InvalidImageError: Outcome(400, 400),
    ImageTooLargeError: Outcome(413, 413),
    StageUnavailable: Outcome(503, 503),
    Overloaded: Outcome(429, 503, "server is busy; retry shortly", RETRY_AFTER_S),
    NotReady: Outcome(503, 503, "the service is not ready; retry shortly", RETRY_AFTER_S),
    StageFailed: Outcome(502, 500, "processing failed on our side (request id {request_id}); retry later"),
    StoreWriteFailed: Outcome(502, 500, "could not store the image; retry later"),
    StoreReadFailed: Outcome(503, 503, "storage is unavailable; retry later", RETRY_AFTER_S),
    StorageError: Outcome(502, 500, "storage failed on our side (request id {request_id}); retry later"),
}


def error_response(exc: BaseException, contract: str, request_id: str) -> JSONResponse:
    """The answer to a failed request on ``contract``; unexpected failures are logged and answer 500."""
    if isinstance(exc, AccessDenied) and exc.credits_remaining is not None:  # the key was identified first
        return _json(exc.status, exc.detail, {**exc.headers, CREDITS_HEADER: str(exc.credits_remaining)})
    if isinstance(exc, (ApiError, AccessDenied)):  # refusals that carry their own status and headers
        return _json(exc.status, exc.detail, exc.headers)
    if isinstance(exc, RemoteImageError):  # the image URL's own failure: 400, 413 or 502
        return _json(exc.status, str(exc))
    outcome = next((ERROR_TABLE[cls] for cls in type(exc).__mro__ if cls in ERROR_TABLE), None)
    if outcome is None:
        log.error("request %s failed", request_id, exc_info=exc)
        return _json(500, f"internal error (request id {request_id})")
    headers = {"Retry-After": str(outcome.retry_after_s)} if outcome.retry_after_s else None
    return _json(outcome.status(contract), outcome.detail.format(exc, request_id=request_id), headers)


def contract_of(path: str) -> str:
    """Which contract a path belongs to, for answers given before any route is matched (the proxy's)."""
    return KEY_API if "/api/v1/" in path else APP_CHECK_API  # under any route prefix


# What the HTTP front (Serve's proxy) answers on its own, in plain text, mapped to this table's
# rows: its backpressure (a full Ingress queue: 503, or 429) is "busy", its request timeout a job that
# failed on our side; anything else keeps its status with a short text.
FRONT_FAILURES: dict[int, type[Exception]] = {503: Overloaded, 429: Overloaded, 408: StageFailed}
FRONT_TEXTS = {400: "malformed request", 404: "not found", 413: "request too large", 500: "internal error"}


def front_error_response(status: int, path: str, request_id: str, retry_after: str | None = None) -> JSONResponse:
    """A plain-text error of the HTTP front, answered in ``path``'s contract's shape (``{"detail"}``);
    a ``Retry-After`` the front sent wins over the table's."""
    failure = FRONT_FAILURES.get(status)
    if failure is None:
        response = _json(status, FRONT_TEXTS.get(status, "request failed"))
    else:
        response = error_response(failure("timed out" if status == 408 else "the front's queue is full"),
                                  contract_of(path), request_id)
    if retry_after and "retry-after" in response.headers:
        response.headers["Retry-After"] = retry_after
    return response


def _json(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=dict(headers or {}))
