"""Access control: who may call which route, and charging a job its price (which comes with the request).

The ingress calls ``Access.admit`` at exactly one place per request. ``PolicyAccess`` puts
API keys (credit ledger, rate limits, idempotency) and Firebase App Check behind that call.
"""
from .access import DENIAL_REASONS, AccessDenied, Access, Account, Admission, JobRequest, OpenAccess, request_fingerprint
from .demo import ensure_demo_key
from .events import RELEASE_REASONS, AccessEvents
from .policy import PolicyAccess
from .settings import AppCheckSettings, AuthSettings

__all__ = ["DENIAL_REASONS", "RELEASE_REASONS", "Access", "AccessDenied", "AccessEvents", "Account", "Admission",
           "AppCheckSettings", "AuthSettings", "JobRequest", "OpenAccess", "PolicyAccess", "ensure_demo_key",
           "request_fingerprint"]
