"""The HTTP app's own middleware: one bounded request id per request, and refusals that other
middlewares answer in plain text re-sent in the documented ``{"detail": ...}`` shape."""
from __future__ import annotations

import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class JsonErrors:
    """Refusals that middlewares answer themselves (e.g. "Invalid host header") come as plain text;
    clients of both contracts parse ``{"detail": ...}``, so such answers are re-sent as JSON."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start: Message | None = None
        body = bytearray()

        async def rewrite(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                content_type = MutableHeaders(scope=message).get("content-type", "")
                if message["status"] >= 400 and content_type.startswith("text/plain"):
                    start = message  # hold it until the body is complete
                    return
            elif start is not None and message["type"] == "http.response.body":
                body.extend(message.get("body", b""))
                if message.get("more_body"):
                    return
                detail = body.decode("utf-8", errors="replace").strip()
                response = JSONResponse({"detail": detail}, status_code=start["status"])
                headers = MutableHeaders(scope=start)
                for name in ("content-type", "content-length"):
                    del headers[name]
                response.raw_headers = headers.raw + response.raw_headers
                await response(scope, receive, send)
                return
            await send(message)

        await self.app(scope, receive, rewrite)


def drop_unusable_request_id(scope: Scope) -> None:
    """A client's own ``X-Request-Id`` is kept only when it is short and plain (it is echoed in
    headers and quoted in logs and error details); otherwise it is dropped and a fresh one made."""
    headers = MutableHeaders(scope=scope)
    if REQUEST_ID_HEADER in headers and not _REQUEST_ID.fullmatch(headers[REQUEST_ID_HEADER]):
        del headers[REQUEST_ID_HEADER]


class RequestIdMiddleware:
    """Every request has one id, quoted by logs and 500 details and sent back as ``X-Request-Id``.
    Serve's proxy already does this (``deployments.proxy_hooks`` bounds a client's own id there);
    this covers any other server."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        drop_unusable_request_id(scope)
        if REQUEST_ID_HEADER in MutableHeaders(scope=scope):
            return await self.app(scope, receive, send)
        request_id = uuid.uuid4().hex
        MutableHeaders(scope=scope).append(REQUEST_ID_HEADER, request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("X-Request-Id", request_id)
            await send(message)

        await self.app(scope, receive, send_with_id)
