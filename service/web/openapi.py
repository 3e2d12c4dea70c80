"""The OpenAPI 3.1 description of every route the service answers: written once, here.

Served at ``/openapi.json`` and rendered at ``/docs``. Tests keep it true: every route the
app serves is in it and nothing else is (``tests/unit/test_openapi.py``), and schemathesis
checks the running service's answers against it (``tests/integration/test_openapi_live.py``).
Numbers that the code owns (prices, the prompt limit, stored formats) are read from the code.

``python -m service.web.openapi`` prints it.
"""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from typing import Any

from pipeline.inputs.prompts import MAX_PROMPT_CHARS
from storage import CONTENT_TYPES

from ..stages import ADD_ONS, COLORIZERS, STAGES

MODELS = COLORIZERS
PRICES = {spec.add_on or spec.name: spec.price for spec in STAGES}  # colorizers by name, add-ons by field
MAX_SEED = 2**32 - 1  # what the form accepts (the colorizer itself takes up to 2**63 - 1)
MAX_IDEMPOTENCY_KEY_CHARS = 255
IMAGE_TYPES = sorted(set(CONTENT_TYPES.values()))  # what /uploads serves: uploads keep their format
RESULT_TYPES = ["image/jpeg", "image/png"]         # seed 003 results are JPEG, seed 000's PNG
OBJECT_NAME = (r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
               r"\.(" + "|".join(sorted(CONTENT_TYPES)) + r")$")
RESULT_ID = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
# Assets of the API reference page, all served by the service itself (no CDN).
DOCS_ASSETS = ("docs.js", "swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")

# X-Credits-Remaining is on every success of the key API (colorize, account); the live test checks it.
CREDITS_ON_SUCCESS = True

KEY_API, APP_CHECK_API, ACCOUNT, DOCS = "Key API (seed 000)", "App Check API (seed 003)", "Account", "Pages"
OPERATIONS = "Operations"

DESCRIPTION = f"""\
Colorizes black-and-white photos. One service speaks two contracts:

* the **key API** (`POST /api/v1/colorize`): metered in credits per successful job, authenticated
  with an `X-Api-Key` header, answering `{{"outputUrl": ...}}`;
* the **App Check API** (`/health`, `/upload`, `/colorize`, `/download/{{result_id}}`, and the
  public `/results/{{filename}}`, `/uploads/{{filename}}`), authenticated with Firebase App Check
  (`X-Firebase-AppCheck`).

**Errors** are always JSON `{{"detail": "..."}}`, also when the HTTP proxy sheds a request
because the service's queue is full (`429` on the key API, `503` on the App Check API, with
`Retry-After`). An unexpected failure is `500 {{"detail": "internal error (request id ...)"}}`.

An unknown route answers `404` and a known route asked with another method `405` with an `Allow`
header, both `{{"detail": ...}}`.

**Request ids.** Every response carries one `X-Request-Id`: the client's own when the request
sent one, else a fresh id. The service's logs and 500 details quote it.

**Browsers (CORS).** Every route answers cross-origin requests and `OPTIONS` preflights from the
origins listed in the service's `cors.allow_origins` setting (the demo allows any origin),
allowing `GET` and `POST` with the request headers `X-Api-Key`, `X-Firebase-AppCheck`,
`Idempotency-Key`, `Content-Type` and `X-Request-Id`, and exposing `X-Request-Id`, `Retry-After` and
`X-Credits-Remaining`. A preflight from an origin that is not allowed answers `400 {{"detail": ...}}`.

**Limits.** A request body (and an image fetched from a URL) may be at most `limits.max_upload_mb`
(25 MB by default; 413 above), and a decoded image at most `limits.max_pixels` (50 megapixels by
default; 400 above). Accepted formats: JPEG, PNG, WebP, TIFF, BMP, GIF (first frame).

**Route policies.** The operator can change which credential a route takes (`auth.routes`:
`api_key`, `app_check`, `either`, `none`). This document describes the default policies; the demo
(`make demo`) opens the App Check routes, since no Firebase project is reachable offline.
"""


def _ref(name: str, kind: str = "schemas") -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema: dict[str, Any], media_type: str = "application/json") -> dict[str, Any]:
    return {media_type: {"schema": schema}}


ERROR = _json(_ref("Error"))
SHED_BY_PROXY: dict[str, Any] = {}  # Serve's proxy, before the app: re-sent as {"detail"} by its hook
_CREDITS_REMAINING = {"description": "The key's balance after this request (charged or released), on key-API "
                                     "answers once the key is identified.", "schema": {"type": "integer", "minimum": 0}}
_RETRY_AFTER = {"description": "Whole seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 0}}


def _response(description: str, content: dict[str, Any] | None = None,
              headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every response carries X-Request-Id, and Access-Control-Allow-Origin for allowed origins."""
    response: dict[str, Any] = {"description": description,
                                "headers": {"X-Request-Id": _ref("X-Request-Id", "headers"),
                                            "Access-Control-Allow-Origin": _ref("Access-Control-Allow-Origin",
                                                                                "headers"),
                                            **(headers or {})}}
    if content is not None:
        response["content"] = content
    return response


def _error(description: str, *, retry_after: str | None = None, shed: bool = False,
           extra_headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """An error answer. ``retry_after``: "always" or "sometimes" sent; ``shed``: may come from the proxy."""
    headers = dict(extra_headers or {})
    if retry_after == "always":
        headers["Retry-After"] = {**_RETRY_AFTER, "required": True}
    elif retry_after == "sometimes":
        headers["Retry-After"] = _ref("Retry-After", "headers")
    content = {**ERROR, **SHED_BY_PROXY} if shed else ERROR
    return _response(description, content, headers)


def _unavailable(reasons: str = "") -> dict[str, Any]:
    """503: the route's own reasons, and the proxy's load shedding, which any route can meet."""
    shed = "The service's queue is full (shed by the HTTP proxy, with `Retry-After`)."
    return _error(f"{reasons} {shed}".strip(), retry_after="sometimes", shed=True)


def _throttled() -> dict[str, Any]:
    return _error("Too many failed authentications from this address (counted per client address).",
                  retry_after="always")


NOSNIFF = {"X-Content-Type-Options": {"required": True, "schema": {"const": "nosniff"},
                                      "description": "Stored files are only ever the image type they are."}}


def _credits_header(on_success: bool = False) -> dict[str, Any]:
    if on_success and CREDITS_ON_SUCCESS:  # a success always knows the key's balance
        return {"X-Credits-Remaining": {**_CREDITS_REMAINING, "required": True}}
    return {"X-Credits-Remaining": _ref("X-Credits-Remaining", "headers")}


def _form(properties: dict[str, Any], required: list[str], encoding: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "properties": properties, "required": required,
                   "additionalProperties": False},
        "encoding": encoding}}}


def _file_field(description: str) -> dict[str, Any]:
    return {"type": "string", "format": "binary", "description": description}


def _image_encoding() -> dict[str, Any]:
    return {"contentType": ", ".join(IMAGE_TYPES)}


GUIDANCE_FIELDS = {
    "prompt": {"type": "string", "maxLength": MAX_PROMPT_CHARS,
               "description": f"Optional text guidance for the `large` (text-guided) model, at most "
                              f"{MAX_PROMPT_CHARS} characters once runs of whitespace are collapsed; no control "
                              "characters. Put before the cleaned BLIP caption of the photo (the seed-003 recipe). "
                              "Ignored by `tiny`.",
               "examples": ["a red barn under a blue sky"]},
    "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED,
             "description": "Optional: the same image, prompt and seed give the same output. Default: random.",
             "examples": [42]},
}
MODEL_FIELD = {"type": "string", "enum": list(MODELS), "default": "large",
               "description": "`large`: text-guided diffusion colorizer (better quality); `tiny`: fast "
                              "feed-forward colorizer."}


def _flag(description: str) -> dict[str, Any]:
    return {"type": "string", "enum": ["true", "false"], "default": "false",
            "description": description + " `true` or `false` (any case)."}


def _v1_colorize() -> dict[str, Any]:
    fields = {
        "image": {
            "description": "Required. An image file, **or** text: an http(s) URL (fetched by the service; private, "
                           "loopback and link-local addresses are refused, on every redirect), base64, or a data "
                           "URL. The format is detected from the content.",
            "anyOf": [_file_field("The image file."),
                      {"type": "string", "minLength": 1, "description": "http(s) URL, base64 or data URL.",
                       "examples": ["https://example.com/old-photo.jpg"]}]},
        "model": MODEL_FIELD,
        "clean_scratches": _flag(f"Smart Damage Repair: scratch and dust repair first "
                                 f"(+{PRICES['clean_scratches']} credit)."),
        "face_remaster": _flag(f"AI Clarity Boost: face restoration last (+{PRICES['face_remaster']} credits)."),
        **GUIDANCE_FIELDS,
    }
    return {
        "tags": [KEY_API], "operationId": "colorizeWithKey", "summary": "Colorize a photo (metered)",
        "description": f"Runs the job and answers a public, time-limited URL of the colorized PNG (alpha kept). "
                       f"Costs {PRICES['large']} credit, plus the add-ons; credits are reserved before any work and "
                       "charged only when the job succeeds.",
        "security": [{"ApiKey": []}],
        "parameters": [_ref("Idempotency-Key", "parameters"), _ref("X-Request-Id", "parameters")],
        "requestBody": _form(fields, ["image"], {"image": {"contentType": ", ".join([*IMAGE_TYPES, "text/plain"])}}),
        "responses": {
            "200": _response("The colorized image's URL (with local storage served by this service under "
                             "`/results/`; with MinIO a presigned URL).",
                             _json(_ref("KeyColorizeResult"), "application/json; charset=utf-8"),
                             _credits_header(on_success=True)),
            "400": _error("Not multipart; `image` missing, empty, sent twice (a file **and** text), not an image, "
                          "truncated, or over the pixel limit; a bad `model`, add-on, `prompt` or `seed` value; an "
                          "unknown field; an image URL that is not http(s), resolves to a private address, or "
                          "answered 4xx; an `Idempotency-Key` longer than 255 characters.",
                          extra_headers=_credits_header()),
            "401": _error("`X-Api-Key` missing, malformed, unknown or revoked."),
            "403": _error("Not enough credits for this job's price (checked before any work).",
                          extra_headers=_credits_header()),
            "409": _error("The `Idempotency-Key` was used for a different request, or its first request is still "
                          "running.", extra_headers=_credits_header()),
            "413": _error("The request body, or the image fetched from the URL, is over the upload limit.",
                          extra_headers=_credits_header()),
            "429": _error("The key's rate limit (a token bucket); the service's queues are full; too many failed "
                          "authentications from this address.",
                          retry_after="always", extra_headers=_credits_header()),
            "502": _error("The image URL was unreachable or answered 5xx; a stage or the storage failed (the "
                          "detail quotes the request id). Nothing is charged.", extra_headers=_credits_header()),
            "503": _unavailable("The requested model (or add-on) is not loaded; API keys are not configured on "
                                "this server; the credit ledger is unreachable (with `Retry-After`), also when the "
                                "job's charge could not be committed: then the result is withheld and nothing is "
                                "charged."),
        },
    }


def _health() -> dict[str, Any]:
    return {
        "tags": [APP_CHECK_API], "operationId": "health", "summary": "Health of the service and its models",
        "security": [], "parameters": [_ref("X-Request-Id", "parameters")],
        "responses": {
            "200": _response("At least one colorization model is loaded.", _json(_ref("Health"))),
            "503": _response("No colorization model is loaded (`status: unhealthy`, with `detail`); or the service's "
                             "queue is full (shed by the HTTP proxy, with `Retry-After`).",
                             {**_json(_ref("Health")), **SHED_BY_PROXY},
                             {"Retry-After": _ref("Retry-After", "headers")}),
        },
    }


def _admin_status() -> dict[str, Any]:
    return {
        "tags": [APP_CHECK_API], "operationId": "adminStatus", "summary": "Every stage's full status (admins)",
        "description": "Model source, load time, node, batch sizes and load errors: what `/health` leaves out.",
        "security": [{"AdminToken": []}], "parameters": [_ref("X-Request-Id", "parameters")],
        "responses": {
            "200": _response("Each stage's status.", _json(_ref("AdminStatus"))),
            "401": _error("The admin token is missing or wrong.", extra_headers={
                "WWW-Authenticate": {"required": True, "schema": {"const": "Bearer"}}}),
            "404": _error("No admin token is configured on this server: the route does not exist."),
            "503": _unavailable(),
        },
    }


def _upload() -> dict[str, Any]:
    return {
        "tags": [APP_CHECK_API], "operationId": "upload", "summary": "Upload an image",
        "description": "Stores the file byte for byte (with the extension of its detected format) and answers its "
                       "public URL.",
        "security": [{"AppCheck": []}], "parameters": [_ref("X-Request-Id", "parameters")],
        "requestBody": _form({"file": _file_field("Image file (JPEG, PNG, WebP, TIFF, BMP, GIF).")}, ["file"],
                             {"file": _image_encoding()}),
        "responses": {
            "200": {**_response("Uploaded.", _json(_ref("UploadResult"))), "links": {
                "UploadedFile": {"operationId": "publicUploads", "parameters": {"filename": "$response.body#/filename"},
                                 "description": "The uploaded file (`image_url`)."}}},
            "400": _error("Not multipart; `file` missing, not a file, or not a readable image; an unknown field."),
            "401": _error("Missing or invalid App Check token."),
            "413": _error("The request body is over the upload limit."),
            "429": _throttled(),
            "500": _error("The image could not be stored."),
            "503": _unavailable("App Check is not configured on this server."),
        },
    }


def _colorize_app() -> dict[str, Any]:
    return {
        "tags": [APP_CHECK_API], "operationId": "colorize", "summary": "Colorize an image",
        "description": "Colorizes the photo at its own size and aspect ratio and stores the result as JPEG.",
        "security": [{"AppCheck": []}], "parameters": [_ref("X-Request-Id", "parameters")],
        "requestBody": _form({"file": _file_field("Image file (JPEG, PNG, WebP, TIFF, BMP, GIF)."),
                              "model": MODEL_FIELD, **GUIDANCE_FIELDS}, ["file"], {"file": _image_encoding()}),
        "responses": {
            "200": {**_response("Colorized.", _json(_ref("ColorizeResult"))), "links": {
                "Download": {"operationId": "download", "parameters": {"result_id": "$response.body#/result_id"},
                             "description": "The result through the API (`api_download_url`)."},
                "PublicResult": {"operationId": "publicResults", "parameters": {"filename": "$response.body#/filename"},
                                 "description": "The result's public URL (`download_url`)."}}},
            "400": _error("Not multipart; `file` missing, not a file, not a readable image or over the pixel limit; "
                          "a bad `model`, `prompt` or `seed`; an unknown field."),
            "401": _error("Missing or invalid App Check token."),
            "413": _error("The request body is over the upload limit."),
            "429": _throttled(),
            "500": _error("Colorization or storing the result failed (the detail quotes the request id)."),
            "503": _unavailable("The colorization model is not loaded; the model queues are full (with "
                                "`Retry-After`); App Check is not configured on this server."),
        },
    }


def _file_responses(media_types: list[str], what: str, extra_headers: dict[str, Any]) -> dict[str, Any]:
    binary = {media_type: {"schema": {"type": "string", "format": "binary"}} for media_type in media_types}
    return {"200": _response(what, binary, extra_headers)}


def _download() -> dict[str, Any]:
    return {
        "tags": [APP_CHECK_API], "operationId": "download", "summary": "Download a result by id",
        "security": [{"AppCheck": []}],
        "parameters": [{"name": "result_id", "in": "path", "required": True,
                        "description": "`result_id` from `POST /colorize` (or the name of a key-API result without "
                                       "its extension).",
                        "schema": {"type": "string", "pattern": RESULT_ID}},
                       _ref("X-Request-Id", "parameters")],
        "responses": {
            **_file_responses(RESULT_TYPES, "The colorized image, as an attachment.",
                              {"Content-Disposition": {"required": True, "schema": {"type": "string"},
                                                       "description": 'attachment; filename="<result_id>.jpg"'},
                               **NOSNIFF}),
            "401": _error("Missing or invalid App Check token."),
            "404": _error("No such result (never issued, or expired)."),
            "429": _throttled(),
            "503": _unavailable("Storage is unavailable (with `Retry-After`); App Check is not configured on this "
                                "server."),
        },
    }


def _public_file(kind: str, media_types: list[str], what: str, source: str) -> dict[str, Any]:
    return {
        "tags": [APP_CHECK_API], "operationId": f"public{kind.title()}", "summary": what,
        "description": "Public: no credential. Files expire with the store's retention.", "security": [],
        "parameters": [{"name": "filename", "in": "path", "required": True,
                        "description": f"`filename` from {source}.",
                        "schema": {"type": "string", "pattern": OBJECT_NAME}},
                       _ref("X-Request-Id", "parameters")],
        "responses": {
            **_file_responses(media_types, "The image.", {"Cache-Control": _cache_control("public, max-age=3600"),
                                                          **NOSNIFF}),
            "404": _error("No such file (never issued, or expired)."),
            "503": _unavailable("Storage is unavailable (with `Retry-After`)."),
        },
    }


def _account() -> dict[str, Any]:
    return {
        "tags": [ACCOUNT], "operationId": "account", "summary": "The calling key's balance and rate limit",
        "security": [{"ApiKey": []}], "parameters": [_ref("X-Request-Id", "parameters")],
        "responses": {
            "200": _response("The key's account.", _json(_ref("Account")),
                             {**_credits_header(on_success=True), "Cache-Control": _cache_control("no-store")}),
            "401": _error("`X-Api-Key` missing, malformed, unknown or revoked."),
            "429": _throttled(),
            "503": _unavailable("API keys are not configured on this server, or the credit ledger is unreachable."),
        },
    }


def _pricing() -> dict[str, Any]:
    return {
        "tags": [ACCOUNT], "operationId": "pricing", "summary": "Credits per job, to show a price before sending",
        "description": "A job costs its model's price plus each enabled add-on's.",
        "security": [], "parameters": [_ref("X-Request-Id", "parameters")],
        "responses": {"200": _response("The price table.", _json(_ref("Pricing")),
                                       {"Cache-Control": _cache_control("public, max-age=300")}),
                      "503": _unavailable()},
    }


def _cache_control(value: str) -> dict[str, Any]:
    return {"description": value, "schema": {"type": "string"}}


def _page(operation_id: str, summary: str, description: str, media_type: str = "text/html") -> dict[str, Any]:
    return {"tags": [DOCS], "operationId": operation_id, "summary": summary, "description": description,
            "security": [], "parameters": [_ref("X-Request-Id", "parameters")],
            "responses": {"200": _response("The file.", {media_type: {"schema": {"type": "string"}}},
                                           {"Content-Security-Policy": {"schema": {"type": "string"}, "description":
                                                                        "Nothing loads from other origins."}}),
                          "503": _unavailable()}}


def _readyz() -> dict[str, Any]:
    ready = _ref("Readiness")
    return {"tags": [OPERATIONS], "operationId": "readiness", "summary": "Whether this replica takes jobs now",
            "description": "Answered from a view refreshed in the background (`admission.readiness_ttl_s`), never "
                           "queued behind jobs. While storage or the ledger does not answer, jobs are refused with "
                           "503 and `Retry-After` before any model work.",
            "security": [], "parameters": [_ref("X-Request-Id", "parameters")],
            "responses": {"200": _response("Ready.", _json(ready)),
                          "503": _response("Not ready.", _json(ready),
                                           {"Retry-After": {**_RETRY_AFTER, "required": True}})}}


def _openapi_json() -> dict[str, Any]:
    return {"tags": [DOCS], "operationId": "openapiDocument", "summary": "This document",
            "security": [], "parameters": [_ref("X-Request-Id", "parameters")],
            "responses": {"200": _response("The OpenAPI 3.1 document.",
                                           _json({"type": "object", "required": ["openapi", "paths"]})),
                          "503": _unavailable()}}


def _docs_asset() -> dict[str, Any]:
    types = {"application/javascript": {"schema": {"type": "string"}}, "text/css": {"schema": {"type": "string"}},
             "image/png": {"schema": {"type": "string", "format": "binary"}}}
    return {"tags": [DOCS], "operationId": "docsAsset", "summary": "A file of the API reference page",
            "security": [],
            "parameters": [{"name": "asset", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": list(DOCS_ASSETS)}},
                           _ref("X-Request-Id", "parameters")],
            "responses": {"200": _response("The file.", types, {"Cache-Control": {"schema": {"type": "string"}}}),
                          "404": _error("No such file."),
                          "503": _unavailable()}}


def _components() -> dict[str, Any]:
    stage_status = {
        "type": "object", "required": ["loaded"],
        "description": "A stage's full report, for admins: whether its model is loaded, and what it runs.",
        "properties": {"loaded": {"type": "boolean"},
                       "architecture": {"type": "string"}, "source": {"type": "string"},
                       "load_seconds": {"type": "number"},
                       "error": {"type": "string", "description": "Why the model is not loaded or not reachable."},
                       "batch_sizes": {"type": "object", "additionalProperties": {"type": "integer"},
                                       "description": "How many batches of each size it has run."},
                       "torch_threads": {"type": "integer", "minimum": 1,
                                         "description": "PyTorch intra-op threads of the replica that answered "
                                                        "(the deployment's `user_config.torch_threads`, else Ray's)."},
                       "node_id": {"type": "string"}},
        "additionalProperties": True}
    loaded_only = {"type": "object", "required": ["loaded"], "additionalProperties": False,
                   "properties": {"loaded": {"type": "boolean"}}}
    url = {"type": "string", "format": "uri"}
    return {
        "schemas": {
            "Error": {"type": "object", "required": ["detail"], "additionalProperties": False,
                      "properties": {"detail": {"type": "string", "minLength": 1}},
                      "examples": [{"detail": "field 'image' is required (a file, or text: http(s) URL, base64, "
                                              "data URL)"}]},
            "KeyColorizeResult": {"type": "object", "required": ["outputUrl"], "additionalProperties": False,
                                  "properties": {"outputUrl": {**url, "description": "The colorized PNG: public, "
                                                                                     "time-limited."}},
                                  "examples": [{"outputUrl": "https://colorize.example.com/results/"
                                                             "6f1c2b9e-3d4a-4f5b-9c8d-7e6f5a4b3c2d.png"}]},
            "UploadResult": {"type": "object", "additionalProperties": False,
                             "required": ["success", "image_id", "image_url", "filename"],
                             "properties": {"success": {"const": True},
                                            "image_id": {"type": "string", "pattern": RESULT_ID},
                                            "image_url": {**url, "description": "`/uploads/{filename}`"},
                                            "filename": {"type": "string", "pattern": OBJECT_NAME}}},
            "ColorizeResult": {"type": "object", "additionalProperties": False,
                               "required": ["success", "result_id", "download_url", "api_download_url", "filename"],
                               "properties": {"success": {"const": True},
                                              "result_id": {"type": "string", "pattern": RESULT_ID},
                                              "download_url": {**url, "description": "`/results/{filename}`, public"},
                                              "api_download_url": {**url, "description": "`/download/{result_id}`"},
                                              "filename": {"type": "string", "pattern": OBJECT_NAME}}},
            "StageStatus": stage_status,
            "StageLoaded": loaded_only,
            "AdminStatus": {"type": "object", "required": ["stages"], "additionalProperties": False,
                            "properties": {"stages": {"type": "object", "required": [spec.name for spec in STAGES],
                                                      "additionalProperties": False,
                                                      "properties": {spec.name: _ref("StageStatus")
                                                                     for spec in STAGES}}}},
            "Readiness": {"type": "object", "required": ["status", "checks"], "properties": {
                "status": {"enum": ["ready", "not ready"]},
                "checks": {"type": "object", "additionalProperties": {"type": "boolean"},
                           "description": "`storage`, `ledger` (reachable) and `models` (a colorizer is loaded)"}}},
            "Health": {
                "type": "object", "required": ["status", "model_loaded", "models", "stages"],
                "additionalProperties": False,
                "properties": {
                    "status": {"type": "string", "enum": ["healthy", "unhealthy"]},
                    "model_loaded": {"type": "boolean", "description": "At least one colorization model is loaded."},
                    "models": {"type": "object", "required": list(MODELS), "additionalProperties": False,
                               "properties": {name: _ref("StageLoaded") for name in MODELS}},
                    "stages": {"type": "object", "required": ["scratch_repair", "face_remaster"],
                               "additionalProperties": False,
                               "properties": {name: _ref("StageLoaded") for name in ("scratch_repair",
                                                                                     "face_remaster")}},
                    "detail": {"type": "string", "description": "Only when unhealthy."}}},
            "Account": {
                "type": "object", "required": ["keyId", "name", "credits", "rateLimit"], "additionalProperties": False,
                "properties": {
                    "keyId": {"type": "string", "description": "The key's public id (not secret)."},
                    "name": {"type": ["string", "null"]},
                    "credits": {"type": "integer", "minimum": 0, "description": "Remaining credits."},
                    "rateLimit": {"type": "object", "required": ["perSecond", "burst"], "additionalProperties": False,
                                  "properties": {"perSecond": {"type": "number", "exclusiveMinimum": 0},
                                                 "burst": {"type": "integer", "minimum": 1}}}}},
            "Pricing": {
                "type": "object", "required": ["unit", "models", "addOns"], "additionalProperties": False,
                "properties": {
                    "unit": {"const": "credits"},
                    "models": {"type": "object", "required": list(MODELS), "additionalProperties": False,
                               "properties": {name: {"const": PRICES[name]} for name in MODELS}},
                    "addOns": {"type": "object", "required": list(ADD_ONS), "additionalProperties": False,
                               "properties": {name: {"const": PRICES[name]} for name in ADD_ONS}}},
                "examples": [{"unit": "credits", "models": {name: PRICES[name] for name in MODELS},
                              "addOns": {name: PRICES[name] for name in ADD_ONS}}]},
        },
        "parameters": {
            "Idempotency-Key": {"name": "Idempotency-Key", "in": "header", "required": False,
                                "description": "Optional, per API key. A retry of the same request with the same key "
                                               "answers the first success again and is not charged again; the same "
                                               "key on a different request is a 409. Kept for "
                                               "`auth.idempotency_ttl_s` (1 hour by default).",
                                "schema": {"type": "string", "minLength": 1,
                                           "maxLength": MAX_IDEMPOTENCY_KEY_CHARS}},
            "X-Request-Id": {"name": "X-Request-Id", "in": "header", "required": False,
                             "description": "Optional: your own id for this request, echoed in `X-Request-Id`. "
                                            "Kept only when short and plain (this pattern); otherwise the service "
                                            "makes a fresh one.",
                             "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,64}$"}},
        },
        "headers": {
            "X-Request-Id": {"description": "This request's id (yours, if you sent a usable one).", "required": True,
                             "schema": {"type": "string", "minLength": 1}},
            "Access-Control-Allow-Origin": {"description": "Sent when the request's `Origin` is allowed (CORS).",
                                            "schema": {"type": "string"}},
            "Retry-After": _RETRY_AFTER,
            "X-Credits-Remaining": _CREDITS_REMAINING,
        },
        "securitySchemes": {
            "AdminToken": {"type": "http", "scheme": "bearer",
                           "description": "The value of the environment variable named by `admin_token_env` "
                                          "(`COLORIZE_ADMIN_TOKEN`)."},
            "ApiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key",
                       "description": "An end-user API key, `ck_live_<key id>_<secret>` (`colorize-admin keys "
                                      "create`; `make demo` prints one)."},
            "AppCheck": {"type": "apiKey", "in": "header", "name": "X-Firebase-AppCheck",
                         "description": "A Firebase App Check token for the configured project."},
        },
    }


@lru_cache(maxsize=1)
def _document() -> dict[str, Any]:
    return _with_host_check({
        "openapi": "3.1.0",
        "info": {"title": "Photo colorization", "version": "0.1.0", "description": DESCRIPTION,
                 "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}},
        "tags": [{"name": KEY_API, "description": "Metered with credits, `X-Api-Key`."},
                 {"name": APP_CHECK_API, "description": "Firebase App Check, `X-Firebase-AppCheck`."},
                 {"name": ACCOUNT, "description": "Balance and prices for key holders."},
                 {"name": DOCS, "description": "The workbench, this reference and its document."},
                 {"name": OPERATIONS, "description": "Probes for load balancers and orchestrators; never queued "
                                                    "behind jobs. `GET /livez` (the HTTP front is up: "
                                                    "`{\"status\": \"live\"}`) is answered by the front itself."}],
        "paths": {
            "/api/v1/colorize": {"post": _v1_colorize()},
            "/api/v1/account": {"get": _account()},
            "/api/v1/pricing": {"get": _pricing()},
            "/health": {"get": _health()},
            "/admin/status": {"get": _admin_status()},
            "/upload": {"post": _upload()},
            "/colorize": {"post": _colorize_app()},
            "/download/{result_id}": {"get": _download()},
            "/results/{filename}": {"get": _public_file("results", RESULT_TYPES, "A colorized result (public)",
                                                        "`POST /colorize`, or the end of a key-API `outputUrl`")},
            "/uploads/{filename}": {"get": _public_file("uploads", IMAGE_TYPES, "An uploaded image (public)",
                                                        "`POST /upload`")},
            "/": {"get": _page("workbench", "The web workbench", "Colorize photos in the browser: drop photos, pick "
                               "a model and add-ons, see each result beside its original. Served unless the "
                               "setting `workbench` is false.")},
            "/workbench.js": {"get": _page("workbenchScript", "The workbench's script", "", "text/javascript")},
            "/workbench.css": {"get": _page("workbenchStyles", "The workbench's styles", "", "text/css")},
            "/readyz": {"get": _readyz()},
            "/openapi.json": {"get": _openapi_json()},
            "/docs": {"get": _page("docs", "API reference", "This document, rendered (Swagger UI, served by the "
                                   "service itself).")},
            "/docs/{asset}": {"get": _docs_asset()},
        },
        "components": _components(),
    })


def _with_host_check(document: dict[str, Any]) -> dict[str, Any]:
    """Every route answers 400 to a request whose Host is not trusted, before any work."""
    untrusted = "The request's `Host` is not trusted (`allowed_hosts`): `{\"detail\": \"Invalid host header\"}`."
    for item in document["paths"].values():
        for operation in item.values():
            responses = operation["responses"]
            if "400" in responses:
                responses["400"]["description"] += " " + untrusted
            else:
                responses["400"] = _error(untrusted)
            operation["responses"] = dict(sorted(responses.items()))
    return document


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the document (callers may change theirs)."""
    return copy.deepcopy(_document())


def openapi_json() -> bytes:
    return _serialized()


@lru_cache(maxsize=1)
def _serialized() -> bytes:
    return json.dumps(_document(), ensure_ascii=False, separators=(",", ":")).encode()


def documented_routes() -> set[tuple[str, str]]:
    """(METHOD, path template) of every operation."""
    return {(method.upper(), path) for path, item in _document()["paths"].items() for method in item}


if __name__ == "__main__":
    print(json.dumps(_document(), indent=2, ensure_ascii=False))
