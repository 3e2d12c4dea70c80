"""colorize_client's Client/AsyncClient against a stand-in key API (httpx.MockTransport)."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from colorize_client import (AsyncClient, AuthError, BadImage, Client, Conflict, NetworkError, NoCredits,
                             NotReady, RateLimited, RetryPolicy, ServerError, Upload)
from colorize_client.errors import ColorizeError
from colorize_client.protocol import Options
from tests.client_standin import KEY, StandIn

JPEG = b"\xff\xd8\xff\xe0" + b"fake jpeg body" * 10
FAST = RetryPolicy(attempts=4, backoff_s=0.001, max_backoff_s=0.002)


def client(standin: StandIn, **kwargs) -> Client:
    return Client("http://svc.test", api_key=KEY, transport=standin.transport(), retry=FAST, **kwargs)


def test_colorize_returns_the_url_the_request_id_and_the_balance():
    standin = StandIn(credits=10)
    with client(standin) as c:
        result = c.colorize(JPEG, model="tiny", seed=7, download=True)
    assert result.output_url.startswith("http://results.test/")
    assert result.request_id == "req-1" and result.credits_remaining == 9 and result.attempts == 1
    assert result.image == standin.results[result.output_url]
    post, download = standin.requests
    assert post.headers["x-api-key"] == KEY and post.headers["idempotency-key"] == result.idempotency_key
    body = post.read()
    for field, value in (("model", b"tiny"), ("clean_scratches", b"false"), ("face_remaster", b"false"),
                         ("seed", b"7")):
        assert f'name="{field}"\r\n\r\n'.encode() + value in body
    assert b'name="prompt"' not in body  # unset options are not sent
    assert b'name="image"; filename="image"\r\nContent-Type: image/jpeg' in body
    # The result may live on another host (a CDN): the key never goes there.
    assert download.url.host == "results.test" and "x-api-key" not in download.headers


def test_url_images_are_sent_as_a_text_part_of_a_multipart_form():
    standin = StandIn()
    with client(standin) as c:
        c.colorize("https://example.com/old.jpg", model="tiny")
    post = standin.requests[0]
    assert post.headers["content-type"].startswith("multipart/form-data")
    assert b'name="image"\r\n\r\nhttps://example.com/old.jpg' in post.read()


@pytest.mark.parametrize("status, kind", [(400, BadImage), (413, BadImage), (401, AuthError), (403, NoCredits),
                                          (409, Conflict), (429, RateLimited), (502, ServerError),
                                          (503, ServerError), (404, ColorizeError)])
def test_errors_are_typed_and_carry_detail_request_id_and_retry_after(status, kind):
    standin = StandIn()
    standin.script["/api/v1/colorize"].append((status, {"detail": f"why {status}"}, {"Retry-After": "3"}))
    with client(standin, ) as c, pytest.raises(kind) as caught:
        c.colorize(JPEG, retry=RetryPolicy(attempts=1, wait_when_rate_limited=False))
    error = caught.value
    assert (error.status, error.detail, error.request_id, error.retry_after) == (status, f"why {status}", "req-1", 3.0)
    assert f"why {status}" in str(error) and "req-1" in str(error)


def test_a_404_from_in_front_of_the_app_is_a_service_still_starting_and_is_retried():
    # Serve's proxy answers so while the application deploys: plain text, not {"detail"}.
    standin = StandIn()
    starting = httpx.Response(404, text="Path '/api/v1/colorize' not found. Ping http://.../-/routes for routes.")
    standin.script["/api/v1/colorize"].extend([starting, starting])
    standin.script["/api/v1/pricing"].append(starting)
    with client(standin) as c:
        assert c.colorize(JPEG).attempts == 3
        assert c.pricing().published  # not mistaken for a service without the pricing route
    standin.script["/api/v1/colorize"].extend([starting] * 4)
    with client(standin) as c, pytest.raises(NotReady, match="is it starting, and is this its URL"):
        c.colorize(JPEG + b"2")


def test_derived_keys_follow_the_bytes_and_every_option(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(JPEG)
    base = Upload.of(path).derived_key(Options("tiny"))
    assert base == Upload.of(JPEG).derived_key(Options("tiny"))  # a path and its bytes are the same photo
    assert base.startswith("photo-v1-") and len(base) <= 255
    others = {Upload.of(JPEG + b"x").derived_key(Options("tiny")), Upload.of(JPEG).derived_key(Options("large")),
              Upload.of(JPEG).derived_key(Options("tiny", clean_scratches=True)),
              Upload.of(JPEG).derived_key(Options("tiny", face_remaster=True)),
              Upload.of(JPEG).derived_key(Options("tiny", prompt="a red car")),
              Upload.of(JPEG).derived_key(Options("tiny", seed=1))}
    assert len(others) == 6 and base not in others


def test_a_timeout_is_retried_with_the_same_key_and_charged_once():
    standin = StandIn(credits=5)

    def lost_answer(real: httpx.Response) -> httpx.Response:
        raise httpx.ReadTimeout("the answer never came")  # the service did the job; the client never heard

    standin.script["/api/v1/colorize"].append(lost_answer)
    with client(standin) as c:
        result = c.colorize(JPEG, model="tiny")
    first, second = standin.colorize_posts()
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"] == result.idempotency_key
    # The stand-in answers 409 if the retry's fields differ from the first's; here it replays.
    assert result.attempts == 2 and standin.credits == 4  # replayed from the first result: one charge


@pytest.mark.parametrize("failure", [httpx.ConnectError("refused"), httpx.RemoteProtocolError("dropped"),
                                     (502, {"detail": "a stage failed"}, {}), (500, {"detail": "oops"}, {})])
def test_dropped_connections_and_5xx_are_retried(failure):
    standin = StandIn()
    standin.script["/api/v1/colorize"].append(failure)
    with client(standin) as c:
        assert c.colorize(JPEG).attempts == 2


def test_retry_after_is_honoured_on_429_and_503():
    standin = StandIn()
    standin.script["/api/v1/colorize"].extend([(429, {"detail": "slow down"}, {"Retry-After": "2"}),
                                              (503, {"detail": "busy"}, {"Retry-After": "5"})])
    waits = []

    def on_retry(error, delay):
        waits.append((type(error), delay))
        return True

    with client(standin) as c:
        c.colorize(JPEG, on_retry=on_retry)
    assert waits == [(RateLimited, 2.0), (ServerError, 5.0)]


def test_429s_do_not_use_up_attempts_but_failures_do():
    standin = StandIn()
    standin.script["/api/v1/colorize"].extend([(429, {"detail": "slow down"}, {"Retry-After": "0"})] * 6)
    with client(standin) as c:
        assert c.colorize(JPEG, retry=RetryPolicy(attempts=2, backoff_s=0.001)).attempts == 7
    standin.script["/api/v1/colorize"].extend([(502, {"detail": "down"}, {})] * 3)
    with client(standin) as c, pytest.raises(ServerError):
        c.colorize(JPEG + b"2", retry=RetryPolicy(attempts=3, backoff_s=0.001))
    assert len(standin.colorize_posts()) == 7 + 3


@pytest.mark.parametrize("status", [400, 401, 403, 413])
def test_other_4xx_are_not_retried(status):
    standin = StandIn()
    standin.script["/api/v1/colorize"].append((status, {"detail": "no"}, {}))
    with client(standin) as c, pytest.raises(ColorizeError):
        c.colorize(JPEG)
    assert len(standin.colorize_posts()) == 1


def test_a_409_is_retried_only_while_the_first_request_is_still_running():
    standin = StandIn()
    standin.script["/api/v1/colorize"].append(
        (409, {"detail": "a request with this Idempotency-Key is still in progress; retry once it has finished"}, {}))
    with client(standin) as c:
        assert c.colorize(JPEG).attempts == 2
    standin.script["/api/v1/colorize"].append(
        (409, {"detail": "this Idempotency-Key was already used with a different request"}, {}))
    with client(standin) as c, pytest.raises(Conflict):
        c.colorize(JPEG + b"other")


def test_the_same_key_with_other_content_is_a_conflict():
    standin = StandIn()
    with client(standin) as c:
        c.colorize(JPEG, idempotency_key="mine")
        with pytest.raises(Conflict):
            c.colorize(JPEG + b"x", idempotency_key="mine")


def test_backoff_doubles_up_to_the_cap():
    policy = RetryPolicy(attempts=10, backoff_s=0.5, max_backoff_s=4, jitter=False)
    error = NetworkError("dropped")
    assert [policy.delay(error, n) for n in range(1, 8)] == [0.5, 1, 2, 4, 4, 4, 4]
    assert policy.delay(error, 10) is None
    assert policy.delay(RateLimited("x", retry_after=900), 1) is None  # longer than max_retry_after_s: give up


def test_account_and_pricing():
    standin = StandIn(credits=42, rate={"perSecond": 2.5, "burst": 20})
    with client(standin) as c:
        account = c.account()
        pricing = c.pricing()
    assert (account.credits, account.rate_per_second, account.burst) == (42, 2.5, 20)
    assert pricing.published and pricing.price(Options("tiny", clean_scratches=True, face_remaster=True)) == 4
    assert "x-api-key" not in standin.requests[-1].headers  # pricing needs no key
    with Client("http://svc.test", api_key="ck_live_bad", transport=standin.transport()) as c, \
            pytest.raises(AuthError):
        c.account()


def test_an_account_without_a_rate_of_its_own_is_read():
    standin = StandIn(credits=7, rate={"perSecond": None, "burst": None})
    with client(standin) as c:
        account = c.account()
    assert (account.credits, account.rate_per_second, account.burst) == (7, None, None)


def test_pricing_falls_back_to_the_seed_table_on_an_older_service():
    standin = StandIn(pricing_route=False)
    with client(standin) as c:
        pricing = c.pricing()
    assert not pricing.published and pricing.price(Options("large", face_remaster=True)) == 3


def test_async_client_runs_concurrent_calls_and_retries():
    standin = StandIn(credits=100)
    standin.script["/api/v1/colorize"].append(httpx.ReadTimeout("lost"))

    async def go():
        async with AsyncClient("http://svc.test", api_key=KEY, transport=standin.transport(), retry=FAST) as c:
            return await asyncio.gather(*(c.colorize(JPEG + bytes([i]), model="tiny", download=True)
                                          for i in range(8)))

    results = asyncio.run(go())
    assert len({r.output_url for r in results}) == 8 and all(r.image for r in results)
    assert standin.credits == 92 and sum(r.attempts for r in results) == 9


def test_a_429_holds_back_every_call_of_the_client():
    standin = StandIn()
    standin.script["/api/v1/colorize"].append((429, {"detail": "slow down"}, {"Retry-After": "0.3"}))

    async def go():
        async with AsyncClient("http://svc.test", api_key=KEY, transport=standin.transport(), retry=FAST) as c:
            first = asyncio.create_task(c.colorize(JPEG))
            await asyncio.sleep(0.05)  # the first has had its 429
            loop = asyncio.get_running_loop()
            started = loop.time()
            await c.colorize(JPEG + b"2")
            return loop.time() - started, await first

    waited, _ = asyncio.run(go())
    assert waited >= 0.2


def test_the_key_is_not_in_the_repr():
    assert KEY not in repr(Client("http://svc.test", api_key=KEY))
