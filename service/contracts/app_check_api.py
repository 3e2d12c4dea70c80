"""The App Check API (seed 003): /health, /upload, /colorize, /download/{id}, /results/..., /uploads/...

Its routes (except health and the public files) take a Firebase App Check token; its results are JPEG.
"""
from __future__ import annotations

import hmac
import os

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from auth import Access, JobRequest
from storage import new_object_name

from ..errors import ApiError
from .forms import Form, client_address, read_form
from ..jobs import JobPlan, Jobs
from .key_api import GUIDANCE_FIELDS, guidance
from ..settings import AppSettings
from ..stages import COLORIZERS, STAGES
from ..telemetry import current_request

HEALTH_PROBE_WAIT_S = 2.0  # /health waits this long for fresh stage statuses, then answers the cached ones
NOSNIFF = {"X-Content-Type-Options": "nosniff"}  # stored files are served only as the image type they are
UPLOAD_FIELDS = ("file",)
COLORIZE_FIELDS = ("file", "model", *GUIDANCE_FIELDS)


class AppCheckApi:
    def __init__(self, settings: AppSettings, jobs: Jobs, access: Access, base_url):
        self.settings, self.jobs, self.access, self.base_url = settings, jobs, access, base_url

    async def health(self, request: Request) -> Response:
        """Public: which models are loaded, nothing else (sources, nodes and errors are for admins)."""
        statuses = await self.jobs.runner.statuses(wait_s=HEALTH_PROBE_WAIT_S)

        def public(name: str) -> dict:
            return {"loaded": bool(statuses.get(name, {}).get("loaded"))}

        loaded = any(public(name)["loaded"] for name in COLORIZERS)
        body = {"status": "healthy" if loaded else "unhealthy", "model_loaded": loaded,
                "models": {name: public(name) for name in COLORIZERS},
                "stages": {spec.name: public(spec.name) for spec in STAGES if not spec.is_colorizer}}
        if not loaded:
            body["detail"] = "Model not loaded: no colorization model is available"
        return JSONResponse(body, status_code=200 if loaded else 503)

    async def admin_status(self, request: Request) -> Response:
        """Every stage's full status (model source, load time, node, batch sizes, load error), for
        holders of the admin token (``Authorization: Bearer ...``; see ``admin_token_env``)."""
        expected = os.environ.get(self.settings.admin_token_env, "")
        if not expected:
            raise ApiError(404, "Not Found")
        presented = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(presented.encode(), expected.encode()):
            raise ApiError(401, "admin token missing or wrong (Authorization: Bearer <token>)",
                           {"WWW-Authenticate": "Bearer"})
        return JSONResponse({"stages": await self.jobs.runner.statuses(wait_s=HEALTH_PROBE_WAIT_S)})

    async def upload(self, request: Request) -> Response:
        async with self.access.admit(JobRequest("POST /upload"), request.headers, client_address(request)):
            form = await read_form(request, max_bytes=self.settings.max_upload_bytes, allowed=UPLOAD_FIELDS)
            data = _file_bytes(form, "file")
            filename = new_object_name(await self.jobs.image_extension(data))
            await self.jobs.put("uploads", filename, data)  # byte-for-byte as sent
        base = self.base_url(request)
        return JSONResponse({"success": True, "image_id": filename.split(".")[0],
                             "image_url": f"{base}/uploads/{filename}", "filename": filename})

    async def colorize(self, request: Request) -> Response:
        async with self.access.admit(JobRequest("POST /colorize"), request.headers, client_address(request)) as admission:
            current_request().admitted(admission.principal)
            form = await read_form(request, max_bytes=self.settings.max_upload_bytes, allowed=COLORIZE_FIELDS)
            plan = JobPlan(model=form.choice("model", COLORIZERS, "large"), **guidance(form))
            current_request().job(plan.model)
            filename = await self.jobs.run_and_store(plan, _file_bytes(form, "file"), "JPEG")
            admission.result_id = filename
        base, result_id = self.base_url(request), filename.split(".")[0]
        return JSONResponse({"success": True, "result_id": result_id,
                             "download_url": f"{base}/results/{filename}",
                             "api_download_url": f"{base}/download/{result_id}", "filename": filename})

    async def download(self, request: Request) -> Response:
        result_id = request.path_params["result_id"]
        async with self.access.admit(JobRequest("GET /download"), request.headers, client_address(request)):
            for extension in ("jpg", "png"):  # App Check API results are JPEG, the key API's PNG
                found = await self.jobs.stored("results", f"{result_id}.{extension}")
                if found is not None:
                    return Response(found.data, media_type=found.content_type, headers={
                        "Content-Disposition": f'attachment; filename="{result_id}.{extension}"', **NOSNIFF})
        raise ApiError(404, "Result not found")

    async def result_file(self, request: Request) -> Response:
        return await self._public_file("results", request.path_params["filename"])

    async def upload_file(self, request: Request) -> Response:
        return await self._public_file("uploads", request.path_params["filename"])

    async def _public_file(self, kind: str, filename: str) -> Response:
        found = await self.jobs.stored(kind, filename)
        if found is None:
            raise ApiError(404, "File not found")
        return Response(found.data, media_type=found.content_type,
                        headers={"Cache-Control": "public, max-age=3600", **NOSNIFF})


def _file_bytes(form: Form, name: str) -> bytes:
    part = form.get(name)
    if part is None or not part.is_file:
        raise ApiError(400, f"field '{name}' is required and must be an image file")
    return part.data
