"""Account administration on the ledger: keys, credits, usage reports (used by the admin
CLI and the demo launcher). Blocking; not on the request path."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine

from .db import api_keys, usage
from .keys import NewKey, generate_key, validate_key_id


class AccountError(ValueError):
    """An admin request that cannot be carried out (unknown key, bad amount...)."""


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    name: str
    balance: int
    rate_per_s: float | None
    burst: int | None
    created_at: float
    revoked_at: float | None


class Accounts:
    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time):
        self.engine, self.clock = engine, clock

    def create_key(self, *, credits: int, name: str = "", rate_per_s: float | None = None,
                   burst: int | None = None, key: NewKey | None = None) -> NewKey:
        """Store a new key (a random one unless ``key`` is given); the caller shows ``.key`` once."""
        _check_amount(credits, allow_zero=True)
        if rate_per_s is not None and rate_per_s <= 0:
            raise AccountError("--rate must be a positive number of requests per second")
        if burst is not None and burst < 1:
            raise AccountError("--burst must be at least 1")
        key = key or generate_key()
        with self.engine.begin() as conn:
            conn.execute(api_keys.insert().values(key_id=key.key_id, key_hash=key.key_hash, name=name[:200],
                                                  balance=credits, rate_per_s=rate_per_s, burst=burst,
                                                  created_at=self.clock()))
        return key

    def get(self, key_id: str) -> KeyInfo | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.key_id == key_id)).first()
        return _info(row) if row else None

    def stored_hash(self, key_id: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(api_keys.c.key_hash).where(api_keys.c.key_id == key_id)).scalar()

    def list_keys(self) -> list[KeyInfo]:
        with self.engine.connect() as conn:
            return [_info(row) for row in conn.execute(select(api_keys).order_by(api_keys.c.created_at))]

    def revoke(self, key_id: str) -> None:
        validate_key_id(key_id)
        with self.engine.begin() as conn:
            found = conn.execute(update(api_keys).where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                                 .values(revoked_at=self.clock())).rowcount
        if not found:
            raise AccountError(f"no active key {key_id} (unknown, or already revoked)")

    def add_credits(self, key_id: str, amount: int) -> int:
        """Add credits; returns the new balance."""
        validate_key_id(key_id)
        _check_amount(amount, allow_zero=False)
        with self.engine.begin() as conn:
            found = conn.execute(update(api_keys).where(api_keys.c.key_id == key_id)
                                 .values(balance=api_keys.c.balance + amount)).rowcount
            if not found:
                raise AccountError(f"no key {key_id}")
            return conn.execute(select(api_keys.c.balance).where(api_keys.c.key_id == key_id)).scalar_one()

    def usage(self, key_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The latest usage rows, newest first."""
        query = select(usage).order_by(usage.c.id.desc()).limit(limit)
        if key_id is not None:
            query = query.where(usage.c.key_id == key_id)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def usage_totals(self, key_id: str | None = None) -> dict[str, dict[str, int]]:
        """Per status: number of jobs and credits (succeeded = charged)."""
        query = select(usage.c.status, func.count(), func.coalesce(func.sum(usage.c.price), 0)).group_by(usage.c.status)
        if key_id is not None:
            query = query.where(usage.c.key_id == key_id)
        with self.engine.connect() as conn:
            return {status: {"jobs": jobs, "credits": int(credits)} for status, jobs, credits in conn.execute(query)}


def _check_amount(amount: int, *, allow_zero: bool) -> None:
    if not isinstance(amount, int) or amount < 0 or (amount == 0 and not allow_zero) or amount > 10**12:
        raise AccountError(f"credits must be a whole number {'>= 0' if allow_zero else '> 0'}, got {amount!r}")


def _info(row) -> KeyInfo:
    return KeyInfo(row.key_id, row.name, row.balance, row.rate_per_s, row.burst, row.created_at, row.revoked_at)
