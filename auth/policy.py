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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from .access import KEYS_NOT_CONFIGURED, Access, AccessDenied, Account, Admission, JobRequest
from .app_check import APP_CHECK_DENIED, AppCheckRejected, AppCheckVerifier
from .db import make_engine
from .events import AccessEvents
from .ledger import Ledger, Refusal, Ticket
from .ratelimit import FailureThrottle
from .settings import AuthSettings

log = logging.getLogger(__name__)
APP_CHECK_NOT_CONFIGURED = "App Check is not enabled or not configured on this server"
LEDGER_UNAVAILABLE_RETRY_S = "5"


class PolicyAccess(Access):
    def __init__(self, settings: AuthSettings, *, environ: Mapping[str, str] = os.environ,
                 ledger: Ledger | None = None, verifier: AppCheckVerifier | None = None,
                 consume_app_check: Callable[[str], bool] | None = None, clock: Callable[[], float] = time.time,
                 events: AccessEvents | None = None):
        self.policy = settings.route_policy()
        self.sweep_interval_s, self.clock = settings.sweep_interval_s, clock
        self.commit_retry_s = settings.commit_retry_s
        self.megapixels_per_token = settings.megapixels_per_token
        self.failures = FailureThrottle(rate_per_s=settings.failed_auth_rate_per_s, burst=settings.failed_auth_burst)
        url = settings.effective_database_url(environ)
        self.ledger = ledger or (Ledger(make_engine(url), default_rate_per_s=settings.default_rate_per_s,
                                        default_burst=settings.default_burst,
                                        reservation_ttl_s=settings.reservation_ttl_s,
                                        idempotency_ttl_s=settings.idempotency_ttl_s, events=events) if url else None)
        self.verifier = verifier or (AppCheckVerifier(settings.app_check, consume=consume_app_check)
                                     if settings.app_check.project_id else None)
        self._next_sweep = 0.0
        self._background: set[asyncio.Future] = set()  # settlements that outlive a cancelled request

    def check(self) -> None:
        if self.ledger is not None:
            self.ledger.ping()

    def _credential(self, route: str, headers: Mapping[str, str]) -> str:
        """Which credential ``route`` takes from this request: "none", "api_key" or "app_check"."""
        required = self.policy.get(route)
        if required is None:
            log.error("no access policy for route %r: refusing (add it to auth.routes)", route)
            raise AccessDenied(503, f"access to {route} is not configured on this server", reason="not_configured")
        if required == "either":
            return "api_key" if "x-api-key" in headers or self.verifier is None else "app_check"
        return required

    async def identify(self, route: str, headers: Mapping[str, str], client: str | None = None) -> None:
        headers = {name.lower(): value for name, value in headers.items()}
        credential = self._credential(route, headers)
        if credential == "api_key":
            if self.ledger is None:
                raise AccessDenied(503, KEYS_NOT_CONFIGURED, reason="not_configured")
            await self._checked(client, self._ledger_call(self.ledger.check_key, headers.get("x-api-key")))
        elif credential == "app_check":
            await self._checked(client, self._verify_app_check(headers.get("x-firebase-appcheck")))

    @asynccontextmanager
    async def admit(self, job: JobRequest, headers: Mapping[str, str],
                    client: str | None = None) -> AsyncIterator[Admission]:
        headers = {name.lower(): value for name, value in headers.items()}
        credential = self._credential(job.route, headers)
        if credential == "none":
            yield Admission(principal="anonymous")
        elif credential == "api_key":
            async with self._metered(job, headers, client) as admission:
                yield admission
        else:
            principal = await self._checked(client, self._verify_app_check(headers.get("x-firebase-appcheck")))
            yield Admission(principal=principal)

    async def _checked(self, client: str | None, check: Awaitable[Any]) -> Any:
        """Run a credential check, refusing addresses with too many failed attempts first."""
        wait = self.failures.retry_after_s(client, self.clock())
        if wait:
            check.close()  # never started
            raise AccessDenied(429, "too many failed authentication attempts from this address; retry later",
                               {"Retry-After": str(wait)}, reason="auth_throttled")
        try:
            return await check
        except AccessDenied as refusal:
            if refusal.status == 401:
                self.failures.failed(client, self.clock())
            raise

    async def _ledger_call(self, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(call, *args)
        except (Refusal, SQLAlchemyError) as exc:
            raise _denied(exc) from None

    async def _verify_app_check(self, token: str | None) -> str:
        if self.verifier is None:
            raise AccessDenied(503, APP_CHECK_NOT_CONFIGURED, reason="not_configured")
        try:
            claims = await asyncio.to_thread(self.verifier.verify, token)
        except AppCheckRejected as exc:
            log.info("App Check token rejected: %s", exc)
            raise AccessDenied(401, APP_CHECK_DENIED, reason="unauthorized") from None
        return f"app:{claims.get('app_id') or claims.get('sub')}"

    @asynccontextmanager
    async def _metered(self, job: JobRequest, headers: Mapping[str, str],
                       client: str | None) -> AsyncIterator[Admission]:
        if self.ledger is None:
            raise AccessDenied(503, KEYS_NOT_CONFIGURED, reason="not_configured")
        self._maybe_sweep()
        ticket = await self._checked(client, self._open(job, headers.get("x-api-key"), headers.get("idempotency-key")))
        admission = Admission(principal=ticket.key_id, replay=ticket.replay, credits_remaining=ticket.balance,
                              pixel_check=lambda pixels: self._take_pixel_tokens(ticket, pixels))
        try:
            yield admission
        except GeneratorExit:  # closed without finishing (no await allowed here): release in the background
            self._spawn(self._release_when_possible(ticket, "abandoned"))
            raise
        except BaseException as exc:  # including CancelledError: the client went away
            note = "cancelled (client went away)" if isinstance(exc, asyncio.CancelledError) \
                else f"{type(exc).__name__}: {exc}"
            balance = await self._settle(self.ledger.fail_job, ticket, note[:500])
            if balance is None and ticket.usage_id is not None:  # the ledger did not answer: keep trying
                self._spawn(self._release_when_possible(ticket, note[:500]))
            admission.credits_remaining = admission.credits_remaining if balance is None else balance
            raise
        else:
            balance = await self._commit(ticket, admission)
            admission.credits_remaining = admission.credits_remaining if balance is None else balance

    async def _take_pixel_tokens(self, ticket: Ticket, pixels: int) -> None:
        if ticket.replay is None:
            await self._ledger_call(self.ledger.take_pixel_tokens, ticket, pixels, self.megapixels_per_token)

    async def _open(self, job: JobRequest, key: str | None, idempotency_key: str | None) -> Ticket:
        opening = asyncio.ensure_future(asyncio.to_thread(self.ledger.open_job, key, job, idempotency_key))
        try:
            return await asyncio.shield(opening)  # the thread runs on regardless; see below
        except asyncio.CancelledError:
            # Cancelled while the reservation was being made: give it back once it exists.
            opening.add_done_callback(self._release_orphan)
            raise
        except (Refusal, SQLAlchemyError) as exc:
            raise _denied(exc) from None

    async def _commit(self, ticket: Ticket, admission: Admission) -> int | None:
        """Charge before answering: a result is handed out only once its charge is durable. The
        ledger is retried for ``commit_retry_s``; if it stays down the answer is 503 (the link is
        never sent) and the reservation is given back as soon as the ledger answers again.
        Returns the key's balance after the charge."""
        deadline, delay = time.monotonic() + self.commit_retry_s, 0.1
        while True:
            commit = self._spawn(asyncio.to_thread(self.ledger.finish_job, ticket, result_id=admission.result_id,
                                                   response=admission.response), log_failure=False)
            try:
                return await asyncio.shield(commit)
            except Refusal as refusal:  # the reservation expired and the credits ran out meanwhile
                raise AccessDenied(refusal.status, refusal.detail, credits_remaining=refusal.credits_remaining,
                                   reason=refusal.reason) from None
            except SQLAlchemyError as exc:
                if time.monotonic() + delay > deadline:
                    log.error("credit ledger unavailable for %.0f s: result %s withheld, not charged (%s)",
                              self.commit_retry_s, admission.result_id, exc)
                    self._spawn(self._release_when_possible(ticket, "ledger unavailable at commit: result withheld"))
                    raise AccessDenied(503, "the credit ledger is unavailable, so the result was not delivered "
                                            "and nothing was charged; retry later",
                                       {"Retry-After": LEDGER_UNAVAILABLE_RETRY_S}, reason="ledger_unavailable") from None
                log.warning("committing charge of %s failed (%s); retrying in %.1f s", ticket.usage_id, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _release_when_possible(self, ticket: Ticket, note: str) -> None:
        """Give a failed or withheld job's credits back once the ledger answers (``fail_job`` is
        safe to repeat); the sweep does it after the reservation's deadline if this process stops first."""
        delay = 1.0
        while True:
            try:
                await asyncio.to_thread(self.ledger.fail_job, ticket, note)
                return
            except SQLAlchemyError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def account(self, headers: Mapping[str, str], client: str | None = None) -> Account:
        if self.ledger is None:
            raise AccessDenied(503, KEYS_NOT_CONFIGURED, reason="not_configured")
        key = {name.lower(): value for name, value in headers.items()}.get("x-api-key")
        return await self._checked(client, self._ledger_call(self.ledger.account, key))  # bad keys throttled too

    def _release_orphan(self, opening: asyncio.Future) -> None:
        if not opening.cancelled() and opening.exception() is None:
            self._spawn(self._release_when_possible(opening.result(), "cancelled (client went away)"))

    async def _settle(self, settle: Callable[..., int | None], ticket: Ticket, *args: Any, **kwargs: Any) -> int | None:
        """Commit or release; shielded so a second cancellation cannot skip it. A ledger error
        here is logged, not raised: the job already ran, and the sweep releases what is left.
        Returns the key's balance after it (None when unknown or unchanged)."""
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

    def _spawn(self, awaitable, *, log_failure: bool = True) -> asyncio.Future:
        task = asyncio.ensure_future(awaitable)
        self._background.add(task)
        task.add_done_callback(self._finished_background if log_failure else self._background.discard)
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


def _denied(exc: Exception) -> AccessDenied:
    """A ledger refusal as its HTTP status; a database failure as 503 with Retry-After."""
    if isinstance(exc, Refusal):
        retry = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
        return AccessDenied(exc.status, exc.detail, retry, exc.credits_remaining, reason=exc.reason)
    log.error("credit ledger unavailable: %s", exc)
    return AccessDenied(503, "the credit ledger is unavailable; retry later",
                        {"Retry-After": LEDGER_UNAVAILABLE_RETRY_S}, reason="ledger_unavailable")
