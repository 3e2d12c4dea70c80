"""Bounded queues shed load with Retry-After, charge nothing, and never answer 5xx otherwise:
at the proxy (a full Ingress queue, Serve's backpressure_config) and inside the graph (a full
stage queue, answered by the ingress in each contract's error shape); and the shipped admission
holds goodput at 3x the capacity it measures, with every health probe answered."""
from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from tests.helpers import encode, photo
from tests.integration.conftest import ADMITTED_APP, balance, create_key, demo_args

pytestmark = pytest.mark.integration

BURST = 16
PHOTO = encode(photo(384, 256, seed=11), "JPEG")


def deploy(name: str, serve_cluster: str, models_dir, tmp_path_factory, options: dict, jwks_url=None,
           **overrides) -> dict:
    from ray import serve

    from deployments.app import build_graph
    from service.settings import load_settings

    args = demo_args(tmp_path_factory.mktemp(name), models_dir, jwks_url=jwks_url, **overrides)
    serve.run(build_graph(load_settings(args), options), name=name, route_prefix=f"/{name}")
    return {"url": f"{serve_cluster}/{name}", "args": args}


@pytest.fixture(scope="module")
def proxy_bound(serve_cluster, models_dir, signing_keys, tmp_path_factory):
    from ray import serve

    options = {"Ingress": {"max_ongoing_requests": 1, "max_queued_requests": 1,
                           "backpressure_config": {"status_code": 503, "retry_after_s": 2}}}
    service = deploy("shed-proxy", serve_cluster, models_dir, tmp_path_factory, options, signing_keys.jwks_url)
    yield {**service, "app_check": signing_keys.token()}
    serve.delete("shed-proxy")


@pytest.fixture(scope="module")
def stage_bound(serve_cluster, models_dir, signing_keys, tmp_path_factory):
    from ray import serve

    options = {"Ingress": {"max_ongoing_requests": 32},
               "ColorizerTiny": {"max_ongoing_requests": 1, "max_queued_requests": 1,
                                 "user_config": {"max_batch_size": 1, "batch_wait_timeout_s": 0}}}
    service = deploy("shed-stage", serve_cluster, models_dir, tmp_path_factory, options, signing_keys.jwks_url)
    yield {**service, "app_check": signing_keys.token()}
    serve.delete("shed-stage")


def burst(url: str, headers: dict | None = None, field: str = "image") -> list[httpx.Response]:
    async def send_all():
        async with httpx.AsyncClient(timeout=120, headers=headers) as client:
            return await asyncio.gather(*(client.post(url, files={field: ("old.jpg", PHOTO)}, data={"model": "tiny"})
                                          for _ in range(BURST)))
    return asyncio.run(send_all())


def shed_in_each_contract(service: dict) -> list[httpx.Response]:
    """A burst on each contract's colorize route: some succeed, the rest are shed as that contract's
    "busy" (429 on the key API, 503 on the App Check API, whose file field is "file") with
    Retry-After, and cost nothing. Returns the shed answers."""
    key = create_key(service["args"], credits=100, rate_per_s=1000, burst=1000)
    shed: list[httpx.Response] = []
    for route, shed_status, field in (("/api/v1/colorize", 429, "image"), ("/colorize", 503, "file")):
        responses = burst(f"{service['url']}{route}", {"X-Api-Key": key, "X-Firebase-AppCheck": service["app_check"]},
                          field)
        statuses = Counter(response.status_code for response in responses)
        assert set(statuses) == {200, shed_status}, (route, statuses)
        for response in responses:
            if response.status_code == shed_status:
                assert response.json() == {"detail": "server is busy; retry shortly"}
                assert response.headers["Retry-After"] == "2"
                shed.append(response)
        if route == "/api/v1/colorize":
            assert balance(service["args"], key) == 100 - statuses[200]  # shed requests cost nothing
    return shed


def test_a_full_ingress_queue_sheds_at_the_proxy_in_each_contracts_shape(proxy_bound):
    """Serve's own backpressure answer is plain text; the proxy hook re-sends it as each contract's
    "busy", keeping Retry-After and the request id; /livez answers beside it."""
    for response in shed_in_each_contract(proxy_bound):
        assert response.headers["content-type"] == "application/json" and response.headers["X-Request-Id"]
    base = proxy_bound["url"].rsplit("/", 1)[0]
    live = httpx.get(f"{base}/livez", timeout=5)
    assert live.status_code == 200 and live.json() == {"status": "live"}


def test_a_full_stage_queue_sheds_in_each_contracts_error_shape(stage_bound):
    assert shed_in_each_contract(stage_bound)


@pytest.fixture(scope="module")
def admitted(serve_cluster, models_dir, tmp_path_factory):
    """The shipped defaults: admission on (its own settings' defaults) in the Ingress and in the proxy
    (conftest.py), the Ingress's 256 places."""
    from ray import serve

    service = deploy(ADMITTED_APP, serve_cluster, models_dir, tmp_path_factory,
                     {"Ingress": {"max_ongoing_requests": 256}}, admission={})
    yield service
    serve.delete(ADMITTED_APP)


def test_three_times_capacity_keeps_goodput_and_every_probe_answered(admitted, serve_cluster):
    """The CI-sized bench/overload.py: capacity at 8 clients (closed loop), then 3x that offered for
    15 s (open loop): goodput >= 80% of that capacity, sheds only as 429 (key API), every probe of
    /livez, /readyz and /health answered within 1 s, and exactly the 200s charged."""
    from bench.load import colorize_target
    from bench.overload import raw_closed_loop, raw_open_loop, with_probes

    credits = 100_000
    key = create_key(admitted["args"], credits=credits, rate_per_s=100_000, burst=100_000)
    target = colorize_target(admitted["url"], api_key=key, size=256, timeout_s=30)

    async def scenario():
        capacity_run = await raw_closed_loop(target, 8, 6)
        offered = await with_probes(admitted["url"], raw_open_loop(target, 3 * capacity_run.throughput(), 15),
                                    live_url=f"{serve_cluster}/livez")
        return capacity_run, *offered

    capacity_run, overload, prober = asyncio.run(scenario())
    capacity = capacity_run.throughput()
    statuses = Counter(sample.status for sample in overload.samples)
    print(f"capacity {capacity:.1f} req/s; 3x: goodput {overload.throughput():.1f} req/s, {dict(statuses)}, "
          f"probes {prober.summary()}")
    assert capacity > 0 and set(statuses) <= {200, 429}, statuses
    assert overload.throughput() >= 0.8 * capacity, (overload.throughput(), capacity)
    assert prober.all_answered() and sum(prober.results.values()) >= 3 * 12, prober.results
    oks = statuses[200] + Counter(sample.status for sample in capacity_run.samples)[200]
    assert balance(admitted["args"], key) == credits - oks  # shed requests cost nothing


def test_idle_and_incomplete_connections_are_closed_within_the_bound_while_livez_answers(serve_cluster):
    """A connection that sends nothing, half a request line or unfinished headers is closed by the
    proxy HEADER_TIMEOUT_S after it opened (deployments/proxy_hooks.py), well within 30 s."""
    import socket
    import time

    from deployments.proxy_hooks import HEADER_TIMEOUT_S

    host, port = serve_cluster.removeprefix("http://").split(":")
    partials = (b"", b"GET /hea", b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    sockets = [socket.create_connection((host, int(port)), timeout=5) for _ in partials]
    opened = time.monotonic()
    for sock, partial in zip(sockets, partials):
        sock.sendall(partial)
    assert httpx.get(f"{serve_cluster}/livez", timeout=2).status_code == 200  # beside them
    closed_after = []
    for sock in sockets:
        sock.settimeout(HEADER_TIMEOUT_S + 10)
        try:
            while sock.recv(4096):  # the proxy may answer before it closes
                pass
        except OSError:
            pass
        closed_after.append(time.monotonic() - opened)
        sock.close()
    assert all(0.75 * HEADER_TIMEOUT_S - 1 <= after <= HEADER_TIMEOUT_S + 5 for after in closed_after), closed_after
    assert httpx.get(f"{serve_cluster}/livez", timeout=2).status_code == 200


def test_a_request_the_proxys_parser_cannot_read_gets_a_json_400(serve_cluster):
    """uvicorn answers such a request itself, before any app code; the proxy hook makes it {"detail"}."""
    import json
    import socket

    host, port = serve_cluster.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/colorize HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n")  # a header without its colon
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head.lower(), head
    assert json.loads(body) == {"detail": "malformed request"}
