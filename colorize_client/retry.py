"""When to send a request again, and after how long.

Retried: timeouts and dropped connections, 5xx, 429, a 409 whose first request is still
running (after a timeout, our own first attempt may be), and a 404 that is not the service's own
(Serve's proxy while the application deploys). 429 and 503 wait for the service's
Retry-After; the rest back off exponentially, with full jitter, up to a cap. Other 4xx are final.
Every retry carries the same Idempotency-Key, so a job the service already finished is
replayed, not charged again. Waits for a 429 do not use up attempts: the service is answering
and says when to come back.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .errors import ColorizeError, RateLimited


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6                 # sends per request at most, 429s not counted
    backoff_s: float = 0.5            # the first backoff; doubles each time
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 600.0  # a longer Retry-After than this gives up instead of waiting
    wait_when_rate_limited: bool = True
    jitter: bool = True               # spreads clients that failed together (after a restart) apart

    def delay(self, error: ColorizeError, failures: int) -> float | None:
        """Seconds to wait before the next send, or None to give up. ``failures``: the attempts
        that failed so far (``counts``), including this one."""
        if not error.retryable:
            return None
        if isinstance(error, RateLimited):
            if not self.wait_when_rate_limited:
                return None
            if error.retry_after is None:  # the service always sends one; be gentle without it
                return self._backoff(3)
            return error.retry_after if error.retry_after <= self.max_retry_after_s else None
        if failures >= self.attempts:
            return None
        if error.retry_after is not None:  # 503 with Retry-After
            return error.retry_after if error.retry_after <= self.max_retry_after_s else None
        return self._backoff(failures)

    @staticmethod
    def counts(error: ColorizeError) -> bool:
        """Whether this failure uses up an attempt."""
        return not isinstance(error, RateLimited)

    def _backoff(self, failures: int) -> float:
        ceiling = min(self.max_backoff_s, self.backoff_s * 2 ** max(failures - 1, 0))
        return random.uniform(ceiling / 2, ceiling) if self.jitter else ceiling


NO_RETRIES = RetryPolicy(attempts=1, wait_when_rate_limited=False)
