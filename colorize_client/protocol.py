"""The key API's wire format, without I/O: request fields, Idempotency-Keys, and answers
turned into results or typed errors. Shared by the sync and async clients."""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import httpx

from .errors import ColorizeError, ServerError, error_for_status

COLORIZE_PATH = "/api/v1/colorize"
ACCOUNT_PATH = "/api/v1/account"
PRICING_PATH = "/api/v1/pricing"
MODELS = ("large", "tiny")
MAX_IDEMPOTENCY_KEY_CHARS = 255
# Derived keys are versioned: a change in how they are made must never map new requests onto old keys.
DERIVED_KEY_PREFIX = "photo-v1-"
# The seed's published price table, used only when the service has no /api/v1/pricing.
SEED_PRICES = {"models": {"large": 1, "tiny": 1}, "addOns": {"clean_scratches": 1, "face_remaster": 2}}

ImageInput = Union[str, bytes, os.PathLike]

_SIGNATURES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF87a", "image/gif"),
               (b"GIF89a", "image/gif"), (b"BM", "image/bmp"), (b"II*\x00", "image/tiff"), (b"MM\x00*", "image/tiff"))


def sniff_image_type(head: bytes) -> str | None:
    """The content type of an image format the service decodes, from the file's first 12 bytes."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for signature, kind in _SIGNATURES if head.startswith(signature)), None)


@dataclass(frozen=True)
class Options:
    """Everything besides the image that changes the result (and so the price and the key)."""
    model: str = "large"
    clean_scratches: bool = False
    face_remaster: bool = False
    prompt: str | None = None
    seed: int | None = None

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, not {self.model!r}")
        if self.seed is not None and not 0 <= self.seed <= 2**32 - 1:
            raise ValueError("seed must be from 0 to 4294967295")

    def fields(self) -> dict[str, str]:
        """Text form fields. Always the same fields for the same options: the service fingerprints
        them, and a retry under the same Idempotency-Key must match the first request exactly."""
        fields = {"model": self.model, "clean_scratches": _flag(self.clean_scratches),
                  "face_remaster": _flag(self.face_remaster)}
        if self.prompt is not None:
            fields["prompt"] = self.prompt
        if self.seed is not None:
            fields["seed"] = str(self.seed)
        return fields


@dataclass(frozen=True)
class Upload:
    """One image ready to send: file bytes, or text (an http(s) URL, base64 or a data URL)."""
    data: bytes | None = None
    text: str | None = None
    filename: str = "image"

    @classmethod
    def of(cls, image: ImageInput) -> Upload:
        if isinstance(image, bytes):
            return cls(data=image)
        if isinstance(image, str) and image.startswith(("http://", "https://", "data:")):
            return cls(text=image)
        path = Path(image)
        return cls(data=path.read_bytes(), filename=path.name)

    def multipart(self, options: Options) -> tuple[bytes, str]:
        """The form as one buffer and its content type. Built here rather than by httpx, which streams
        a form in many small chunks: one write per part header and value, each a packet the service's
        proxy must read and parse (measured: about 46 socket writes per photo instead of 1)."""
        boundary = uuid.uuid4().hex  # 128 random bits: never inside the image by chance
        chunks = [_part(boundary, name, value.encode()) for name, value in options.fields().items()]
        if self.data is not None:
            kind = sniff_image_type(self.data[:12]) or "application/octet-stream"
            chunks.append(_part(boundary, "image", self.data, filename=self.filename, content_type=kind))
        else:  # text (a URL, base64, a data URL) goes as a plain field
            chunks.append(_part(boundary, "image", (self.text or "").encode()))
        chunks.append(f"--{boundary}--\r\n".encode())
        return b"".join(chunks), f"multipart/form-data; boundary={boundary}"

    def derived_key(self, options: Options) -> str:
        """An Idempotency-Key made from the image and the options: the same photo sent again with
        the same options (a retry, or a re-run) is the same request, replayed and charged once."""
        digest = hashlib.sha256(b"colorize-client photo v1\0")
        digest.update(json.dumps(options.fields(), sort_keys=True).encode() + b"\0")
        digest.update(b"data\0" + self.data if self.data is not None else b"text\0" + (self.text or "").encode())
        return DERIVED_KEY_PREFIX + digest.hexdigest()


@dataclass
class ColorizeResult:
    output_url: str
    idempotency_key: str
    request_id: str | None = None
    credits_remaining: int | None = None  # the key's balance after this job, when the service says
    attempts: int = 1
    image: bytes | None = None            # the colorized PNG, when asked for (download=True)


@dataclass(frozen=True)
class Account:
    key_id: str
    name: str | None
    credits: int
    rate_per_second: float | None = None
    burst: int | None = None


@dataclass(frozen=True)
class Pricing:
    models: dict[str, int]
    add_ons: dict[str, int] = field(default_factory=dict)
    unit: str = "credits"
    published: bool = True  # False: the service has no /api/v1/pricing and the seed's table is assumed

    def price(self, options: Options) -> int:
        return (self.models.get(options.model, 1) + self.add_ons.get("clean_scratches", 0) * options.clean_scratches
                + self.add_ons.get("face_remaster", 0) * options.face_remaster)

    @classmethod
    def seed_table(cls) -> Pricing:
        return cls(dict(SEED_PRICES["models"]), dict(SEED_PRICES["addOns"]), published=False)


def _part(boundary: str, name: str, value: bytes, *, filename: str | None = None,
          content_type: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        quoted = filename.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
        disposition += f'; filename="{quoted}"'
    head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    return head.encode() + b"\r\n" + value + b"\r\n"


def _flag(value: bool) -> str:
    return "true" if value else "false"


def request_id(response: httpx.Response) -> str | None:
    return response.headers.get("x-request-id")


def credits_remaining(response: httpx.Response) -> int | None:
    value = response.headers.get("x-credits-remaining", "").strip()
    return int(value) if value.lstrip("-").isdigit() else None


def retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (the service sends whole seconds; an HTTP date is not used by it)."""
    value = response.headers.get("retry-after", "").strip()
    try:
        return max(float(value), 0.0) if value else None
    except ValueError:
        return None


def raise_for_error(response: httpx.Response) -> None:
    """A typed error for any non-2xx answer, with the service's ``detail``."""
    if response.is_success:
        return
    detail = service_detail(response)
    raise error_for_status(response.status_code, detail or response.text.strip()[:200] or response.reason_phrase
                           or f"HTTP {response.status_code}", request_id=request_id(response),
                           retry_after=retry_after(response), service_shape=detail is not None)


def service_detail(response: httpx.Response) -> str | None:
    """The ``detail`` of the service's own error shape ({"detail": "..."}), or None when the answer
    is not in it (it came from something in front of the application, e.g. Serve's proxy)."""
    try:
        body = response.json()
    except ValueError:
        return None
    return str(body["detail"]) if isinstance(body, dict) and "detail" in body else None


def json_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ServerError(f"expected a JSON object from {response.request.url.path}",
                          status=response.status_code, request_id=request_id(response))
    return body


def colorize_result(response: httpx.Response, key: str) -> ColorizeResult:
    raise_for_error(response)
    url = json_body(response).get("outputUrl")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ServerError("the answer has no outputUrl", status=response.status_code, request_id=request_id(response))
    return ColorizeResult(url, key, request_id(response), credits_remaining(response))


def account(response: httpx.Response) -> Account:
    raise_for_error(response)
    body = json_body(response)
    limit = body.get("rateLimit") or {}
    try:  # a key without a rate of its own has the service's default, which may be reported as null
        return Account(str(body["keyId"]), body.get("name"), int(body["credits"]),
                       float(limit["perSecond"]) if limit.get("perSecond") is not None else None,
                       int(limit["burst"]) if limit.get("burst") is not None else None)
    except (KeyError, TypeError, ValueError):
        raise ServerError("unexpected /api/v1/account answer", status=response.status_code,
                          request_id=request_id(response)) from None


def pricing(response: httpx.Response) -> Pricing:
    if response.status_code == 404 and service_detail(response) is not None:
        return Pricing.seed_table()  # a service from before the endpoint: the seed's published table
    raise_for_error(response)
    body = json_body(response)
    try:
        return Pricing({str(k): int(v) for k, v in body["models"].items()},
                       {str(k): int(v) for k, v in (body.get("addOns") or {}).items()}, str(body.get("unit", "credits")))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ServerError("unexpected /api/v1/pricing answer", status=response.status_code,
                          request_id=request_id(response)) from None


def check_idempotency_key(key: str) -> str:
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_CHARS:
        raise ValueError(f"an Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters")
    return key


def downloaded(response: httpx.Response) -> bytes:
    if not response.is_success:
        raise error_for_status(response.status_code, f"downloading the result failed: HTTP {response.status_code}",
                               request_id=request_id(response), retry_after=retry_after(response))
    return response.content


__all__ = ["Account", "ColorizeError", "ColorizeResult", "Options", "Pricing", "Upload"]
