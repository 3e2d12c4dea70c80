"""The HTTP app: both contracts' routes as one Starlette application, no Ray.

``build_http_app`` takes what the routes need — a stage runner, a store, an access policy — so
``deployments.ingress`` runs it on Ray Serve with the graph's handles, and tests run it behind
Starlette's ``TestClient`` with stand-ins, in-process.
"""
from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from auth import Access
from storage import ObjectStore

from . import api_docs
from .app_check_api import AppCheckApi
from .cors import add_cors
from .errors import APP_CHECK_API, CREDITS_HEADER, KEY_API, error_response
from .jobs import Jobs, StageRunner
from .key_api import KeyApi, credits_remaining
from .settings import AppSettings
from .workbench import workbench_routes

log = logging.getLogger("ray.serve")
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
SWEEP_EVERY_S = 600.0

Endpoint = Callable[[Request], Awaitable[Response]]


def build_http_app(settings: AppSettings, runner: StageRunner, store: ObjectStore, access: Access) -> Starlette:
    jobs = Jobs(runner, store, max_pixels=settings.limits.max_pixels)

    def base_url(request: Request) -> str:
        return settings.public_base_url or str(request.base_url).rstrip("/")

    key_api = KeyApi(settings, jobs, access, base_url)
    app_check_api = AppCheckApi(settings, jobs, access, base_url)
    routes = [
        Route("/api/v1/colorize", on(KEY_API, key_api.colorize), methods=["POST"]),
        Route("/api/v1/account", on(KEY_API, key_api.account), methods=["GET"]),
        Route("/api/v1/pricing", on(KEY_API, key_api.pricing), methods=["GET"]),
        Route("/health", on(APP_CHECK_API, app_check_api.health), methods=["GET"]),
        Route("/upload", on(APP_CHECK_API, app_check_api.upload), methods=["POST"]),
        Route("/colorize", on(APP_CHECK_API, app_check_api.colorize), methods=["POST"]),
        Route("/download/{result_id}", on(APP_CHECK_API, app_check_api.download), methods=["GET"]),
        Route("/results/{filename}", on(APP_CHECK_API, app_check_api.result_file), methods=["GET"]),
        Route("/uploads/{filename}", on(APP_CHECK_API, app_check_api.upload_file), methods=["GET"]),
        Route("/admin/status", on(APP_CHECK_API, app_check_api.admin_status), methods=["GET"]),
        # Every route is described in service/openapi.py (tests/unit/test_openapi.py keeps both lists equal).
        Route("/openapi.json", api_docs.openapi_document, methods=["GET"]),
        Route("/docs", api_docs.docs_page, methods=["GET"]),
        Route("/docs/{asset}", api_docs.docs_asset, methods=["GET"]),
        *(workbench_routes() if settings.workbench else []),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette):
        sweeper = asyncio.create_task(_sweep_forever(store)) if hasattr(store, "sweep_expired") else None
        yield
        if sweeper is not None:
            sweeper.cancel()

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _routing_error})  # unknown path (404), method (405)
    # Links are built from the request's host unless public_base_url is set: only trusted hosts.
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.trusted_hosts()), www_redirect=False)
    # Cross-origin pages (cors.allow_origins): outside the host check, so even its refusal is
    # readable by them, and inside JsonErrors, which re-sends a refused preflight as {"detail"}.
    add_cors(app, settings.cors)
    app.add_middleware(JsonErrors)  # middlewares' own plain-text refusals in the documented shape
    app.add_middleware(RequestIdMiddleware)
    return app


def on(contract: str, endpoint: Endpoint) -> Endpoint:
    """``endpoint`` answering its failures the way ``contract`` documents them (service.errors)."""
    async def answer(request: Request) -> Response:
        try:
            response = await endpoint(request)
        except Exception as exc:
            response = error_response(exc, contract, request.headers.get(REQUEST_ID_HEADER, "?"))
        credits = credits_remaining(request)
        if credits is not None:
            response.headers[CREDITS_HEADER] = str(credits)
        return response
    answer.__name__ = endpoint.__name__
    return answer


async def _routing_error(request: Request, exc: HTTPException) -> Response:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


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


async def _sweep_forever(store: ObjectStore) -> None:
    """Local storage keeps files for its retention period; this removes them after it."""
    while True:
        try:
            removed = await asyncio.to_thread(store.sweep_expired)
            if removed:
                log.info("removed %d expired stored files", removed)
        except Exception:
            log.exception("sweeping expired files failed")
        await asyncio.sleep(SWEEP_EVERY_S)
