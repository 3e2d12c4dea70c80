"""Hooks into Serve's own HTTP proxy, which sees every request before the Ingress does.

``launch`` points ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` at ``http_middlewares``; Serve wraps
its proxy app in these, outside its request-id middleware, so they run first.
"""
from __future__ import annotations

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

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


def http_middlewares() -> list[Middleware]:
    return [Middleware(BoundedRequestId)]
