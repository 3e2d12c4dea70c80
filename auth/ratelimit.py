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
