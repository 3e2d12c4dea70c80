"""``PolicyAccess``: the configured access policy behind the ingress's one ``admit`` call.

Per route: ``api_key`` (X-Api-Key, metered on the credit ledger, rate-limited, optional
Idempotency-Key), ``app_check`` (X-Firebase-AppCheck), ``either`` (the key when one is sent,
else App Check) or ``none``. Database and token checks run in threads, off the event loop.

Idempotency-Key semantics (API-key routes only; the key is scoped per API key): the same key
with the same request fingerprint replays the stored response of its first success without
charging; with a different fingerprint -> 409; while the first is still running -> 409
(no waiting: the client retries). A failed first attempt leaves nothing behind, so the same
key may be retried.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from .access import KEYS_NOT_CONFIGURED, Access, AccessDenied, Account, Admission, JobRequest
from .app_check import APP_CHECK_DENIED, AppCheckRejected, AppCheckVerifier
from .db import make_engine
from .ledger import Ledger, Refusal, Ticket, Unauthorized
from .settings import AuthSettings

log = logging.getLogger(__name__)
APP_CHECK_NOT_CONFIGURED = "App Check is not enabled or not configured on this server"
LEDGER_UNAVAILABLE_RETRY_S = "5"


class PolicyAccess(Access):
    def __init__(self, settings: AuthSettings, *, environ: Mapping[str, str] = os.environ,
                 ledger: Ledger | None = None, verifier: AppCheckVerifier | None = None,
                 consume_app_check: Callable[[str], bool] | None = None, clock: Callable[[], float] = time.time):
        self.policy = settings.route_policy()
        self.sweep_interval_s, self.clock = settings.sweep_interval_s, clock
        url = settings.effective_database_url(environ)
        self.ledger = ledger or (Ledger(make_engine(url), default_rate_per_s=settings.default_rate_per_s,
                                        default_burst=settings.default_burst,
                                        reservation_ttl_s=settings.reservation_ttl_s,
                                        idempotency_ttl_s=settings.idempotency_ttl_s) if url else None)
        self.verifier = verifier or (AppCheckVerifier(settings.app_check, consume=consume_app_check)
                                     if settings.app_check.project_id else None)
        self._next_sweep = 0.0
        self._background: set[asyncio.Future] = set()  # settlements that outlive a cancelled request

    @asynccontextmanager
    async def admit(self, job: JobRequest, headers: Mapping[str, str]) -> AsyncIterator[Admission]:
        headers = {name.lower(): value for name, value in headers.items()}
        required = self.policy.get(job.route)
        if required is None:
            log.error("no access policy for route %r: refusing (add it to auth.routes)", job.route)
            raise AccessDenied(503, f"access to {job.route} is not configured on this server")
        use_key = required == "api_key" or (required == "either" and (
            "x-api-key" in headers or self.verifier is None))
        if required == "none":
            yield Admission(principal="anonymous")
        elif use_key:
            async with self._metered(job, headers) as admission:
                yield admission
        else:
            yield Admission(principal=await self._verify_app_check(headers.get("x-firebase-appcheck")))

    async def _verify_app_check(self, token: str | None) -> str:
        if self.verifier is None:
            raise AccessDenied(503, APP_CHECK_NOT_CONFIGURED)
        try:
            claims = await asyncio.to_thread(self.verifier.verify, token)
        except AppCheckRejected as exc:
            log.info("App Check token rejected: %s", exc)
            raise AccessDenied(401, APP_CHECK_DENIED) from None
        return f"app:{claims.get('app_id') or claims.get('sub')}"

    @asynccontextmanager
    async def _metered(self, job: JobRequest, headers: Mapping[str, str]) -> AsyncIterator[Admission]:
        if self.ledger is None:
            raise AccessDenied(503, KEYS_NOT_CONFIGURED)
        self._maybe_sweep()
        ticket = await self._open(job, headers.get("x-api-key"), headers.get("idempotency-key"))
        admission = Admission(principal=ticket.key_id, replay=ticket.replay, credits_remaining=ticket.balance)
        try:
            yield admission
        except GeneratorExit:  # closed without finishing (no await allowed here): release in the background
            self._spawn(asyncio.to_thread(self.ledger.fail_job, ticket, "abandoned"))
            raise
        except BaseException as exc:  # including CancelledError: the client went away
            note = "cancelled (client went away)" if isinstance(exc, asyncio.CancelledError) \
                else f"{type(exc).__name__}: {exc}"
            balance = await self._settle(self.ledger.fail_job, ticket, note[:500])
            admission.credits_remaining = admission.credits_remaining if balance is None else balance
            raise
        else:
            balance = await self._settle(self.ledger.finish_job, ticket, result_id=admission.result_id,
                                         response=admission.response)
            admission.credits_remaining = admission.credits_remaining if balance is None else balance

    async def _open(self, job: JobRequest, key: str | None, idempotency_key: str | None) -> Ticket:
        opening = asyncio.ensure_future(asyncio.to_thread(self.ledger.open_job, key, job, idempotency_key))
        try:
            return await asyncio.shield(opening)  # the thread runs on regardless; see below
        except asyncio.CancelledError:
            # Cancelled while the reservation was being made: give it back once it exists.
            opening.add_done_callback(self._release_orphan)
            raise
        except Refusal as refusal:
            retry = {"Retry-After": str(refusal.retry_after_s)} if refusal.retry_after_s else None
            raise AccessDenied(refusal.status, refusal.detail, retry, refusal.credits_remaining) from None
        except SQLAlchemyError:
            log.exception("credit ledger unavailable")
            raise AccessDenied(503, "the credit ledger is unavailable; retry later",
                               {"Retry-After": LEDGER_UNAVAILABLE_RETRY_S}) from None

    async def account(self, headers: Mapping[str, str]) -> Account:
        if self.ledger is None:
            raise AccessDenied(503, KEYS_NOT_CONFIGURED)
        key = {name.lower(): value for name, value in headers.items()}.get("x-api-key")
        try:
            return await asyncio.to_thread(self.ledger.account, key)
        except Unauthorized as refusal:
            raise AccessDenied(refusal.status, refusal.detail) from None
        except SQLAlchemyError:
            log.exception("credit ledger unavailable")
            raise AccessDenied(503, "the credit ledger is unavailable; retry later",
                               {"Retry-After": LEDGER_UNAVAILABLE_RETRY_S}) from None

    def _release_orphan(self, opening: asyncio.Future) -> None:
        if not opening.cancelled() and opening.exception() is None:
            self._spawn(asyncio.to_thread(self.ledger.fail_job, opening.result(), "cancelled (client went away)"))

    async def _settle(self, settle: Callable[..., int | None], ticket: Ticket, *args: Any, **kwargs: Any) -> int | None:
        """Commit or release; shielded so a second cancellation cannot skip it. A ledger error
        here is logged, not raised: the job already ran, and the sweep releases what is left.
        Returns the key's balance after settling (None when unknown or unchanged)."""
        task = self._spawn(asyncio.to_thread(settle, ticket, *args, **kwargs))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            raise
        except Exception:
            return None  # logged by _spawn's callback

    def _maybe_sweep(self) -> None:
        now = self.clock()
        if now >= self._next_sweep:
            self._next_sweep = now + self.sweep_interval_s
            self._spawn(asyncio.to_thread(self.ledger.sweep))

    def _spawn(self, awaitable) -> asyncio.Future:
        task = asyncio.ensure_future(awaitable)
        self._background.add(task)
        task.add_done_callback(self._finished_background)
        return task

    def _finished_background(self, task: asyncio.Future) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("credit ledger update failed (the sweep will release what is left)",
                      exc_info=task.exception())

    async def drain(self) -> None:
        """Wait for background settlements (tests, shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.engine.dispose()
        if self.verifier is not None:
            self.verifier.close()
