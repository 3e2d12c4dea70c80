"""The credit ledger on SQLite and on a real PostgreSQL server: keys, reserve/commit/release,
refusals, idempotency, rate limits, the sweep, and concurrency across separate engines."""
from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from auth import JobRequest
from auth.accounts import AccountError, Accounts
from auth.db import api_keys, make_engine, usage
from auth.keys import generate_key
from auth.ledger import IdempotencyConflict, InsufficientCredits, Ledger, RateLimited, Refusal, Unauthorized
from tests.auth_fixtures import database_url, postgres_server, postgres_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]

JOB = JobRequest("POST /api/v1/colorize", price=3,
                 details={"model": "tiny", "clean_scratches": "false", "face_remaster": "true"}, fingerprint="f1")


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    ledger: Ledger
    accounts: Accounts
    clock: Clock
    url: str

    def key(self, credits: int = 10, **options) -> str:
        return self.accounts.create_key(credits=credits, **options).key

    def balance(self, key: str) -> int:
        return self.accounts.get(key.split("_")[2]).balance

    def usage_rows(self) -> list[dict]:
        return list(reversed(self.accounts.usage(limit=1000)))


@pytest.fixture
def env(database_url: str) -> Iterator[Env]:  # noqa: F811
    engine, clock = make_engine(database_url), Clock()
    yield Env(Ledger(engine, default_rate_per_s=1.0, default_burst=100, reservation_ttl_s=600,
                     idempotency_ttl_s=3600, clock=clock), Accounts(engine, clock), clock, database_url)
    engine.dispose()


def test_keys_are_created_listed_topped_up_and_revoked(env: Env):
    new = env.accounts.create_key(credits=5, name="Acme", rate_per_s=2.0, burst=4)
    [listed] = env.accounts.list_keys()
    assert (listed.key_id, listed.name, listed.balance, listed.rate_per_s, listed.burst, listed.revoked_at) \
        == (new.key_id, "Acme", 5, 2.0, 4, None)
    assert env.accounts.stored_hash(new.key_id) == new.key_hash  # the key itself is stored nowhere
    assert env.accounts.add_credits(new.key_id, 7) == 12
    env.accounts.revoke(new.key_id)
    assert env.accounts.get(new.key_id).revoked_at is not None
    with pytest.raises(AccountError, match="already revoked"):
        env.accounts.revoke(new.key_id)
    with pytest.raises(AccountError, match="no key"):
        env.accounts.add_credits("0123456789ab", 1)
    for bad in (0, -1):
        with pytest.raises(AccountError, match="whole number"):
            env.accounts.add_credits(new.key_id, bad)
    with pytest.raises(Unauthorized, match="revoked"):
        env.ledger.open_job(new.key, JOB)


def test_unknown_wrong_or_missing_keys_are_unauthorized(env: Env):
    real = env.accounts.create_key(credits=5)
    forged_same_id = f"ck_live_{real.key_id}_" + "A" * 43
    for presented in (None, "", "not-a-key", generate_key().key, forged_same_id):
        with pytest.raises(Unauthorized) as caught:
            env.ledger.open_job(presented, JOB)
        assert caught.value.status == 401
    assert env.usage_rows() == [] and env.accounts.get(real.key_id).balance == 5


def test_success_keeps_the_reserved_credits_and_records_the_job(env: Env):
    key = env.key(10)
    ticket = env.ledger.open_job(key, JOB)
    assert env.balance(key) == 7  # reserved before any work
    env.clock.now += 2.5
    env.ledger.finish_job(ticket, result_id="abc.png", response={"outputUrl": "u"})
    assert env.balance(key) == 7
    [row] = env.usage_rows()
    assert {k: row[k] for k in ("key_id", "route", "model", "addons", "price", "status", "result_id")} == {
        "key_id": ticket.key_id, "route": "POST /api/v1/colorize", "model": "tiny", "addons": "face_remaster",
        "price": 3, "status": "succeeded", "result_id": "abc.png"}
    assert row["finished_at"] - row["started_at"] == pytest.approx(2.5) and row["duration_s"] == pytest.approx(2.5)


def test_failure_releases_the_reservation_once(env: Env):
    key = env.key(10)
    ticket = env.ledger.open_job(key, JOB)
    env.ledger.fail_job(ticket, "StageFailed: boom")
    env.ledger.fail_job(ticket, "again")  # a second release gives nothing back
    assert env.balance(key) == 10
    [row] = env.usage_rows()
    assert (row["status"], row["note"]) == ("failed", "StageFailed: boom")


def test_insufficient_credits_refuse_before_work_and_balance_never_goes_negative(env: Env):
    key = env.key(4)
    env.ledger.open_job(key, JOB)
    with pytest.raises(InsufficientCredits) as caught:
        env.ledger.open_job(key, JOB)
    assert caught.value.status == 403 and "costs 3" in caught.value.detail
    assert env.balance(key) == 1
    assert [(r["status"], r["note"]) for r in env.usage_rows()] == [("reserved", None),
                                                                  ("refused", "insufficient credits")]
    with pytest.raises(IntegrityError), env.ledger.engine.begin() as conn:
        conn.execute(update(api_keys).values(balance=-1))


def test_idempotent_retry_replays_the_first_success_without_a_second_charge(env: Env):
    key = env.key(10)
    first = env.ledger.open_job(key, JOB, "order-1")
    assert first.replay is None
    with pytest.raises(IdempotencyConflict, match="in progress") as caught:
        env.ledger.open_job(key, JOB, "order-1")  # the first has not finished yet
    assert caught.value.status == 409
    env.ledger.finish_job(first, result_id="r.png", response={"outputUrl": "http://x/r.png"})
    again = env.ledger.open_job(key, JOB, "order-1")
    assert again.replay == {"outputUrl": "http://x/r.png"} and again.usage_id is None
    env.ledger.finish_job(again, result_id=None, response=None)  # settling a replay changes nothing
    assert env.balance(key) == 7 and len(env.usage_rows()) == 1
    with pytest.raises(IdempotencyConflict, match="different request"):
        env.ledger.open_job(key, JobRequest(JOB.route, JOB.price, JOB.details, fingerprint="f2"), "order-1")
    other_key = env.key(10)  # idempotency keys are scoped per API key
    assert env.ledger.open_job(other_key, JOB, "order-1").replay is None
    env.clock.now += 3601  # replays last idempotency_ttl_s
    assert env.ledger.open_job(key, JOB, "order-1").replay is None
    with pytest.raises(Refusal, match="1 to 255") as too_long:
        env.ledger.open_job(key, JOB, "k" * 256)
    assert too_long.value.status == 400


def test_a_failed_attempt_frees_its_idempotency_key(env: Env):
    key = env.key(10)
    env.ledger.fail_job(env.ledger.open_job(key, JOB, "retry-me"), "failed")
    retry = env.ledger.open_job(key, JOB, "retry-me")
    assert retry.replay is None and retry.usage_id is not None
    assert env.balance(key) == 7


def test_sweep_releases_reservations_of_dead_processes_and_their_idempotency_leases(env: Env):
    key = env.key(10)
    orphan = env.ledger.open_job(key, JOB, "lease")  # its process "crashes": never settled
    env.clock.now += 599
    assert env.ledger.sweep() == 0 and env.balance(key) == 7
    env.clock.now += 2
    assert env.ledger.sweep() == 1 and env.balance(key) == 10
    assert env.ledger.sweep() == 0
    assert "expired" in env.usage_rows()[0]["note"]
    assert env.ledger.open_job(key, JOB, "lease").replay is None  # the lease is gone too
    env.ledger.fail_job(orphan, "late failure")  # settling after the sweep refunds nothing more
    assert env.balance(key) == 7


def test_a_job_finishing_after_its_reservation_expired_is_charged_again(env: Env):
    key = env.key(3)
    ticket = env.ledger.open_job(key, JOB)
    env.clock.now += 601
    env.ledger.sweep()
    assert env.balance(key) == 3
    env.ledger.finish_job(ticket, result_id="late.png", response=None)
    assert env.balance(key) == 0
    [row] = env.usage_rows()
    assert row["status"] == "succeeded" and "charged again" in row["note"]


def test_a_late_job_whose_credits_ran_out_is_withheld_not_delivered_free(env: Env):
    key = env.key(3)
    ticket = env.ledger.open_job(key, JOB)
    env.clock.now += 601
    env.ledger.sweep()
    env.ledger.finish_job(env.ledger.open_job(key, JOB), result_id="other.png", response=None)  # spent meanwhile
    assert env.balance(key) == 0
    with pytest.raises(InsufficientCredits):
        env.ledger.finish_job(ticket, result_id="late.png", response=None)
    assert env.balance(key) == 0
    assert env.usage_rows()[0]["status"] == "failed" and "withheld" in env.usage_rows()[0]["note"]


def test_finishing_twice_charges_once(env: Env):
    """A commit retried after its acknowledgement was lost must not charge again."""
    key = env.key(10)
    ticket = env.ledger.open_job(key, JOB, "twice")
    env.ledger.finish_job(ticket, result_id="r.png", response={"outputUrl": "u"})
    env.ledger.finish_job(ticket, result_id="r.png", response={"outputUrl": "u"})
    assert env.balance(key) == 7
    assert [row["status"] for row in env.usage_rows()] == ["succeeded"]
    assert env.ledger.open_job(key, JOB, "twice").replay == {"outputUrl": "u"}


def test_rate_limit_refuses_with_retry_after_and_refills(env: Env):
    key = env.key(100, rate_per_s=0.5, burst=2)
    cheap = JobRequest("POST /api/v1/colorize", price=1)
    env.ledger.open_job(key, cheap)
    env.ledger.open_job(key, cheap)
    with pytest.raises(RateLimited) as caught:
        env.ledger.open_job(key, cheap)
    assert caught.value.status == 429 and caught.value.retry_after_s == 2
    env.clock.now += 2
    env.ledger.open_job(key, cheap)
    assert env.usage_rows()[2]["status"] == "refused" and env.usage_rows()[2]["note"] == "rate limited"
    assert env.balance(key) == 97  # the refused request cost nothing


def test_the_key_holder_reads_their_account_without_spending_anything(env: Env):
    named = env.accounts.create_key(credits=12, name="Acme", rate_per_s=0.5, burst=2)
    account = env.ledger.account(named.key)
    assert (account.key_id, account.name, account.credits, account.rate_per_s, account.burst) == \
        (named.key_id, "Acme", 12, 0.5, 2)
    for _ in range(5):
        env.ledger.account(named.key)  # reading takes no rate-limit token and no credit
    env.ledger.open_job(named.key, JOB)
    env.ledger.open_job(named.key, JOB)  # the burst of 2 is still whole
    assert env.ledger.account(named.key).credits == 6 and env.usage_rows()[0]["status"] == "reserved"
    unnamed = env.key(3)
    account = env.ledger.account(unnamed)
    assert (account.name, account.rate_per_s, account.burst) == (None, 1.0, 100)  # the configured defaults
    env.accounts.revoke(unnamed.split("_")[2])
    for presented in (None, "", "not-a-key", generate_key().key, unnamed):
        with pytest.raises(Unauthorized):
            env.ledger.account(presented)


def test_every_step_reports_the_balance_the_ledger_holds(env: Env):
    key = env.key(10)
    first = env.ledger.open_job(key, JOB, "order-1")
    assert first.balance == 7 == env.balance(key)  # after the reservation
    assert env.ledger.finish_job(first, result_id="r.png", response={"outputUrl": "u"}) == 7
    replay = env.ledger.open_job(key, JOB, "order-1")
    assert replay.replay is not None and replay.balance == 7
    assert env.ledger.finish_job(replay, result_id=None, response=None) is None  # nothing changed
    second = env.ledger.open_job(key, JOB)
    assert second.balance == 4
    assert env.ledger.fail_job(second, "StageFailed: boom") == 7 == env.balance(key)  # given back
    env.ledger.open_job(key, JOB)
    env.ledger.open_job(key, JOB)
    with pytest.raises(InsufficientCredits) as caught:
        env.ledger.open_job(key, JOB)
    assert caught.value.credits_remaining == 1 == env.balance(key)
    limited = env.key(5, rate_per_s=0.001, burst=1)
    env.ledger.open_job(limited, JobRequest(JOB.route, price=1))
    with pytest.raises(RateLimited) as caught:
        env.ledger.open_job(limited, JOB)
    assert caught.value.credits_remaining == 4
    with pytest.raises(Unauthorized) as caught:
        env.ledger.open_job(generate_key().key, JOB)
    assert caught.value.credits_remaining is None  # no key identified


def _race(count: int, attempt) -> list:
    """Run ``attempt(i)`` in ``count`` threads released at once; returns each outcome."""
    barrier, outcomes = threading.Barrier(count), [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = attempt(i)
        except Refusal as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def _separate_ledgers(env: Env, count: int) -> list[Ledger]:
    """One engine per worker, as separate ingress processes would have."""
    return [Ledger(make_engine(env.url, create_tables=False), default_burst=1000, clock=env.clock)
            for _ in range(count)]


def test_forty_concurrent_reservations_against_fifteen_credits(env: Env):
    key = env.key(15, burst=1000)
    ledgers = _separate_ledgers(env, 40)
    try:
        outcomes = _race(40, lambda i: ledgers[i].open_job(key, JobRequest("POST /api/v1/colorize", price=1)))
    finally:
        for ledger in ledgers:
            ledger.engine.dispose()
    assert sum(not isinstance(o, Refusal) for o in outcomes) == 15
    assert all(isinstance(o, InsufficientCredits) for o in outcomes if isinstance(o, Refusal))
    assert env.balance(key) == 0


def test_one_bucket_is_shared_by_separate_engines(env: Env):
    key = env.key(1000, rate_per_s=0.001, burst=10)
    ledgers = _separate_ledgers(env, 25)
    try:
        outcomes = _race(25, lambda i: ledgers[i].open_job(key, JobRequest("POST /api/v1/colorize", price=1)))
    finally:
        for ledger in ledgers:
            ledger.engine.dispose()
    assert sum(not isinstance(o, Refusal) for o in outcomes) == 10
    assert all(isinstance(o, RateLimited) for o in outcomes if isinstance(o, Refusal))


# Run by separate interpreters: the ledger must hold across processes, not just threads.
_RESERVE_SCRIPT = """
import sys
from auth import JobRequest
from auth.db import make_engine
from auth.ledger import InsufficientCredits, Ledger
url, key, attempts = sys.argv[1], sys.argv[2], int(sys.argv[3])
ledger, admitted = Ledger(make_engine(url, create_tables=False), default_burst=1000), 0
for _ in range(attempts):
    try:
        ledger.open_job(key, JobRequest("POST /api/v1/colorize", price=1))
        admitted += 1
    except InsufficientCredits:
        pass
print(admitted)
"""


def test_separate_processes_never_overspend(env: Env):
    key = env.key(12, burst=1000)
    processes = [subprocess.Popen([sys.executable, "-c", _RESERVE_SCRIPT, env.url, key, "8"],
                                  stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(3)]
    admitted = [int(process.communicate(timeout=60)[0]) for process in processes]
    assert sum(admitted) == 12 and env.balance(key) == 0
    with env.ledger.engine.connect() as conn:
        assert len(conn.execute(select(usage.c.id).where(usage.c.status == "reserved")).all()) == 12


def test_replicas_starting_together_create_the_tables_once(database_url: str):  # noqa: F811
    engines: list = []
    outcomes = _race(6, lambda i: engines.append(make_engine(database_url)) or "ok")
    for engine in engines:
        engine.dispose()
    assert outcomes == ["ok"] * 6
