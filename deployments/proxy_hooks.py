"""Hooks into Serve's own HTTP proxy, which sees every request before the Ingress does: liveness
(``/livez``), the proxy's own refusals in the contracts' error shape, bounded request ids.

``launch`` points ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` at ``http_middlewares``; Serve wraps
its proxy app in these, outside its request-id middleware, so they run first.
"""
from __future__ import annotations

import json

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import front_error_response
from service.middleware import drop_unusable_request_id

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "deployments.proxy_hooks:http_middlewares"


class BoundedRequestId:
    """Serve's proxy echoes a client's ``X-Request-Id`` verbatim; one that is long or carries odd
    characters is dropped here, so the proxy makes a fresh id instead."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            drop_unusable_request_id(scope)
        await self.app(scope, receive, send)


LIVENESS_PATH = "/livez"
LIVE_BODY = json.dumps({"status": "live"}).encode()


class Liveness:
    """``GET /livez``: this proxy process is up and its event loop turns. Answered here, never routed
    to a replica, so it cannot queue behind jobs or be shed (readiness is the Ingress's ``/readyz``)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == LIVENESS_PATH and scope["method"] in ("GET", "HEAD"):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(LIVE_BODY)).encode()),
                                    (b"cache-control", b"no-store")]})
            await send({"type": "http.response.body", "body": LIVE_BODY if scope["method"] == "GET" else b""})
            return
        await self.app(scope, receive, send)


class JsonFrontErrors:
    """The proxy's own refusals (backpressure 503 with ``Retry-After``, its request timeout, a path
    it cannot route) are plain text; they are re-sent in the contracts' ``{"detail"}`` shape
    (``service.errors.front_error_response``: 429 "busy" on the key API, 503 on the App Check API).
    The Ingress answers its errors as JSON already, so only non-JSON error answers are rewritten."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None

        async def send_json_errors(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] >= 400:
                headers = {name.lower(): value for name, value in message.get("headers", [])}
                if not headers.get(b"content-type", b"").startswith(b"application/json"):
                    held = message  # the body that follows is the proxy's text: replaced below
                    return
            if held is None:
                await send(message)
                return
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                headers = {name.lower(): value for name, value in held.get("headers", [])}
                request_id = headers.get(b"x-request-id", b"?").decode("latin-1")
                retry_after = headers.get(b"retry-after")
                response = front_error_response(held["status"], scope["path"], request_id,
                                                retry_after.decode("latin-1") if retry_after else None)
                if request_id != "?":
                    response.headers["X-Request-Id"] = request_id
                await response(scope, receive, send)

        await self.app(scope, receive, send_json_errors)


def http_middlewares() -> list[Middleware]:
    # Serve wraps its app in each in turn, so the last listed is the outermost: liveness first.
    return [Middleware(BoundedRequestId), Middleware(JsonFrontErrors), Middleware(Liveness)]
