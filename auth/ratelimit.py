"""Token bucket arithmetic. The state lives in the ledger database (see ledger.py), so every
ingress replica draws from the same bucket; this module only does the math."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BucketDecision:
    allowed: bool
    tokens: float        # tokens left after this request (allowed) or available now (refused)
    at: float            # time the stored state refers to
    retry_after_s: int   # refused: whole seconds until one token is back (>= 1); allowed: 0


def take_token(tokens: float | None, at: float | None, now: float, *, rate_per_s: float, burst: int) -> BucketDecision:
    """Refill at ``rate_per_s`` up to ``burst`` since ``at``, then take one token if there is one.

    ``tokens=None`` is a bucket never used (full). A clock that went backwards (replicas on
    different hosts) refills nothing rather than draining the bucket.
    """
    if tokens is None or at is None:
        available = float(burst)
        at = now
    else:
        available = min(float(burst), tokens + max(0.0, now - at) * rate_per_s)
        at = max(at, now)
    if available >= 1.0:
        return BucketDecision(True, available - 1.0, at, 0)
    wait = (1.0 - available) / rate_per_s
    return BucketDecision(False, available, at, max(1, math.ceil(wait - 1e-9)))


class FailureThrottle:
    """Failed authentications per client address, in this process: each failure takes a token
    from the address's bucket, and an address whose bucket is empty is refused before its
    credentials are even looked at. Guessing keys then runs at ``rate_per_s`` per address.
    Bounded: the least recently failing addresses are forgotten first."""

    def __init__(self, *, rate_per_s: float, burst: int, max_addresses: int = 10_000):
        self.rate_per_s, self.burst, self.max_addresses = rate_per_s, burst, max_addresses
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, at); insertion = recency

    def retry_after_s(self, address: str | None, now: float) -> int:
        """0 when ``address`` may try; else whole seconds until it may."""
        state = self._buckets.get(address or "")
        if state is None:
            return 0
        tokens, at = state
        available = min(float(self.burst), tokens + max(0.0, now - at) * self.rate_per_s)
        return 0 if available >= 1.0 else max(1, math.ceil((1.0 - available) / self.rate_per_s - 1e-9))

    def failed(self, address: str | None, now: float) -> None:
        key = address or ""
        tokens, at = self._buckets.pop(key, (None, None))
        decision = take_token(tokens, at, now, rate_per_s=self.rate_per_s, burst=self.burst)
        self._buckets[key] = (decision.tokens if decision.allowed else 0.0, decision.at)
        while len(self._buckets) > self.max_addresses:
            self._buckets.pop(next(iter(self._buckets)))
