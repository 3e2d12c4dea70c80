"""Hooks into Serve's own HTTP proxy, which sees every request before the Ingress does: liveness
(``/livez``), admission of jobs in front of the Ingress, the proxy's own refusals in the contracts'
error shape, bounded request ids, and bounds on slow and idle connections.

``launch`` points ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` at ``http_middlewares``; Serve wraps
its proxy app in these, outside its request-id middleware, so they run first.
"""
from __future__ import annotations

import json
import logging
import os
import random
import uuid

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.admission import AdaptiveAdmission
from service.errors import FRONT_TEXTS, contract_of, error_response, front_error_response
from service.jobs import Overloaded
from service.settings import AdmissionSettings
from service.web.middleware import drop_unusable_request_id

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "deployments.proxy_hooks:http_middlewares"
# The app's `admission:` settings as JSON, exported by deployments.launch: admission in the proxy too.
ADMISSION_ENV = "COLORIZE_PROXY_ADMISSION"
ADMISSION_PREFIX_ENV = "COLORIZE_PROXY_ADMISSION_PREFIX"  # only jobs under this path (default: all)
JOB_ROUTE_ENDINGS = ("/api/v1/colorize", "/colorize")


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
    """``GET /livez`` (also under an app's route prefix): this proxy process is up and its event loop
    turns. Answered here, never routed
    to a replica, so it cannot queue behind jobs or be shed (readiness is the Ingress's ``/readyz``)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].endswith(LIVENESS_PATH) and scope["method"] in ("GET", "HEAD"):
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


class ProxyAdmission:
    """The Ingress's adaptive admission (``service.admission``), also in front of it: a job the
    proxy's limit has no place for is refused here, in its contract's shape, before it costs a
    routing decision, a hop to the Ingress and the Ingress's own HTTP stack (measured on 2 cores:
    at 4x offered load those refusals took more CPU than the model). The latency it follows is
    that of jobs answered 2xx."""

    def __init__(self, app: ASGIApp, settings: AdmissionSettings, prefix: str = "/"):
        self.app, self.prefix = app, prefix
        self.admission = AdaptiveAdmission(min_limit=settings.min_concurrency, max_limit=settings.max_concurrency,
                                           latency_tolerance=settings.latency_tolerance,
                                           max_queue_wait_s=settings.max_queue_wait_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] != "POST" or not path.endswith(JOB_ROUTE_ENDINGS) \
                or not path.startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        try:
            async with self.admission.slot() as place:
                async def noting_status(message: Message) -> None:
                    if message["type"] == "http.response.start" and message["status"] >= 300:
                        place.measured = False
                    await send(message)

                await self.app(scope, receive, noting_status)
        except Overloaded as exc:
            request_id = uuid.uuid4().hex
            response = error_response(exc, contract_of(scope["path"]), request_id)
            response.headers["X-Request-Id"] = request_id
            await response(scope, receive, send)


def proxy_admission_settings() -> AdmissionSettings | None:
    text = os.environ.get(ADMISSION_ENV)
    if not text:
        return None
    settings = AdmissionSettings.model_validate(json.loads(text))
    return settings if settings.enabled else None


# Slow and idle clients. uvicorn (Serve's proxy) has no header-read timeout: a connection that never
# finishes its request line or headers would be kept for ever. These bound it in the proxy process.
HEADER_TIMEOUT_ENV, MAX_CONNECTIONS_ENV = "COLORIZE_HTTP_HEADER_TIMEOUT_S", "COLORIZE_HTTP_MAX_CONNECTIONS"
HEADER_TIMEOUT_S = 10.0    # from connecting, or from the last answer, to a request's complete headers
MAX_CONNECTIONS = 10_000   # open connections per proxy process (its file-descriptor limit is 20,000)


def bound_slow_clients(header_timeout_s: float, max_connections: int, protocol: type | None = None) -> bool:
    """Patch uvicorn's httptools protocol in this (the proxy's) process: close a connection whose
    request headers are not complete ``header_timeout_s`` after it opened or after its last answer
    (idle keep-alive connections included), and keep at most ``max_connections`` open: a new
    connection beyond it closes the one that has waited longest for a request, and is itself refused
    only when every other connection is busy with a request. ``protocol`` is the class to patch
    (tests pass a subclass). Returns False when uvicorn's layout is not the one expected (nothing
    patched)."""
    if protocol is None:
        try:
            from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as protocol
        except ImportError:
            return False
    if vars(protocol).get("_colorize_bounded", False):
        return True
    if not all(hasattr(protocol, name) for name in ("connection_made", "connection_lost", "on_headers_complete",
                                                    "on_response_complete")):
        return False
    made, lost = protocol.connection_made, protocol.connection_lost
    headers_done, response_done = protocol.on_headers_complete, protocol.on_response_complete
    # Connections waiting for a request's headers, oldest first (dicts keep insertion order): the
    # ones to give up when the cap is reached. Idle sockets must not lock out a health probe.
    waiting: dict = {}

    def disarm(self) -> None:
        waiting.pop(self, None)
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def expire(self) -> None:
        waiting.pop(self, None)
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def arm(self) -> None:
        disarm(self)
        # Spread over the last quarter of the bound: thousands of sockets opened together must not
        # all be closed in the same turn of the proxy's event loop.
        self._header_timer = self.loop.call_later(header_timeout_s * (0.75 + 0.25 * random.random()), expire, self)
        waiting[self] = None

    def connection_made(self, transport) -> None:
        made(self, transport)
        if len(self.connections) > max_connections:
            oldest = next(iter(waiting), None)
            if oldest is None:
                transport.close()  # every place is serving a request: refused before anything is read
                return
            expire(oldest)  # the longest wait for a request gives its place to the newcomer
        arm(self)

    def connection_lost(self, exc) -> None:
        disarm(self)
        lost(self, exc)

    def on_headers_complete(self) -> None:
        disarm(self)
        headers_done(self)

    def on_response_complete(self) -> None:
        response_done(self)
        if not self.transport.is_closing() and not self.pipeline:
            arm(self)  # the next request's headers are due within the bound too

    protocol.connection_made, protocol.connection_lost = connection_made, connection_lost
    protocol.on_headers_complete, protocol.on_response_complete = on_headers_complete, on_response_complete
    protocol._colorize_bounded = True
    return True


def answer_malformed_requests_in_json(protocol: type | None = None) -> bool:
    """Patch uvicorn's httptools protocol so a request its parser cannot read (which never reaches any
    app or middleware) is answered ``400 {"detail": "malformed request"}`` (both contracts' shape),
    not in plain text. Returns False when uvicorn's layout is not the one expected."""
    if protocol is None:
        try:
            from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as protocol
        except ImportError:
            return False
    if not hasattr(protocol, "send_400_response"):
        return False
    body = json.dumps({"detail": FRONT_TEXTS[400]}).encode()

    def send_400_response(self, msg: str) -> None:
        content = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                        b"connection: close\r\n\r\n", body])
        self.transport.write(b"".join(content))
        self.transport.close()

    protocol.send_400_response = send_400_response
    return True


def http_middlewares() -> list[Middleware]:
    # Called in the proxy's process before its HTTP server starts: the connection bounds go in first.
    if not bound_slow_clients(float(os.environ.get(HEADER_TIMEOUT_ENV, HEADER_TIMEOUT_S)),
                              int(os.environ.get(MAX_CONNECTIONS_ENV, MAX_CONNECTIONS))):
        logging.getLogger("ray.serve").warning("uvicorn's HTTP protocol is not the expected one: "
                                               "incomplete requests are not timed out")
    if not answer_malformed_requests_in_json():
        logging.getLogger("ray.serve").warning("uvicorn's HTTP protocol is not the expected one: "
                                               "malformed requests are answered in plain text")
    # Serve wraps its app in each in turn, so the last listed is the outermost: liveness first.
    admission = proxy_admission_settings()
    return [Middleware(BoundedRequestId), Middleware(JsonFrontErrors),
            *([Middleware(ProxyAdmission, settings=admission, prefix=os.environ.get(ADMISSION_PREFIX_ENV, "/"))]
              if admission else []), Middleware(Liveness)]
