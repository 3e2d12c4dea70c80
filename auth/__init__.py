"""Access control: who may call which route, and what a job costs.

The ingress calls ``Access.admit`` at exactly one place per request. Keys, credits and
Firebase App Check plug in behind that one call.
"""
from .access import AccessDenied, Access, Admission, JobRequest, OpenAccess
from .pricing import job_price

__all__ = ["Access", "AccessDenied", "Admission", "JobRequest", "OpenAccess", "job_price"]
