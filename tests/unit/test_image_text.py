"""pipeline.inputs.image_text: auto-detecting URL / base64 / data URL text images."""
from __future__ import annotations

import base64

import pytest

from pipeline.errors import ImageTooLargeError, InvalidImageError
from pipeline.inputs.image_text import parse_image_text

DATA = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


@pytest.mark.parametrize("text", [
    base64.b64encode(DATA).decode(),
    base64.b64encode(DATA).decode().rstrip("="),
    base64.urlsafe_b64encode(DATA).decode(),
    "\n".join(base64.encodebytes(DATA).decode().split("\n")),  # MIME line breaks
    "data:image/png;base64," + base64.b64encode(DATA).decode(),
    "DATA:image/png;charset=binary;base64," + base64.b64encode(DATA).decode(),
    "data:;base64," + base64.b64encode(DATA).decode(),
    "  data:image/png;base64," + base64.b64encode(DATA).decode() + "  ",
])
def test_inline_forms(text):
    assert parse_image_text(text, max_bytes=1 << 20).data == DATA


@pytest.mark.parametrize("text", ["http://example.com/a.jpg", "HTTPS://example.com/a.jpg?x=1", " https://e.com/ "])
def test_urls(text):
    assert parse_image_text(text, max_bytes=10).url == text.strip()


@pytest.mark.parametrize("text,message", [
    ("", "empty"), ("   ", "empty"), ("ftp://example.com/a.jpg", "http or https"),
    ("file:///etc/passwd", "http or https"), ("not base64 at all!", "not an http"),
    ("data:text/html;base64,PGI+", "not an image"), ("data:image/png,", "empty"), ("data:nonsense", "malformed"),
    ("a", "not valid base64"), ("====", "empty"),
])
def test_rejections(text, message):
    with pytest.raises(InvalidImageError, match=message):
        parse_image_text(text, max_bytes=1 << 20)


def test_size_cap():
    with pytest.raises(ImageTooLargeError):
        parse_image_text(base64.b64encode(b"x" * 5000).decode(), max_bytes=4000)
