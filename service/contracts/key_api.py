"""The key API (seed 000): ``POST /api/v1/colorize`` with ``X-Api-Key``, metered in credits; a key
holder's own account (``GET /api/v1/account``) and the price table (``GET /api/v1/pricing``).

Every answer about a job whose key was identified carries ``X-Credits-Remaining``: the balance
after it (charged or released), or at the refusal (403, 409, 429)."""
from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from auth import Access, JobRequest, request_fingerprint
from pipeline.inputs.image_text import parse_image_text
from pipeline.inputs.remote_image import fetch_image_bytes

from ..errors import ApiError
from .forms import Form, client_address, read_form
from ..jobs import JobPlan, Jobs
from ..settings import AppSettings
from ..stages import ADD_ONS, COLORIZERS, STAGES
from ..telemetry import current_request

GUIDANCE_FIELDS = ("prompt", "seed")  # optional on both colorize routes; only text-guided models use them
COLORIZE_ROUTE = "POST /api/v1/colorize"
COLORIZE_FIELDS = ("image", "model", *ADD_ONS, *GUIDANCE_FIELDS)


def price_table() -> dict:
    """``GET /api/v1/pricing``: credits per colorizer, plus per add-on, from the stage table."""
    return {"unit": "credits",
            "models": {spec.name: spec.price for spec in STAGES if spec.is_colorizer},
            "addOns": {spec.add_on: spec.price for spec in STAGES if spec.add_on}}


def credits_remaining(request: Request) -> int | None:
    """The balance a key API handler noted for this request (``X-Credits-Remaining``), if any."""
    return getattr(request.state, "credits_remaining", None)


def guidance(form: Form) -> dict:
    return {"prompt": form.prompt("prompt"), "seed": form.integer("seed", 0, 2**32 - 1)}


class KeyApi:
    def __init__(self, settings: AppSettings, jobs: Jobs, access: Access, base_url):
        self.settings, self.jobs, self.access, self.base_url = settings, jobs, access, base_url

    async def colorize(self, request: Request) -> Response:
        client = client_address(request)
        await self.access.identify(COLORIZE_ROUTE, request.headers, client)  # 401/429 before reading the body
        form = await read_form(request, max_bytes=self.settings.max_upload_bytes, allowed=COLORIZE_FIELDS)
        plan = JobPlan(model=form.choice("model", COLORIZERS, "large"),
                       add_ons=frozenset(field for field in ADD_ONS if form.flag(field)), **guidance(form))
        current_request().job(plan.model, plan.add_ons, plan.price)
        job = JobRequest(COLORIZE_ROUTE, price=plan.price,
                         details={"model": plan.model, **{f: str(f in plan.add_ons).lower() for f in ADD_ONS}},
                         fingerprint=request_fingerprint(COLORIZE_ROUTE, form.items()))  # retries must match
        admission = None
        try:
            async with self.access.admit(job, request.headers, client) as admission:
                current_request().admitted(admission.principal, replayed=admission.replay is not None)
                if admission.replay is None:  # not a retry of a job that already succeeded
                    data = await self._image(form)
                    await admission.count_pixels(self.jobs.pixels(data))  # a large photo's extra tokens (429)
                    filename = await self.jobs.run_and_store(plan, data, "PNG")
                    admission.result_id = filename
                    admission.response = {"outputUrl": self.jobs.store.public_url("results", filename,
                                                                                  self.base_url(request))}
        finally:  # success or failure, the balance once the job is settled
            if admission is not None:
                request.state.credits_remaining = admission.credits_remaining
        return JSONResponse(admission.replay or admission.response, media_type="application/json; charset=utf-8")

    async def account(self, request: Request) -> Response:
        """The presented key's own balance and rate limit; charges nothing."""
        account = await self.access.account(request.headers, client_address(request))
        request.state.credits_remaining = account.credits
        return JSONResponse({"keyId": account.key_id, "name": account.name, "credits": account.credits,
                             "rateLimit": {"perSecond": account.rate_per_s, "burst": account.burst}},
                            headers={"Cache-Control": "no-store"})

    async def pricing(self, request: Request) -> Response:
        return JSONResponse(price_table(), headers={"Cache-Control": "public, max-age=300"})

    async def _image(self, form: Form) -> bytes:
        """The photo's bytes: the uploaded file, or decoded/fetched from the text value."""
        part = form.get("image")
        if part is None:
            raise ApiError(400, "field 'image' is required (a file, or text: http(s) URL, base64, data URL)")
        if part.is_file:
            return part.data
        limit = self.settings.max_upload_bytes
        parsed = parse_image_text(part.value, max_bytes=limit)
        if parsed.data is not None:
            return parsed.data
        fetch = self.settings.url_fetch
        return await asyncio.to_thread(fetch_image_bytes, parsed.url, max_bytes=limit, timeout_s=fetch.timeout_s,
                                       max_redirects=fetch.max_redirects, allow_hosts=frozenset(fetch.allow_hosts))
