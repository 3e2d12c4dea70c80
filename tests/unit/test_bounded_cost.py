"""Work bounded by pixels, not requests: the Ingress's pixel budget (a photo waits for room, then
is shed before it is decoded, nothing charged) and rate limits that count megapixels (a large
photo takes extra tokens from its key's bucket once its header is read)."""
from __future__ import annotations

import asyncio
import threading

import pytest

import service.jobs
from auth import AuthSettings
from auth.db import usage
from auth.ledger import RateLimited
from auth.ratelimit import pixel_tokens, take_token
from service.pixel_budget import NoRoom, PixelBudget
from tests.helpers import encode, photo
from tests.in_process import HeldStage
from tests.unit.test_key_api_errors import assert_refused, colorize

pytestmark = pytest.mark.timeout(60)

PHOTO = encode(photo(400, 300), "PNG")  # 0.12 MP
BUSY = "server is busy; retry shortly"


# --- the budget itself ------------------------------------------------------------------------------

def _run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 10))


def test_first_come_first_served_and_a_photo_larger_than_the_budget_runs_alone():
    async def scenario():
        budget = PixelBudget(100, max_wait_s=5)
        order: list[str] = []
        release = {name: asyncio.Event() for name in "ABCD"}

        async def job(name: str, pixels: int):
            async with budget.hold(pixels):
                order.append(name)
                await release[name].wait()

        a = asyncio.create_task(job("A", 60))
        await asyncio.sleep(0)
        b = asyncio.create_task(job("B", 60))       # no room: waits
        await asyncio.sleep(0)
        c = asyncio.create_task(job("C", 10))       # would fit, but B is first in line
        await asyncio.sleep(0.05)
        assert order == ["A"] and budget.in_use == 60 and budget.waiting == 2
        release["A"].set()
        await asyncio.sleep(0.05)
        assert order == ["A", "B", "C"] and budget.in_use == 70
        d = asyncio.create_task(job("D", 1000))     # bigger than the whole budget: alone, not never
        await asyncio.sleep(0.05)
        assert order == ["A", "B", "C"]
        release["B"].set(), release["C"].set()
        await asyncio.sleep(0.05)
        assert order[-1] == "D" and budget.in_use == 100
        release["D"].set()
        await asyncio.gather(a, b, c, d)
        assert budget.in_use == 0 and budget.waiting == 0
    _run(scenario())


def test_a_photo_that_waits_too_long_is_refused_and_leaves_no_trace():
    async def scenario():
        budget = PixelBudget(100, max_wait_s=0.1)
        held = asyncio.Event()

        async def holder():
            async with budget.hold(90):
                await held.wait()

        task = asyncio.create_task(holder())
        await asyncio.sleep(0)
        with pytest.raises(NoRoom):
            async with budget.hold(20):
                pytest.fail("must not run")
        cancelled = asyncio.create_task(budget.hold(20).__aenter__())
        await asyncio.sleep(0.01)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        assert budget.in_use == 90 and budget.waiting == 0
        async with budget.hold(10):  # the refused and the cancelled ones hold nothing
            assert budget.in_use == 100
        held.set()
        await task
        assert budget.in_use == 0
    _run(scenario())


# --- through the service: shed before decoding, nothing charged -----------------------------------

def _limits(megapixels: float, wait_s: float) -> dict:
    return {"limits": {"max_upload_mb": 1, "max_pixels": 1_000_000, "request_timeout_s": 30,
                       "max_megapixels_in_flight": megapixels, "pixel_wait_s": wait_s}}


def test_no_room_in_the_pixel_budget_is_429_or_503_before_decoding_nothing_charged(start, in_process_stages,
                                                                                    signing_keys, monkeypatch):
    decoded: list[int] = []
    real_decode = service.jobs.decode_image
    monkeypatch.setattr(service.jobs, "decode_image", lambda data, **kw: decoded.append(1) or real_decode(data, **kw))
    held = HeldStage(in_process_stages["tiny"])
    http = start(stages={"tiny": held}, **_limits(megapixels=0.15, wait_s=0.3))
    key = http.key(credits=5)
    first: list = []
    running = threading.Thread(target=lambda: first.append(colorize(http, key, image=PHOTO)))
    running.start()
    try:
        assert held.entered.wait(20)
        assert decoded == [1]
        shed = colorize(http, key, image=PHOTO)  # 0.12 + 0.12 MP > 0.15 MP
        assert_refused(shed, 429, BUSY)
        assert shed.headers["Retry-After"] == "2"
        token = {"X-Firebase-AppCheck": signing_keys.token()}
        app_check = http.client.post("/colorize", files=[("file", ("a.png", PHOTO))], data={"model": "tiny"},
                                     headers=token)
        assert_refused(app_check, 503, BUSY)
        assert app_check.headers["Retry-After"] == "2"
        assert decoded == [1]  # neither was decoded
        assert http.balance(key) == 4  # only the running job's reservation
    finally:
        held.release.set()
        running.join(30)
    assert first[0].status_code == 200, first[0].text
    assert http.balance(key) == 4 and len(http.stored()) == 1
    alone = colorize(http, key, image=encode(photo(500, 400), "PNG"))  # 0.2 MP > the whole budget: runs alone
    assert alone.status_code == 200, alone.text


# --- megapixels in the rate limit ------------------------------------------------------------------

def test_pixel_tokens_one_per_started_n_megapixels_beyond_the_first():
    assert pixel_tokens(512 * 512, 12.0, burst=10) == 0
    assert pixel_tokens(12_000_000, 12.0, burst=10) == 0
    assert pixel_tokens(12_000_001, 12.0, burst=10) == 1
    assert pixel_tokens(49_000_000, 12.0, burst=10) == 4    # 5 tokens in all
    assert pixel_tokens(49_000_000, 12.0, burst=3) == 2     # at most the burst in all
    assert pixel_tokens(49_000_000, None, burst=10) == 0    # off
    decision = take_token(2.0, 100.0, 100.0, rate_per_s=0.5, burst=10, count=3)
    assert not decision.allowed and decision.retry_after_s == 2 and decision.tokens == 2.0  # all or none


def test_a_large_photo_takes_extra_tokens_and_a_short_bucket_is_429_nothing_charged(start, tmp_path):
    auth = AuthSettings(database_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}", database_url_env=None,
                        megapixels_per_token=0.05)  # the 0.12 MP photo: 3 tokens
    http = start(auth=auth)
    key = http.key(credits=5, rate_per_s=0.01, burst=4)
    assert colorize(http, key, image=PHOTO).status_code == 200  # 1 + 2 tokens of 4
    assert http.balance(key) == 4
    refused = colorize(http, key, image=PHOTO)  # admitted with the last token; 2 more missing
    assert_refused(refused, 429, "rate limit exceeded for this API key: a photo of 0.1 megapixels takes 3 tokens; "
                                 "retry after the Retry-After delay")
    assert int(refused.headers["Retry-After"]) >= 100  # 2 tokens at 0.01/s
    assert http.balance(key) == 4 and len(http.stored()) == 1  # reservation released, nothing stored
    with http.access.ledger.engine.connect() as conn:
        statuses = [row.status for row in conn.execute(usage.select().order_by(usage.c.id))]
    assert statuses == ["succeeded", "failed"]


def test_the_ledger_takes_pixel_tokens_all_or_none(start, tmp_path):
    auth = AuthSettings(database_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}", database_url_env=None)
    http = start(auth=auth)
    ledger = http.access.ledger
    key = http.key(credits=5, rate_per_s=0.001, burst=6)
    from auth import JobRequest
    ticket = ledger.open_job(key, JobRequest("POST /api/v1/colorize", price=1))  # 5 tokens left
    assert ledger.take_pixel_tokens(ticket, 49_000_000, 12.0) == 4   # 1 left
    with pytest.raises(RateLimited) as refused:
        ledger.take_pixel_tokens(ticket, 30_000_000, 12.0)           # needs 2
    assert refused.value.retry_after_s >= 900
    assert ledger.take_pixel_tokens(ticket, 20_000_000, 12.0) == 1   # the refusal took nothing
    assert ledger.take_pixel_tokens(ticket, 1_000_000, 12.0) == 0    # small photos take none
