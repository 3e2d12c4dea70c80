"""The credit ledger's request path: authenticate, rate-limit, idempotency, reserve, then
commit or release. Blocking (SQLAlchemy); the async access layer runs it in threads.

Every step for one key runs under that key's row lock (SELECT ... FOR UPDATE on PostgreSQL,
BEGIN IMMEDIATE on SQLite), so several ingress processes see one consistent balance,
bucket and idempotency table. Credits are taken by a conditional UPDATE (balance >= price)
when the job starts and given back if it fails; a reservation whose process died is
given back by ``sweep`` once its deadline has passed.
"""
from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from .access import Account, JobRequest
from .db import api_keys, idempotency, usage
from .events import AccessEvents
from .keys import InvalidKeyFormat, hash_matches, parse_key
from .ratelimit import pixel_tokens, take_token

log = logging.getLogger(__name__)
MAX_IDEMPOTENCY_KEY_CHARS = 255
INVALID_KEY = "missing or invalid API key (send it in the X-Api-Key header)"
REVOKED_KEY = "this API key has been revoked"
RATE_LIMITED = "rate limit exceeded for this API key; retry after the Retry-After delay"


class Refusal(Exception):
    """The ledger refuses the request; ``status`` is the HTTP status to answer with, ``reason`` why
    (``auth.access.DENIAL_REASONS``)."""
    status = 400
    reason = "bad_request"

    def __init__(self, detail: str, retry_after_s: int | None = None, credits_remaining: int | None = None):
        super().__init__(detail)
        self.detail, self.retry_after_s = detail, retry_after_s
        self.credits_remaining = credits_remaining  # the key's balance, once the key was identified


class Unauthorized(Refusal):
    status = 401
    reason = "unauthorized"


class InsufficientCredits(Refusal):
    status = 403
    reason = "no_credits"


class IdempotencyConflict(Refusal):
    status = 409
    reason = "conflict"


class RateLimited(Refusal):
    status = 429
    reason = "rate_limited"


def _reports_database_failures(method):
    """A database error in ``method`` is reported (``AccessEvents.ledger_failed``) and raised on;
    every call's duration is reported too (``AccessEvents.ledger_call``)."""
    @functools.wraps(method)
    def reported(self: Ledger, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        except SQLAlchemyError:
            self.events.ledger_failed(method.__name__)
            raise
        finally:
            self.events.ledger_call(method.__name__, time.perf_counter() - started)
    return reported


@dataclass(frozen=True)
class Ticket:
    """An admitted job: a reservation to settle, or a replay of an earlier success."""
    key_id: str
    usage_id: int | None = None
    price: int = 0
    started_at: float = 0.0
    idempotency_key: str | None = None
    replay: dict[str, Any] | None = None
    balance: int = 0  # the key's credits once this ticket was opened (its price already taken out)


class Ledger:
    def __init__(self, engine: Engine, *, default_rate_per_s: float = 1.0, default_burst: int = 10,
                 reservation_ttl_s: float = 900, idempotency_ttl_s: float = 86_400,
                 clock: Callable[[], float] = time.time, events: AccessEvents | None = None):
        self.engine, self.clock = engine, clock
        self.events = events or AccessEvents()  # credits moved and database failures, for metrics
        self.default_rate_per_s, self.default_burst = default_rate_per_s, default_burst
        self.reservation_ttl_s, self.idempotency_ttl_s = reservation_ttl_s, idempotency_ttl_s

    def ping(self) -> None:
        """Raise when the database does not answer a trivial query (readiness)."""
        with self.engine.connect() as conn:
            conn.execute(select(1))

    @_reports_database_failures
    def check_key(self, presented_key: str | None) -> str:
        """Read-only: the key's id when it may send a job now (known, not revoked, a token in its
        bucket), else a Refusal. Lets the HTTP layer refuse before it reads a request body;
        ``open_job`` decides for real, under the key's lock."""
        presented = _parse(presented_key)
        with self.engine.connect().execution_options(read_only=True) as conn:
            row = self._authenticated_row(conn, presented, lock=False)
        bucket = take_token(row.bucket_tokens, row.bucket_at, self.clock(), rate_per_s=row.rate_per_s or
                            self.default_rate_per_s, burst=row.burst or self.default_burst)  # computed, not taken
        if not bucket.allowed:
            raise RateLimited(RATE_LIMITED, bucket.retry_after_s, credits_remaining=row.balance)
        return row.key_id

    @_reports_database_failures
    def account(self, presented_key: str | None) -> Account:
        """The presented key's own account: balance and effective rate limit. Charges nothing,
        takes no rate-limit token, writes nothing."""
        presented = _parse(presented_key)
        with self.engine.connect().execution_options(read_only=True) as conn:
            row = self._authenticated_row(conn, presented, lock=False)
        return Account(key_id=row.key_id, name=row.name or None, credits=row.balance,
                       rate_per_s=row.rate_per_s or self.default_rate_per_s, burst=row.burst or self.default_burst)

    @staticmethod
    def _authenticated_row(conn: Connection, presented, *, lock: bool):
        query = select(api_keys).where(api_keys.c.key_id == presented.key_id)
        row = conn.execute(query.with_for_update() if lock else query).first()
        if not hash_matches(row.key_hash if row else None, presented.key_hash):
            raise Unauthorized(INVALID_KEY)
        if row.revoked_at is not None:
            raise Unauthorized(REVOKED_KEY)
        return row

    @_reports_database_failures
    def open_job(self, presented_key: str | None, job: JobRequest, idempotency_key: str | None = None) -> Ticket:
        """Admit a job or raise a Refusal. Refusals after authentication leave a usage row."""
        presented = _parse(presented_key)
        if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_CHARS:
            raise Refusal(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters")
        now = self.clock()
        refusal: Refusal | None = None
        with self.engine.begin() as conn:
            row = self._authenticated_row(conn, presented, lock=True)
            bucket = take_token(row.bucket_tokens, row.bucket_at, now, rate_per_s=row.rate_per_s or
                                self.default_rate_per_s, burst=row.burst or self.default_burst)
            if not bucket.allowed:
                self._record_refusal(conn, row.key_id, job, now, "rate limited", idempotency_key)
                refusal = RateLimited(RATE_LIMITED, bucket.retry_after_s)
            else:
                conn.execute(update(api_keys).where(api_keys.c.key_id == row.key_id)
                             .values(bucket_tokens=bucket.tokens, bucket_at=bucket.at))
                ticket_or_refusal = self._idempotent_reserve(conn, row.key_id, job, idempotency_key, now, row.balance)
                if isinstance(ticket_or_refusal, Refusal):
                    refusal = ticket_or_refusal
            if refusal is not None:
                refusal.credits_remaining = row.balance  # nothing was taken: the row as locked
        if refusal is not None:
            raise refusal  # raised after the commit, so the bucket and the usage row are kept
        if ticket_or_refusal.price:  # a replay holds nothing
            self.events.credits_reserved(ticket_or_refusal.price)
        return ticket_or_refusal

    def _idempotent_reserve(self, conn: Connection, key_id: str, job: JobRequest, idempotency_key: str | None,
                            now: float, balance: int) -> Ticket | Refusal:
        if idempotency_key is not None:
            earlier = conn.execute(select(idempotency).where(
                idempotency.c.key_id == key_id, idempotency.c.idempotency_key == idempotency_key)).first()
            if earlier is not None and earlier.expires_at <= now:  # an expired replay, or a dead process's lease
                conn.execute(delete(idempotency).where(idempotency.c.key_id == key_id,
                                                       idempotency.c.idempotency_key == idempotency_key))
                earlier = None
            if earlier is not None:
                if earlier.fingerprint != (job.fingerprint or ""):
                    return IdempotencyConflict("this Idempotency-Key was already used with a different request; "
                                               "use a new key for a new request")
                if earlier.status == "in_progress":
                    return IdempotencyConflict("a request with this Idempotency-Key is still in progress; "
                                               "retry once it has finished")
                return Ticket(key_id=key_id, idempotency_key=idempotency_key, replay=json.loads(earlier.response),
                              balance=balance)
        reserved = conn.execute(update(api_keys).where(api_keys.c.key_id == key_id, api_keys.c.balance >= job.price)
                                .values(balance=api_keys.c.balance - job.price))
        if reserved.rowcount != 1:
            self._record_refusal(conn, key_id, job, now, "insufficient credits", idempotency_key)
            return InsufficientCredits(f"not enough credits: this job costs {job.price}; add credits to this key")
        deadline = now + self.reservation_ttl_s
        usage_id = conn.execute(usage.insert().values(
            **_job_columns(key_id, job, idempotency_key), status="reserved", started_at=now,
            deadline=deadline)).inserted_primary_key[0]
        if idempotency_key is not None:
            conn.execute(idempotency.insert().values(
                key_id=key_id, idempotency_key=idempotency_key, fingerprint=job.fingerprint or "",
                status="in_progress", usage_id=usage_id, created_at=now, expires_at=deadline))
        return Ticket(key_id=key_id, usage_id=usage_id, price=job.price, started_at=now,
                      idempotency_key=idempotency_key, balance=balance - job.price)  # the row is locked

    @_reports_database_failures
    def take_pixel_tokens(self, ticket: Ticket, pixels: int, megapixels_per_token: float | None) -> int:
        """A large photo's extra tokens (``ratelimit.pixel_tokens``), taken from the key's bucket once
        its size is known; all or none. Raises RateLimited (with the wait) when the bucket is short,
        leaving it as it was. Returns the tokens taken."""
        if pixel_tokens(pixels, megapixels_per_token, burst=2) == 0:
            return 0  # takes no extra token whatever the key's burst: no database round trip
        now = self.clock()
        with self.engine.begin() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.key_id == ticket.key_id).with_for_update()).first()
            if row is None:
                return 0
            burst = row.burst or self.default_burst
            count = pixel_tokens(pixels, megapixels_per_token, burst=burst)
            if count == 0:
                return 0
            bucket = take_token(row.bucket_tokens, row.bucket_at, now, rate_per_s=row.rate_per_s or
                                self.default_rate_per_s, burst=burst, count=count)
            if not bucket.allowed:
                raise RateLimited(f"rate limit exceeded for this API key: a photo of {pixels / 1e6:.1f} megapixels "
                                  f"takes {count + 1} tokens; retry after the Retry-After delay", bucket.retry_after_s)
            conn.execute(update(api_keys).where(api_keys.c.key_id == row.key_id)
                         .values(bucket_tokens=bucket.tokens, bucket_at=bucket.at))
        return count

    @_reports_database_failures
    def finish_job(self, ticket: Ticket, *, result_id: str | None, response: dict[str, Any] | None) -> int | None:
        """The job succeeded: keep the reserved credits, store the response for replays. Safe to repeat
        (a retry after a commit whose acknowledgement was lost charges nothing more). Returns the
        key's balance after the charge (None for a replay: nothing changed)."""
        if ticket.usage_id is None:
            return None  # a replay: nothing was reserved
        now = self.clock()
        refusal: Refusal | None = None
        with self.engine.begin() as conn:
            settled = conn.execute(update(usage).where(usage.c.id == ticket.usage_id, usage.c.status == "reserved")
                                   .values(status="succeeded", finished_at=now, deadline=None, result_id=result_id,
                                           duration_s=now - ticket.started_at))
            charged = settled.rowcount == 1
            current = None if charged else conn.execute(
                select(usage.c.status).where(usage.c.id == ticket.usage_id)).scalar()
            if current == "failed":  # the sweep gave the credits back (job outlived its deadline): charge again
                charged = conn.execute(update(api_keys).where(api_keys.c.key_id == ticket.key_id,
                                                              api_keys.c.balance >= ticket.price)
                                       .values(balance=api_keys.c.balance - ticket.price)).rowcount == 1
                note = "reservation had expired; charged again" if charged else \
                    "reservation had expired and credits ran out: not charged, result withheld"
                log.warning("usage %s finished after its reservation expired (%s)", ticket.usage_id, note)
                conn.execute(update(usage).where(usage.c.id == ticket.usage_id).values(
                    status="succeeded" if charged else "failed", note=note, finished_at=now,
                    result_id=result_id if charged else None, duration_s=now - ticket.started_at))
                if not charged:  # never deliver what is not paid for
                    refusal = InsufficientCredits("not enough credits: this job's reservation expired while it "
                                                  "ran and the key's credits ran out meanwhile")
            if refusal is None and ticket.idempotency_key is not None:
                body = response if response is not None else {"result_id": result_id}
                conn.execute(update(idempotency).where(
                    idempotency.c.key_id == ticket.key_id, idempotency.c.idempotency_key == ticket.idempotency_key,
                    idempotency.c.usage_id == ticket.usage_id).values(
                    status="succeeded", response=json.dumps(body, default=str),
                    expires_at=now + self.idempotency_ttl_s))
            balance = _balance(conn, ticket.key_id)
        if charged and ticket.price:
            self.events.credits_charged(ticket.price)
        if refusal is not None:
            refusal.credits_remaining = balance
            raise refusal  # after the commit: the usage row says why
        return balance

    @_reports_database_failures
    def fail_job(self, ticket: Ticket, note: str) -> int | None:
        """The job failed or was cancelled: give the credits back; the Idempotency-Key may be retried.
        Returns the key's balance after the release (None for a replay: nothing changed)."""
        if ticket.usage_id is None:
            return None
        now = self.clock()
        with self.engine.begin() as conn:
            released = self._release(conn, ticket.usage_id, ticket.key_id, ticket.price, note, now, ticket.started_at)
            if ticket.idempotency_key is not None:
                conn.execute(delete(idempotency).where(
                    idempotency.c.key_id == ticket.key_id, idempotency.c.idempotency_key == ticket.idempotency_key,
                    idempotency.c.usage_id == ticket.usage_id, idempotency.c.status == "in_progress"))
            balance = _balance(conn, ticket.key_id)
        if released and ticket.price:
            self.events.credits_released(ticket.price, "job_failed")
        return balance

    @_reports_database_failures
    def sweep(self, limit: int = 500) -> int:
        """Give back reservations past their deadline (their process died) and drop expired
        idempotency records. Safe to run from every replica at once. Returns releases done."""
        now = self.clock()
        with self.engine.begin() as conn:
            stale = conn.execute(select(usage.c.id, usage.c.key_id, usage.c.price, usage.c.started_at)
                                 .where(usage.c.status == "reserved", usage.c.deadline < now)
                                 .order_by(usage.c.id).limit(limit)).all()
        released = 0
        for row in stale:  # one short transaction each: never hold many key locks at once
            with self.engine.begin() as conn:
                moved = self._release(conn, row.id, row.key_id, row.price,
                                      "reservation expired (its process stopped?); credits given back",
                                      now, row.started_at)
            released += moved
            if moved and row.price:
                self.events.credits_released(row.price, "expired")
        with self.engine.begin() as conn:
            conn.execute(delete(idempotency).where(idempotency.c.expires_at < now))
        if released:
            log.warning("released %d expired credit reservations", released)
        return released

    @staticmethod
    def _release(conn: Connection, usage_id: int, key_id: str, price: int, note: str, now: float,
                 started_at: float) -> int:
        # Only the transition reserved -> failed gives credits back, so a release and the sweep
        # racing on the same row refund once.
        moved = conn.execute(update(usage).where(usage.c.id == usage_id, usage.c.status == "reserved").values(
            status="failed", note=note[:1000], finished_at=now, deadline=None, duration_s=now - started_at))
        if moved.rowcount == 1:
            conn.execute(update(api_keys).where(api_keys.c.key_id == key_id)
                         .values(balance=api_keys.c.balance + price))
        return moved.rowcount

    @staticmethod
    def _record_refusal(conn: Connection, key_id: str, job: JobRequest, now: float, note: str,
                        idempotency_key: str | None) -> None:
        conn.execute(usage.insert().values(**_job_columns(key_id, job, idempotency_key), status="refused",
                                           note=note, started_at=now, finished_at=now, duration_s=0.0))


def _parse(presented_key: str | None):
    try:
        return parse_key(presented_key or "")
    except InvalidKeyFormat:
        raise Unauthorized(INVALID_KEY) from None


def _balance(conn: Connection, key_id: str) -> int:
    return conn.execute(select(api_keys.c.balance).where(api_keys.c.key_id == key_id)).scalar_one()


def _job_columns(key_id: str, job: JobRequest, idempotency_key: str | None) -> dict[str, Any]:
    addons = ",".join(sorted(name for name, value in job.details.items() if name != "model" and value == "true"))
    return {"key_id": key_id, "route": job.route, "model": job.details.get("model"), "addons": addons,
            "price": job.price, "idempotency_key": idempotency_key}
