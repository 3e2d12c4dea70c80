"""What access control reports while it works (for metrics): credits moving, ledger failures.

Every method here does nothing; the service passes an implementation that counts
(``service.telemetry.Telemetry``). The ledger calls these from worker threads, after its
transaction committed, so an implementation must be quick and thread-safe.
"""
from __future__ import annotations

RELEASE_REASONS = ("job_failed", "expired")  # why reserved credits went back to a key


class AccessEvents:
    def credits_reserved(self, amount: int) -> None:
        """A job was admitted: ``amount`` credits held until it ends."""

    def credits_charged(self, amount: int) -> None:
        """A job succeeded: its held credits are spent."""

    def credits_released(self, amount: int, reason: str) -> None:
        """Held credits went back to the key: the job failed or was cancelled (``job_failed``), or
        its reservation outlived its deadline and the sweep gave it back (``expired``)."""

    def ledger_failed(self, operation: str) -> None:
        """A ledger call (``check_key``, ``account``, ``open_job``, ``take_pixel_tokens``, ``finish_job``,
        ``fail_job``, ``sweep``) failed on the database."""

    def ledger_call(self, operation: str, seconds: float) -> None:
        """A ledger call took ``seconds`` (succeeded or not); called in the context of the request
        that made it, so a request's own ledger time can be told from the rest of its work."""
