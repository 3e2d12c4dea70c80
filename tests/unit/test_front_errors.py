"""The HTTP front's own plain-text refusals, re-sent in the contracts' shape by the proxy hook
(deployments/proxy_hooks.py), and liveness answered there; driven as plain ASGI, no Ray."""
from __future__ import annotations

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from deployments.proxy_hooks import BoundedRequestId, JsonFrontErrors, Liveness
from service.errors import front_error_response


def proxy_like(status: int, text: str, headers: dict | None = None) -> Starlette:
    async def plain(request):
        return PlainTextResponse(text, status_code=status, headers={"X-Request-ID": "abc", **(headers or {})})

    async def json(request):
        return JSONResponse({"detail": "the app's own"}, status_code=503, headers={"Retry-After": "7"})

    app = Starlette(routes=[Route("/api/v1/colorize", plain, methods=["POST"]), Route("/colorize", plain, methods=["POST"]),
                            Route("/json", json)])
    for wrap in (BoundedRequestId, JsonFrontErrors, Liveness):
        app = wrap(app)
    return app


def test_backpressure_is_busy_in_each_contracts_shape_keeping_retry_after():
    client = TestClient(proxy_like(503, "Request dropped due to backpressure", {"Retry-After": "3"}))
    key_api = client.post("/api/v1/colorize")
    assert (key_api.status_code, key_api.json(), key_api.headers["Retry-After"]) == (
        429, {"detail": "server is busy; retry shortly"}, "3")
    assert key_api.headers["X-Request-Id"] == "abc"
    app_check = client.post("/colorize")
    assert (app_check.status_code, app_check.json(), app_check.headers["Retry-After"]) == (
        503, {"detail": "server is busy; retry shortly"}, "3")


def test_the_apps_own_json_answers_pass_unchanged_and_liveness_is_answered_in_front():
    client = TestClient(proxy_like(503, "x"))
    own = client.get("/json")
    assert (own.status_code, own.json(), own.headers["Retry-After"]) == (503, {"detail": "the app's own"}, "7")
    live = client.get("/livez")
    assert (live.status_code, live.json()) == (200, {"status": "live"})


def test_timeouts_and_unknown_paths_in_the_documented_shape():
    timeout = front_error_response(408, "/prefix/api/v1/colorize", "rid")
    assert timeout.status_code == 502 and b"request id rid" in timeout.body
    assert front_error_response(408, "/colorize", "rid").status_code == 500
    missing = front_error_response(404, "/nowhere", "rid")
    assert (missing.status_code, missing.body) == (404, b'{"detail":"not found"}')


def test_the_proxys_admission_refuses_jobs_beyond_its_limit_in_each_contracts_shape():
    import asyncio

    from deployments.proxy_hooks import ProxyAdmission
    from service.settings import AdmissionSettings

    release = asyncio.Event()
    seen = []

    async def slow_ingress(scope, receive, send):
        seen.append(scope["path"])
        await release.wait()
        await JSONResponse({"outputUrl": "x"})(scope, receive, send)

    admitted = ProxyAdmission(slow_ingress, AdmissionSettings(min_concurrency=1, max_concurrency=1,
                                                              max_queue_wait_s=0.05), prefix="/app/")

    async def call(path, method="POST"):
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)
        scope = {"type": "http", "method": method, "path": path, "headers": [], "query_string": b""}
        await admitted(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent)

    async def scenario():
        first = asyncio.create_task(call("/app/api/v1/colorize"))
        await asyncio.sleep(0.01)
        key_api = await call("/app/api/v1/colorize")      # no place within 0.05 s: refused here
        app_check = await call("/app/colorize")
        other_app = asyncio.create_task(call("/other/colorize"))  # not under the prefix: passed on
        await asyncio.sleep(0.01)
        release.set()
        return await first, key_api, app_check, await other_app

    first, key_api, app_check, other_app = asyncio.run(scenario())
    assert first[0] == 200 and other_app[0] == 200 and seen == ["/app/api/v1/colorize", "/other/colorize"]
    for (status, headers, body), expected in ((key_api, 429), (app_check, 503)):
        assert status == expected and body == b'{"detail":"server is busy; retry shortly"}'
        assert headers[b"retry-after"] == b"2" and len(headers[b"x-request-id"]) == 32
    assert admitted.admission.shed == 2 and admitted.admission.in_flight == 0
