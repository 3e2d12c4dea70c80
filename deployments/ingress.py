"""HTTP ingress: both seed contracts on one Starlette request handler.

Seed 000: POST /api/v1/colorize -> {"outputUrl"}; seed 003: /health, /upload, /colorize,
/download/{id}, /results/{filename}, /uploads/{filename}. Errors are {"detail": ...}.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from functools import partial
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from auth import Access, AccessDenied, JobRequest, OpenAccess, PolicyAccess, job_price, request_fingerprint
from pipeline.errors import ImageTooLargeError, InvalidImageError
from pipeline.image_text import parse_image_text
from pipeline.images import CONTENT_TYPES, DecodedImage, decode_image, encode_image
from pipeline.remote_image import RemoteImageError, fetch_image_bytes
from service import api_docs
from storage import InvalidObjectName, StorageError, make_store, new_object_name, validate_object_name

from .forms import ApiError, Form, read_form
from .graph import Graph, JobPlan, Overloaded, StageFailed, StageUnavailable
from .settings import AppSettings

log = logging.getLogger("ray.serve")

MODELS = ("large", "tiny")
KEY_API, APP_CHECK_API = "v1", "app"  # the two surfaces map internal failures differently
RETRY_AFTER_S = "2"
HEALTH_PROBE_WAIT_S = 2.0  # /health waits this long for fresh stage statuses, then answers the cached ones
GUIDANCE_FIELDS = ("prompt", "seed")  # optional on both colorize routes; only text-guided models use them
V1_FIELDS = ("image", "model", "clean_scratches", "face_remaster", *GUIDANCE_FIELDS)
UPLOAD_FIELDS = ("file",)
APP_COLORIZE_FIELDS = ("file", "model", *GUIDANCE_FIELDS)


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class Ingress:
    def __init__(self, settings: dict[str, Any], scratch_repair, large, tiny, face_remaster):
        self.settings = AppSettings.model_validate(settings)
        self.store = make_store(self.settings.storage)
        self.store.check()  # fail the deployment now, with the store's message, not on the first request
        self.graph = Graph({"scratch_repair": scratch_repair, "large": large, "tiny": tiny,
                            "face_remaster": face_remaster}, timeout_s=self.settings.limits.request_timeout_s)
        # The one place access control plugs in. Built here, in the replica: it holds a database
        # engine and a Firebase app, which do not travel between processes.
        self.access: Access = PolicyAccess(self.settings.auth) if self.settings.auth else OpenAccess()
        if self.settings.auth is None:
            log.warning("no `auth:` configured: every route is open and nothing is charged")
        self.routes = route_table(self)
        self._sweeper: asyncio.Task | None = None

    async def __call__(self, request: Request) -> Response:
        # Serve's proxy gives every request an id (the client's X-Request-Id, if sent) and puts it on
        # the response; logs and 500 details quote the same id.
        serve_request_id = request.headers.get("x-request-id")
        request_id = serve_request_id or uuid.uuid4().hex
        self._start_sweeper()
        try:
            response = await self._dispatch(request)
        except ApiError as exc:
            response = exc.response()
        except AccessDenied as exc:
            response = ApiError(exc.status, exc.detail, exc.headers).response()
        except Exception:
            log.exception("request %s %s failed (request id %s)", request.method, request.url.path, request_id)
            response = ApiError(500, f"internal error (request id {request_id})").response()
        if serve_request_id is None:  # not through Serve's HTTP proxy
            response.headers["X-Request-Id"] = request_id
        return response

    async def _dispatch(self, request: Request) -> Response:
        allowed: list[str] = []
        for route in self.routes:
            match, child = route.matches(request.scope)
            if match is Match.FULL:
                return await route.endpoint(request, **child["path_params"])
            if match is Match.PARTIAL:
                allowed += sorted(route.methods or ())
        if allowed:
            raise ApiError(405, "Method Not Allowed", {"Allow": ", ".join(allowed)})
        raise ApiError(404, "Not Found")

    # -- seed 003 ---------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        statuses = await self.graph.statuses(wait_s=HEALTH_PROBE_WAIT_S)
        models = {name: statuses.get(name, {}) for name in MODELS}
        loaded = any(status.get("loaded") for status in models.values())
        body = {"status": "healthy" if loaded else "unhealthy", "model_loaded": loaded, "models": models,
                "stages": {name: statuses.get(name, {}) for name in ("scratch_repair", "face_remaster")}}
        if not loaded:
            body["detail"] = "Model not loaded: no colorization model is available"
        return JSONResponse(body, status_code=200 if loaded else 503)

    async def upload(self, request: Request) -> Response:
        async with self.access.admit(JobRequest("POST /upload"), request.headers):
            form = await read_form(request, max_bytes=self.settings.max_upload_bytes, allowed=UPLOAD_FIELDS)
            data = _file_bytes(form, "file")
            image = await self._decode(data)
            filename = new_object_name(image.extension)
            await self._put("uploads", filename, data, CONTENT_TYPES[image.extension], APP_CHECK_API)
        base = self._base_url(request)
        return JSONResponse({"success": True, "image_id": filename.split(".")[0],
                             "image_url": f"{base}/uploads/{filename}", "filename": filename})

    async def colorize_app(self, request: Request) -> Response:
        async with self.access.admit(JobRequest("POST /colorize"), request.headers) as admission:
            form = await read_form(request, max_bytes=self.settings.max_upload_bytes, allowed=APP_COLORIZE_FIELDS)
            plan = JobPlan(model=form.choice("model", MODELS, "large"), **_guidance(form))
            image = await self._decode(_file_bytes(form, "file"))
            filename = await self._run_and_store(plan, image, "JPEG", APP_CHECK_API)
            admission.result_id = filename
        base, result_id = self._base_url(request), filename.split(".")[0]
        return JSONResponse({"success": True, "result_id": result_id,
                             "download_url": f"{base}/results/{filename}",
                             "api_download_url": f"{base}/download/{result_id}", "filename": filename})

    async def download(self, request: Request, result_id: str) -> Response:
        async with self.access.admit(JobRequest("GET /download"), request.headers):
            for extension in ("jpg", "png"):  # seed 003 results are JPEG, seed 000's PNG
                found = await self._stored("results", f"{result_id}.{extension}")
                if found is not None:
                    return Response(found.data, media_type=found.content_type, headers={
                        "Content-Disposition": f'attachment; filename="{result_id}.{extension}"'})
        raise ApiError(404, "Result not found")

    async def public_file(self, kind: str, request: Request, filename: str) -> Response:
        found = await self._stored(kind, filename)
        if found is None:
            raise ApiError(404, "File not found")
        return Response(found.data, media_type=found.content_type,
                        headers={"Cache-Control": "public, max-age=3600"})

    # -- seed 000 ---------------------------------------------------------------------------

    async def colorize_v1(self, request: Request) -> Response:
        form = await read_form(request, max_bytes=self.settings.max_upload_bytes, allowed=V1_FIELDS)
        plan = JobPlan(model=form.choice("model", MODELS, "large"), clean_scratches=form.flag("clean_scratches"),
                       face_remaster=form.flag("face_remaster"), **_guidance(form))
        route = "POST /api/v1/colorize"
        job = JobRequest(route, price=job_price(clean_scratches=plan.clean_scratches, face_remaster=plan.face_remaster),
                         details={"model": plan.model, "clean_scratches": str(plan.clean_scratches).lower(),
                                  "face_remaster": str(plan.face_remaster).lower()},
                         fingerprint=request_fingerprint(route, form.items()))  # Idempotency-Key retries must match
        async with self.access.admit(job, request.headers) as admission:
            if admission.replay is None:  # not a retry of a job that already succeeded
                image = await self._decode(await self._image_v1(form))
                filename = await self._run_and_store(plan, image, "PNG", KEY_API)
                admission.result_id = filename
                admission.response = {"outputUrl": self.store.public_url("results", filename,
                                                                         self._base_url(request))}
        return JSONResponse(admission.replay or admission.response, media_type="application/json; charset=utf-8")

    async def _image_v1(self, form: Form) -> bytes:
        part = form.get("image")
        if part is None:
            raise ApiError(400, "field 'image' is required (a file, or text: http(s) URL, base64, data URL)")
        if part.is_file:
            return part.data
        limit = self.settings.max_upload_bytes
        try:
            parsed = parse_image_text(part.value, max_bytes=limit)
        except ImageTooLargeError as exc:
            raise ApiError(413, str(exc)) from None
        except InvalidImageError as exc:
            raise ApiError(400, str(exc)) from None
        if parsed.data is not None:
            return parsed.data
        fetch = self.settings.url_fetch
        try:
            return await asyncio.to_thread(fetch_image_bytes, parsed.url, max_bytes=limit, timeout_s=fetch.timeout_s,
                                           max_redirects=fetch.max_redirects, allow_hosts=frozenset(fetch.allow_hosts))
        except RemoteImageError as exc:
            raise ApiError(exc.status, str(exc)) from None

    # -- shared -----------------------------------------------------------------------------

    async def _decode(self, data: bytes) -> DecodedImage:
        try:
            return await asyncio.to_thread(decode_image, data, max_pixels=self.settings.limits.max_pixels)
        except InvalidImageError as exc:
            raise ApiError(400, str(exc)) from None

    async def _run_and_store(self, plan: JobPlan, image: DecodedImage, fmt: str, surface: str) -> str:
        started = time.perf_counter()
        try:
            await self.graph.require(plan)
            rgb = await self.graph.run(plan, image.rgb)
        except StageUnavailable as exc:
            raise ApiError(503, str(exc)) from None
        except Overloaded:
            raise ApiError(429 if surface == KEY_API else 503, "server is busy; retry shortly",
                           {"Retry-After": RETRY_AFTER_S}) from None
        except StageFailed as exc:
            raise _internal_error(surface, f"colorization failed: {exc}") from None
        data = await asyncio.to_thread(encode_image, rgb, fmt, alpha=image.alpha)
        filename = new_object_name("jpg" if fmt == "JPEG" else "png")
        await self._put("results", filename, data, "image/jpeg" if fmt == "JPEG" else "image/png", surface)
        log.info("job %s -> %s in %.3f s", plan, filename, time.perf_counter() - started)
        return filename

    async def _put(self, kind: str, name: str, data: bytes, content_type: str, surface: str) -> None:
        try:
            await asyncio.to_thread(self.store.put, kind, name, data, content_type)
        except StorageError as exc:
            log.error("storing %s/%s failed: %s", kind, name, exc)
            raise _internal_error(surface, "could not store the image; retry later") from None

    async def _stored(self, kind: str, name: str):
        """The stored object, or None when missing, expired, or not a name we could have issued."""
        try:
            validate_object_name(name)
        except InvalidObjectName:
            return None
        try:
            return await asyncio.to_thread(self.store.get, kind, name)
        except StorageError as exc:
            log.error("reading %s/%s failed: %s", kind, name, exc)
            raise ApiError(503, "storage is unavailable; retry later", {"Retry-After": RETRY_AFTER_S}) from None

    def _base_url(self, request: Request) -> str:
        return self.settings.public_base_url or str(request.base_url).rstrip("/")

    def _start_sweeper(self) -> None:
        sweep = getattr(self.store, "sweep_expired", None)
        if sweep is not None and self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(_sweep_forever(sweep))


def route_table(ingress) -> list[Route]:
    """Every route served; each is described in service/openapi.py (a test keeps both lists equal)."""
    return [
        Route("/health", ingress.health, methods=["GET"]),
        Route("/api/v1/colorize", ingress.colorize_v1, methods=["POST"]),
        Route("/upload", ingress.upload, methods=["POST"]),
        Route("/colorize", ingress.colorize_app, methods=["POST"]),
        Route("/download/{result_id}", ingress.download, methods=["GET"]),
        Route("/results/{filename}", partial(ingress.public_file, "results"), methods=["GET"]),
        Route("/uploads/{filename}", partial(ingress.public_file, "uploads"), methods=["GET"]),
        Route("/openapi.json", api_docs.openapi_document, methods=["GET"]),
        Route("/docs", api_docs.docs_page, methods=["GET"]),
        Route("/docs/{asset}", api_docs.docs_asset, methods=["GET"]),
    ]


def _guidance(form: Form) -> dict[str, Any]:
    return {"prompt": form.prompt("prompt"), "seed": form.integer("seed", 0, 2**32 - 1)}


def _file_bytes(form: Form, name: str) -> bytes:
    part = form.get(name)
    if part is None or not part.is_file:
        raise ApiError(400, f"field '{name}' is required and must be an image file")
    return part.data


def _internal_error(surface: str, detail: str) -> ApiError:
    # Seed 000 lists 502 for failures behind the API; seed 003 uses 500.
    return ApiError(502 if surface == KEY_API else 500, detail)


async def _sweep_forever(sweep, every_s: float = 600.0) -> None:
    while True:
        try:
            removed = await asyncio.to_thread(sweep)
            if removed:
                log.info("removed %d expired stored files", removed)
        except Exception:
            log.exception("sweeping expired files failed")
        await asyncio.sleep(every_s)
