"""What became of a failed request, in the closed vocabulary of metrics and the job log
(``service.telemetry``): an outcome, and for some failures why it was shed, which storage call
failed or how an image URL failed.
"""
from __future__ import annotations

from dataclasses import dataclass

from auth import AccessDenied
from pipeline.errors import ImageTooLargeError, InvalidImageError
from pipeline.inputs.remote_image import RemoteImageError
from storage import StorageError

from .errors import ApiError
from .jobs import NotReady, Overloaded, StageFailed, StageUnavailable, StoreReadFailed, StoreWriteFailed
from .telemetry import RequestRecord


@dataclass(frozen=True)
class Failure:
    outcome: str                          # service.telemetry.OUTCOMES
    shed_reason: str | None = None        # SHED_REASONS: answered "retry later"
    storage_operation: str | None = None  # STORAGE_OPERATIONS
    url_fetch_kind: str | None = None     # URL_FETCH_KINDS

    def note(self, record: RequestRecord) -> None:
        record.outcome, record.reason = self.outcome, self.shed_reason
        record.storage_operation, record.url_fetch_kind = self.storage_operation, self.url_fetch_kind


# Looked up along each exception's MRO, like service.errors.ERROR_TABLE (a unit test keeps the two in step).
FAILURES: dict[type[BaseException], Failure] = {
    InvalidImageError: Failure("invalid_request"),
    ImageTooLargeError: Failure("invalid_request"),
    StageUnavailable: Failure("model_not_loaded"),
    Overloaded: Failure("shed", shed_reason="overload"),
    NotReady: Failure("shed", shed_reason="not_ready"),
    StageFailed: Failure("stage_failed"),
    StoreWriteFailed: Failure("storage_failed", storage_operation="write"),
    StoreReadFailed: Failure("storage_failed", storage_operation="read"),
    StorageError: Failure("storage_failed", storage_operation="link"),  # raised as is only by presigning a link
}
# AccessDenied by its reason (auth.DENIAL_REASONS); any other denial is "refused".
DENIALS: dict[str, Failure] = {
    "rate_limited": Failure("shed", shed_reason="rate_limited"),
    "auth_throttled": Failure("shed", shed_reason="auth_throttled"),
    "ledger_unavailable": Failure("ledger_unavailable"),
}
URL_FETCH_KIND_BY_STATUS = {400: "refused", 413: "too_large", 502: "unreachable"}


def classify(exc: BaseException) -> Failure:
    if isinstance(exc, AccessDenied):
        return DENIALS.get(exc.reason, Failure("refused"))
    if isinstance(exc, ApiError):
        return Failure("not_found" if exc.status == 404 else "refused" if exc.status in (401, 403)
                       else "invalid_request")
    if isinstance(exc, RemoteImageError):
        return Failure("url_fetch_failed", url_fetch_kind=URL_FETCH_KIND_BY_STATUS.get(exc.status, "unreachable"))
    return next((FAILURES[cls] for cls in type(exc).__mro__ if cls in FAILURES), Failure("error"))
