"""The HTTP app: both contracts' routes as one Starlette application, no Ray.

``build_http_app`` takes what the routes need — a stage runner, a store, an access policy — so
``deployments.ingress`` runs it on Ray Serve with the graph's handles, and tests run it behind
Starlette's ``TestClient`` with stand-ins, in-process.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from auth import Access
from storage import ObjectStore

from .web import api_docs
from .admission import AdaptiveAdmission
from .contracts.app_check_api import AppCheckApi
from .web.cors import add_cors
from .errors import APP_CHECK_API, CREDITS_HEADER, KEY_API, error_response
from .jobs import Jobs, StageRunner
from .contracts.key_api import KeyApi, credits_remaining
from .web.middleware import REQUEST_ID_HEADER, JsonErrors, RequestIdMiddleware
from .outcomes import classify
from .pixel_budget import PixelBudget
from .readiness import Readiness
from .settings import AppSettings
from .stages import COLORIZERS
from .telemetry import Telemetry
from .web.workbench import workbench_routes

log = logging.getLogger("ray.serve")
SWEEP_EVERY_S = 600.0

Endpoint = Callable[[Request], Awaitable[Response]]
Guard = Callable[[], AbstractAsyncContextManager[None]]
READY_RETRY_AFTER_S = "2"


def build_http_app(settings: AppSettings, runner: StageRunner, store: ObjectStore, access: Access,
                   telemetry: Telemetry | None = None) -> Starlette:
    limits = settings.limits
    budget = PixelBudget(int(limits.max_megapixels_in_flight * 1_000_000), max_wait_s=limits.pixel_wait_s)
    jobs = Jobs(runner, store, max_pixels=limits.max_pixels, budget=budget)

    def base_url(request: Request) -> str:
        return settings.public_base_url or str(request.base_url).rstrip("/")

    key_api = KeyApi(settings, jobs, access, base_url)
    app_check_api = AppCheckApi(settings, jobs, access, base_url)
    # Jobs are let in only while storage and the ledger answer, and only as many as the service's
    # latency allows (service/admission.py); /readyz and /health are never queued or shed here.
    readiness = Readiness({"storage": store.check, "ledger": access.check}, ttl_s=settings.admission.readiness_ttl_s)
    admission = AdaptiveAdmission(min_limit=settings.admission.min_concurrency,
                                  max_limit=settings.admission.max_concurrency,
                                  latency_tolerance=settings.admission.latency_tolerance,
                                  max_queue_wait_s=settings.admission.max_queue_wait_s) \
        if settings.admission.enabled else None

    @asynccontextmanager
    async def when_ready() -> AsyncIterator[None]:
        readiness.require()
        yield

    @asynccontextmanager
    async def admitted() -> AsyncIterator[None]:
        readiness.require()
        if admission is None:
            yield
            return
        async with admission.slot():
            yield

    async def ready(request: Request) -> Response:
        """Public: whether this replica can take jobs now, by dependency, nothing else."""
        checks = readiness.view()
        statuses = await runner.statuses()
        checks["models"] = any(bool(statuses.get(name, {}).get("loaded")) for name in COLORIZERS)
        ok = all(checks.values())
        return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks},
                            status_code=200 if ok else 503,
                            headers={"Cache-Control": "no-store",
                                     **({} if ok else {"Retry-After": READY_RETRY_AFTER_S})})

    routes = [
        Route("/api/v1/colorize", on(KEY_API, key_api.colorize, admitted), methods=["POST"]),
        Route("/api/v1/account", on(KEY_API, key_api.account), methods=["GET"]),
        Route("/api/v1/pricing", on(KEY_API, key_api.pricing), methods=["GET"]),
        Route("/health", on(APP_CHECK_API, app_check_api.health), methods=["GET"]),
        Route("/upload", on(APP_CHECK_API, app_check_api.upload, when_ready), methods=["POST"]),
        Route("/colorize", on(APP_CHECK_API, app_check_api.colorize, admitted), methods=["POST"]),
        Route("/download/{result_id}", on(APP_CHECK_API, app_check_api.download), methods=["GET"]),
        Route("/results/{filename}", on(APP_CHECK_API, app_check_api.result_file), methods=["GET"]),
        Route("/uploads/{filename}", on(APP_CHECK_API, app_check_api.upload_file), methods=["GET"]),
        Route("/admin/status", on(APP_CHECK_API, app_check_api.admin_status), methods=["GET"]),
        Route("/readyz", ready, methods=["GET"]),
        # Every route is described in service/web/openapi.py (tests/unit/test_openapi.py keeps both lists equal).
        Route("/openapi.json", api_docs.openapi_document, methods=["GET"]),
        Route("/docs", api_docs.docs_page, methods=["GET"]),
        Route("/docs/{asset}", api_docs.docs_asset, methods=["GET"]),
        *(workbench_routes() if settings.workbench else []),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette):
        sweeper = asyncio.create_task(_sweep_forever(store)) if hasattr(store, "sweep_expired") else None
        await readiness.refresh()  # the first view is measured, not assumed
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
    # Every contract route counts and logs its requests here (see `on`); metrics leave through it.
    app.state.telemetry = telemetry or Telemetry(log_format=settings.job_log_format)
    app.state.admission, app.state.readiness = admission, readiness
    return app


@asynccontextmanager
async def _no_guard() -> AsyncIterator[None]:
    yield


def on(contract: str, endpoint: Endpoint, guard: Guard = _no_guard) -> Endpoint:
    """``endpoint`` answering its failures the way ``contract`` documents them (service.errors), each
    request counted and, on a job route, logged (service.telemetry); ``guard`` may refuse it first."""
    async def answer(request: Request) -> Response:
        request_id = request.headers.get(REQUEST_ID_HEADER, "?")
        with request.app.state.telemetry.request(request_id, route_of(request)) as record:
            try:
                async with guard():
                    response = await endpoint(request)
            except Exception as exc:
                classify(exc).note(record)
                response = error_response(exc, contract, request_id)
            credits = credits_remaining(request)
            if credits is not None:
                response.headers[CREDITS_HEADER] = str(credits)
            record.status = response.status_code
            return response
    answer.__name__ = endpoint.__name__
    return answer


def route_of(request: Request) -> str:
    """The request's method and route template (``GET /download/{result_id}``): a bounded metric label."""
    route = request.scope.get("route")
    return f"{request.method} {getattr(route, 'path', '?')}"


async def _routing_error(request: Request, exc: HTTPException) -> Response:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


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
