"""PolicyAccess, the ingress's one hook: route policies, charging around the job body
(success, failure, cancellation), replays, refusals as HTTP statuses, and the event loop
staying free while the ledger waits."""
from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError
from starlette.datastructures import Headers

from auth import AccessDenied, Admission, AppCheckSettings, AuthSettings, JobRequest, OpenAccess, PolicyAccess
from auth.accounts import Accounts
from auth.app_check import APP_CHECK_DENIED
from auth.policy import APP_CHECK_NOT_CONFIGURED, KEYS_NOT_CONFIGURED
from tests.auth_fixtures import APP_ID, PROJECT_ID, SigningKeys, signing_keys  # noqa: F401

pytestmark = pytest.mark.timeout(60)

V1 = "POST /api/v1/colorize"
JOB = JobRequest(V1, price=2, details={"model": "large", "clean_scratches": "true", "face_remaster": "false"},
                 fingerprint="sha256:aaa")


class Service:
    """PolicyAccess on a SQLite ledger in a temp dir, with a helper to run one request."""

    def __init__(self, tmp_path: Path, **settings):
        self.url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        self.access = PolicyAccess(AuthSettings(database_url=self.url, **settings), environ={})
        self.accounts = Accounts(self.access.ledger.engine)

    def key(self, credits: int = 10, **options) -> tuple[str, str]:
        new = self.accounts.create_key(credits=credits, **options)
        return new.key, new.key_id

    def balance(self, key_id: str) -> int:
        return self.accounts.get(key_id).balance

    async def request(self, headers: dict[str, str], job: JobRequest = JOB, body=None):
        async with self.access.admit(job, Headers(headers)) as admission:
            if admission.replay is None:
                if body is not None:
                    await body()
                admission.result_id = "result.png"
                admission.response = {"outputUrl": "http://host/results/result.png"}
            return admission


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    service = Service(tmp_path)
    yield service
    service.access.close()


def test_a_successful_job_is_charged_once(service: Service):
    key, key_id = service.key(10)
    admission = asyncio.run(service.request({"x-api-key": key}))
    assert admission.principal == key_id and admission.replay is None
    assert service.balance(key_id) == 8
    [row] = service.accounts.usage(key_id)
    assert (row["status"], row["result_id"], row["addons"], row["model"]) == \
        ("succeeded", "result.png", "clean_scratches", "large")


def test_a_failing_job_is_not_charged_and_its_error_propagates(service: Service):
    key, key_id = service.key(10)

    async def fail():
        raise RuntimeError("stage exploded")

    with pytest.raises(RuntimeError, match="stage exploded"):
        asyncio.run(service.request({"X-Api-Key": key}, body=fail))
    assert service.balance(key_id) == 10
    [row] = service.accounts.usage(key_id)
    assert row["status"] == "failed" and "stage exploded" in row["note"]


def test_a_client_going_away_releases_the_reservation(service: Service):
    key, key_id = service.key(10)

    async def scenario():
        started = asyncio.Event()

        async def hang():
            started.set()
            await asyncio.Event().wait()

        task = asyncio.create_task(service.request({"x-api-key": key}, body=hang))
        await started.wait()
        assert service.balance(key_id) == 8  # reserved while the job runs
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await service.access.drain()

    asyncio.run(scenario())
    assert service.balance(key_id) == 10
    assert service.accounts.usage(key_id)[0]["note"] == "cancelled (client went away)"


def test_cancelled_while_reserving_still_releases(service: Service, monkeypatch):
    key, key_id = service.key(10)
    ledger = service.access.ledger
    reserving, may_finish = threading.Event(), threading.Event()
    real_open = ledger.open_job

    def slow_open(*args):
        reserving.set()
        may_finish.wait(10)
        return real_open(*args)

    monkeypatch.setattr(ledger, "open_job", slow_open)

    async def scenario():
        task = asyncio.create_task(service.request({"x-api-key": key}))
        await asyncio.to_thread(reserving.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        may_finish.set()  # the reservation is made after the request was cancelled
        for _ in range(100):
            await service.access.drain()
            if service.accounts.usage(key_id) and service.accounts.usage(key_id)[0]["status"] == "failed":
                break
            await asyncio.sleep(0.02)

    asyncio.run(scenario())
    assert service.balance(key_id) == 10
    assert service.accounts.usage(key_id)[0]["status"] == "failed"


def test_idempotent_retry_is_replayed_without_running_or_charging(service: Service):
    key, key_id = service.key(10)
    headers = {"x-api-key": key, "Idempotency-Key": "upload-42"}
    ran = []

    async def job():
        ran.append(1)

    first = asyncio.run(service.request(headers, body=job))
    second = asyncio.run(service.request(headers, body=job))
    assert second.replay == first.response == {"outputUrl": "http://host/results/result.png"}
    assert len(ran) == 1 and service.balance(key_id) == 8
    changed = JobRequest(V1, price=2, details=JOB.details, fingerprint="sha256:bbb")
    with pytest.raises(AccessDenied) as caught:
        asyncio.run(service.request(headers, job=changed))
    assert caught.value.status == 409 and "different request" in caught.value.detail


def test_refusals_are_http_statuses_with_details(service: Service):
    with pytest.raises(AccessDenied) as missing:
        asyncio.run(service.request({}))
    assert missing.value.status == 401 and "X-Api-Key" in missing.value.detail

    poor_key, _ = service.key(1)
    with pytest.raises(AccessDenied) as poor:
        asyncio.run(service.request({"x-api-key": poor_key}))
    assert poor.value.status == 403 and "credits" in poor.value.detail

    limited_key, _ = service.key(100, rate_per_s=0.01, burst=1)
    asyncio.run(service.request({"x-api-key": limited_key}))
    with pytest.raises(AccessDenied) as limited:
        asyncio.run(service.request({"x-api-key": limited_key}))
    assert limited.value.status == 429 and int(limited.value.headers["Retry-After"]) >= 1


def test_ledger_outage_is_a_503_with_retry_after(service: Service, monkeypatch):
    key, _ = service.key(10)

    def down(*args):
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(service.access.ledger, "open_job", down)
    with pytest.raises(AccessDenied) as caught:
        asyncio.run(service.request({"x-api-key": key}))
    assert caught.value.status == 503 and caught.value.headers == {"Retry-After": "5"}


def test_a_commit_that_fails_for_a_while_is_retried_and_charged_once(tmp_path: Path, monkeypatch):
    service = Service(tmp_path, commit_retry_s=5)
    key, key_id = service.key(10)
    finish, failures = service.access.ledger.finish_job, []

    def flaky(*args, **kwargs):
        if len(failures) < 2:
            failures.append(1)
            raise OperationalError("UPDATE", {}, Exception("server closed the connection"))
        return finish(*args, **kwargs)

    monkeypatch.setattr(service.access.ledger, "finish_job", flaky)
    admission = asyncio.run(service.request({"x-api-key": key}))
    assert admission.response is not None and len(failures) == 2
    assert service.balance(key_id) == 8
    service.access.close()


def test_a_result_whose_charge_cannot_be_committed_is_withheld_and_released(tmp_path: Path, monkeypatch):
    service = Service(tmp_path, commit_retry_s=0.3)
    key, key_id = service.key(10)

    def down(*args, **kwargs):
        raise OperationalError("UPDATE", {}, Exception("connection refused"))

    monkeypatch.setattr(service.access.ledger, "finish_job", down)

    async def scenario():
        with pytest.raises(AccessDenied) as caught:
            await service.request({"x-api-key": key})
        await service.access.drain()  # the release runs once the ledger answers (here: at once)
        return caught.value

    refusal = asyncio.run(scenario())
    assert refusal.status == 503 and refusal.headers == {"Retry-After": "5"} and "not delivered" in refusal.detail
    assert service.balance(key_id) == 10
    assert service.accounts.usage(limit=5)[0]["status"] == "failed"
    service.access.close()


def test_a_job_that_fails_while_the_ledger_is_down_is_released_once_it_answers(tmp_path: Path, monkeypatch):
    service = Service(tmp_path)
    key, key_id = service.key(10)
    fail, attempts = service.access.ledger.fail_job, []

    def down_twice(*args, **kwargs):  # the ledger is down when the job fails, and once more
        attempts.append(1)
        if len(attempts) <= 2:
            raise OperationalError("UPDATE", {}, Exception("connection refused"))
        return fail(*args, **kwargs)

    async def broken_job():
        raise RuntimeError("the job failed")

    monkeypatch.setattr(service.access.ledger, "fail_job", down_twice)
    monkeypatch.setattr("auth.policy.asyncio.sleep", _instant_sleep)

    async def scenario():
        with pytest.raises(RuntimeError):
            await service.request({"x-api-key": key}, body=broken_job)
        assert service.balance(key_id) == 8  # still reserved: nothing could be written
        await service.access.drain()

    asyncio.run(scenario())
    assert len(attempts) == 3 and service.balance(key_id) == 10
    assert service.accounts.usage(limit=5)[0]["status"] == "failed"
    service.access.close()


_real_sleep = asyncio.sleep


async def _instant_sleep(delay: float) -> None:
    await _real_sleep(0)


def test_identify_checks_the_key_from_headers_without_taking_anything(service: Service):
    key, key_id = service.key(10, rate_per_s=0.01, burst=1)
    asyncio.run(service.access.identify(V1, Headers({"x-api-key": key})))
    asyncio.run(service.access.identify(V1, Headers({"x-api-key": key})))  # read-only: the token is still there
    for headers, status in [({}, 401), ({"x-api-key": key[:-1] + "x"}, 401)]:
        with pytest.raises(AccessDenied) as refused:
            asyncio.run(service.access.identify(V1, Headers(headers)))
        assert refused.value.status == status
    asyncio.run(service.request({"x-api-key": key}))  # takes the only token
    with pytest.raises(AccessDenied) as limited:
        asyncio.run(service.access.identify(V1, Headers({"x-api-key": key})))
    assert limited.value.status == 429 and int(limited.value.headers["Retry-After"]) >= 1
    assert service.balance(key_id) == 8


def test_failed_authentications_are_throttled_per_address(tmp_path: Path):
    service = Service(tmp_path, failed_auth_rate_per_s=0.01, failed_auth_burst=3)
    key, _ = service.key(10)
    wrong = key[:-1] + ("a" if key[-1] != "a" else "b")

    async def attempt(headers: dict, client: str) -> int:
        try:
            await service.access.identify(V1, Headers(headers), client)
            return 200
        except AccessDenied as refusal:
            return refusal.status

    async def scenario():
        guesses = [await attempt({"x-api-key": wrong}, "10.0.0.1") for _ in range(5)]
        right_key_same_address = await attempt({"x-api-key": key}, "10.0.0.1")
        other_address = await attempt({"x-api-key": key}, "10.0.0.2")
        return guesses, right_key_same_address, other_address

    guesses, same, other = asyncio.run(scenario())
    assert guesses == [401, 401, 401, 429, 429]  # the burst of failures, then refused before looking
    assert same == 429 and other == 200          # per address
    service.access.close()


def test_a_locked_ledger_does_not_block_the_event_loop(service: Service):
    key, key_id = service.key(10)
    path = service.url.removeprefix("sqlite:///")

    async def scenario() -> int:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        ticks = 0
        request = asyncio.create_task(service.request({"x-api-key": key}))
        started = time.monotonic()
        while time.monotonic() - started < 0.5:
            await asyncio.sleep(0.01)
            ticks += 1
        assert not request.done()  # waiting on the lock, in a thread
        blocker.execute("COMMIT")
        blocker.close()
        await request
        return ticks

    assert asyncio.run(scenario()) >= 10  # a blocked loop would manage one
    assert service.balance(key_id) == 8


def test_admissions_and_refusals_carry_the_balance(service: Service):
    key, key_id = service.key(5, rate_per_s=0.001, burst=3)
    assert asyncio.run(service.request({"x-api-key": key})).credits_remaining == 3  # 5 - 2, committed

    async def fail():
        raise RuntimeError("stage exploded")

    async def failing() -> Admission:
        admission = None
        with pytest.raises(RuntimeError):
            async with service.access.admit(JOB, {"x-api-key": key}) as admission:
                assert admission.credits_remaining == 1  # reserved
                await fail()
        return admission

    assert asyncio.run(failing()).credits_remaining == 3 == service.balance(key_id)  # released
    with pytest.raises(AccessDenied) as caught:
        asyncio.run(service.request({"x-api-key": key}, JobRequest(V1, price=4)))
    assert (caught.value.status, caught.value.credits_remaining) == (403, 3)
    with pytest.raises(AccessDenied) as caught:
        asyncio.run(service.request({"x-api-key": key}))  # the burst of 3 is spent
    assert (caught.value.status, caught.value.credits_remaining) == (429, 3)
    with pytest.raises(AccessDenied) as caught:
        asyncio.run(service.request({"x-api-key": "ck_live_nope"}))
    assert (caught.value.status, caught.value.credits_remaining) == (401, None)


def test_account_reads_the_presented_key(service: Service):
    key, key_id = service.key(7, rate_per_s=2.5, burst=4)
    account = asyncio.run(service.access.account(Headers({"X-Api-Key": key})))
    assert (account.key_id, account.name, account.credits, account.rate_per_s, account.burst) == \
        (key_id, None, 7, 2.5, 4)
    for headers in ({}, {"x-api-key": "ck_live_nope"}):
        with pytest.raises(AccessDenied) as caught:
            asyncio.run(service.access.account(headers))
        assert caught.value.status == 401 and "X-Api-Key" in caught.value.detail
    for access in (PolicyAccess(AuthSettings(database_url=None), environ={}), OpenAccess()):
        with pytest.raises(AccessDenied) as caught:
            asyncio.run(access.account({"x-api-key": key}))
        assert (caught.value.status, caught.value.detail) == (503, KEYS_NOT_CONFIGURED)


def test_unconfigured_integrations_answer_503(tmp_path: Path):
    access = PolicyAccess(AuthSettings(database_url=None), environ={})
    for route, detail in ((V1, KEYS_NOT_CONFIGURED), ("POST /upload", APP_CHECK_NOT_CONFIGURED),
                          ("GET /unlisted", "not configured")):
        with pytest.raises(AccessDenied) as caught:
            asyncio.run(_enter(access, JobRequest(route), {"x-api-key": "x", "x-firebase-appcheck": "y"}))
        assert caught.value.status == 503 and detail in caught.value.detail


def test_open_routes_and_either(tmp_path: Path, signing_keys: SigningKeys):  # noqa: F811
    settings = dict(routes={"GET /open": "none", "POST /colorize": "either"},
                    app_check=AppCheckSettings(project_id=PROJECT_ID, jwks_url=signing_keys.jwks_url))
    service = Service(tmp_path, **settings)
    try:
        assert asyncio.run(_enter(service.access, JobRequest("GET /open"), {})) == "anonymous"
        key, key_id = service.key(10)
        either = JobRequest("POST /colorize", price=0)
        assert asyncio.run(_enter(service.access, either, {"x-api-key": key})) == key_id
        assert asyncio.run(_enter(service.access, either, {"x-firebase-appcheck": signing_keys.token()})) \
            == f"app:{APP_ID}"
        assert asyncio.run(_enter(service.access, JobRequest("POST /upload"),
                                  {"X-Firebase-AppCheck": signing_keys.token()})) == f"app:{APP_ID}"
        with pytest.raises(AccessDenied) as caught:
            asyncio.run(_enter(service.access, either, {}))
        assert (caught.value.status, caught.value.detail) == (401, APP_CHECK_DENIED)
    finally:
        service.access.close()


def test_admit_sweeps_expired_reservations(tmp_path: Path):
    service = Service(tmp_path, reservation_ttl_s=30, sweep_interval_s=1)
    try:
        key, key_id = service.key(10)
        ledger = service.access.ledger
        ledger.open_job(key, JOB)  # a process that died mid-job
        ledger.clock = lambda: time.time() + 31
        asyncio.run(_enter(service.access, JobRequest(V1, price=1), {"x-api-key": key}, drain=True))
        assert service.balance(key_id) == 9  # 10 - 1; the orphan's 2 credits came back
    finally:
        service.access.close()


async def _enter(access: PolicyAccess, job: JobRequest, headers: dict[str, str], drain: bool = False) -> str:
    async with access.admit(job, headers) as admission:
        principal = admission.principal
    if drain:
        await access.drain()
    return principal
