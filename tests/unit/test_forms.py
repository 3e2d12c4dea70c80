"""service.contracts.forms: multipart parsing within limits (Starlette only, no Ray)."""
from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.requests import Request

from service.contracts.forms import ApiError, read_form


def request_for(files=None, data=None, *, chunk: int = 65536, headers: dict | None = None,
                body: bytes | None = None) -> Request:
    if body is None:
        built = httpx.Request("POST", "http://x/", files=files, data=data)
        body, headers = built.read(), {**dict(built.headers), **(headers or {})}
    chunks = [body[i:i + chunk] for i in range(0, len(body), chunk)] or [b""]

    async def receive():
        part = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": part, "more_body": bool(chunks)}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [
        (k.lower().encode(), v.encode()) for k, v in headers.items()]}
    return Request(scope, receive)


def parse(request: Request, max_bytes: int = 1 << 20, allowed=("image", "model", "flag")):
    return asyncio.run(read_form(request, max_bytes=max_bytes, allowed=allowed))


def test_file_and_text_fields():
    form = parse(request_for(files={"image": ("a.jpg", b"abc")}, data={"model": " tiny ", "flag": "TRUE"}))
    assert form.get("image").data == b"abc" and form.get("image").is_file
    assert form.choice("model", ("large", "tiny"), "large") == "tiny"
    assert form.flag("flag") is True and form.flag("missing") is False
    assert form.text("missing", "dflt") == "dflt"


@pytest.mark.parametrize("kwargs,status,message", [
    ({"files": {"image": ("a", b"x")}, "data": {"other": "1"}}, 400, "unknown field 'other'"),
    ({"files": [("image", ("a", b"x")), ("image", (None, "text"))]}, 400, "both a file and text"),
    ({"files": [("model", (None, "a")), ("model", (None, "b"))]}, 400, "sent twice"),
])
def test_rejections(kwargs, status, message):
    with pytest.raises(ApiError) as raised:
        parse(request_for(**kwargs))
    assert raised.value.status == status and message in raised.value.detail


def test_field_value_errors():
    form = parse(request_for(files={"image": ("a", b"x")}, data={"model": "huge", "flag": "yes"}))
    with pytest.raises(ApiError, match="one of large, tiny"):
        form.choice("model", ("large", "tiny"), "large")
    with pytest.raises(ApiError, match='"true" or "false"'):
        form.flag("flag")
    with pytest.raises(ApiError, match="text value, not a file"):
        form.text("image")


def test_size_limit_while_streaming_and_by_header():
    big = {"image": ("a", b"x" * 200_000)}
    streamed = request_for(files=big, chunk=4096)
    streamed.scope["headers"] = [h for h in streamed.scope["headers"] if h[0] != b"content-length"]
    with pytest.raises(ApiError) as raised:
        parse(streamed, max_bytes=100_000)
    assert raised.value.status == 413
    with pytest.raises(ApiError) as raised:
        parse(request_for(files=big), max_bytes=100_000)
    assert raised.value.status == 413


def test_not_multipart_and_malformed():
    with pytest.raises(ApiError, match="multipart/form-data"):
        parse(request_for(body=b"{}", headers={"content-type": "application/json"}))
    with pytest.raises(ApiError, match="invalid multipart"):
        parse(request_for(body=b"garbage", headers={"content-type": "multipart/form-data"}))


def test_seed_and_prompt_fields():
    form = parse(request_for(files={"image": ("a", b"x")}, data={"model": "12", "flag": "  a\n red\tcar  "}))
    assert form.integer("model", 0, 100) == 12 and form.integer("missing", 0, 1) is None
    assert form.prompt("flag") == "a red car"
    with pytest.raises(ApiError, match="whole number from 0 to 10"):
        form.integer("model", 0, 10)
    long = parse(request_for(files={"image": ("a", b"x")}, data={"model": "x" * 301}))
    with pytest.raises(ApiError, match="at most 300"):
        long.prompt("model")


def test_a_part_declared_as_an_image_is_a_file_even_without_a_filename():
    data = bytes(range(256))  # not valid UTF-8: read as text, it would be mangled
    form = parse(request_for(files={"image": (None, data, "image/jpeg"), "model": (None, "tiny", "text/plain")}))
    assert form.get("image").is_file and form.get("image").data == data
    assert form.text("model") == "tiny"


@pytest.mark.parametrize("value", ["²", "١٢", "-1", "1.5", str(2**32)])
def test_integers_are_plain_ascii_digits_within_range(value):
    form = parse(request_for(files={"image": ("a", b"x")}, data={"model": value}))
    with pytest.raises(ApiError, match="whole number"):
        form.integer("model", 0, 2**32 - 1)
