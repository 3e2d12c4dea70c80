"""Reading requests: the caller's address, multipart bodies within limits, typed access to fields."""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from pipeline.inputs.prompts import InvalidPromptError, validate_prompt

from ..errors import ApiError


def client_address(request: Request) -> str | None:
    """The peer's address (failed authentications are throttled per address)."""
    return request.client.host if request.client else None


@dataclass(frozen=True)
class FormPart:
    value: str | None = None     # a text part
    data: bytes | None = None    # a file part's content

    @property
    def is_file(self) -> bool:
        return self.data is not None


class Form:
    def __init__(self, parts: dict[str, FormPart]):
        self._parts = parts

    def get(self, name: str) -> FormPart | None:
        return self._parts.get(name)

    def items(self) -> list[tuple[str, bytes | str]]:
        return [(name, part.data if part.is_file else part.value) for name, part in self._parts.items()]

    def text(self, name: str, default: str | None = None) -> str | None:
        part = self._parts.get(name)
        if part is None:
            return default
        if part.is_file:
            raise ApiError(400, f"field '{name}' must be a text value, not a file")
        return part.value.strip() or default

    def flag(self, name: str) -> bool:
        value = self.text(name)
        if value is None:
            return False
        if value.lower() not in ("true", "false"):
            raise ApiError(400, f"field '{name}' must be \"true\" or \"false\", got {value[:40]!r}")
        return value.lower() == "true"

    def integer(self, name: str, low: int, high: int) -> int | None:
        value = self.text(name)
        if value is None:
            return None
        # ASCII only: str.isdigit() also admits digits int() refuses ("²" was a 500).
        if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
            raise ApiError(400, f"field '{name}' must be a whole number from {low} to {high}")
        return int(value)

    def prompt(self, name: str = "prompt") -> str | None:
        try:
            return validate_prompt(self.text(name))  # the colorizer's own rules, checked before any work
        except InvalidPromptError as exc:
            raise ApiError(400, f"field '{name}': {exc}") from None

    def choice(self, name: str, options: tuple[str, ...], default: str) -> str:
        value = self.text(name, default)
        if value not in options:
            raise ApiError(400, f"field '{name}' must be one of {', '.join(options)}; got {value[:40]!r}")
        return value


async def read_form(request: Request, *, max_bytes: int, allowed: tuple[str, ...]) -> Form:
    """Parse multipart/form-data, refusing bodies over ``max_bytes`` (413) while streaming."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(400, "send multipart/form-data (e.g. curl -F 'image=@photo.jpg')")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"request body is larger than {max_bytes // (1 << 20)} MB")
    parser = _FilePartsParser(request.headers, _limited(request, max_bytes),
                              max_files=4, max_fields=16, max_part_size=max_bytes)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, f"invalid multipart body: {exc.message}") from None
    except ClientDisconnect:
        raise ApiError(400, "client disconnected before the body was complete") from None
    try:
        return await _collect(form.multi_items(), allowed)
    finally:
        await form.close()


class _FilePartsParser(MultiPartParser):
    """Starlette reads every part without a filename as text, even image bytes sent with
    ``Content-Type: image/jpeg``; RFC 7578 makes the filename optional (Python's ``requests``
    with ``(None, data, "image/jpeg")`` sends no filename). Here a part declared as anything but
    text is a file."""

    def on_headers_finished(self) -> None:
        part = self._current_part
        declared = dict(part.item_headers).get(b"content-type", b"").split(b";")[0].strip().lower()
        if part.content_disposition is not None and declared and not declared.startswith(b"text/") \
                and b"filename" not in parse_options_header(part.content_disposition)[1]:
            part.content_disposition += b'; filename=""'
        super().on_headers_finished()


async def _limited(request: Request, max_bytes: int) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise ApiError(413, f"request body is larger than {max_bytes // (1 << 20)} MB")
        yield chunk


async def _collect(items, allowed: tuple[str, ...]) -> Form:
    parts: dict[str, FormPart] = {}
    for name, value in items:
        if name not in allowed:
            raise ApiError(400, f"unknown field '{name[:40]}'; this route accepts: {', '.join(allowed)}")
        if name in parts:
            both = parts[name].is_file != isinstance(value, UploadFile)
            raise ApiError(400, f"field '{name}' was sent twice" + (" (both a file and text)" if both else ""))
        if isinstance(value, UploadFile):
            parts[name] = FormPart(data=await value.read())
        else:
            parts[name] = FormPart(value=value)
    return Form(parts)
