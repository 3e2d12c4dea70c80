"""Every bad input gets a clear 4xx with {"detail": ...}; nothing is stored for it."""
from __future__ import annotations

import base64
import io
import zlib
import struct

import numpy as np
import pytest
from PIL import Image

from tests.helpers import encode, photo

pytestmark = pytest.mark.integration

JPEG = encode(photo(64, 48))


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge canvas (all-zero rows compress to almost nothing)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = zlib.compress(b"\x00" * (width + 1) * height, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", raw) + chunk(b"IEND", b"")


CASES = {
    "file and text image": ({"image": [("a.jpg", JPEG, "image/jpeg"), (None, "http://example.com/x.jpg")]}, 400),
    "missing image": ({"model": (None, "large")}, 400),
    "empty file": ({"image": ("a.jpg", b"", "image/jpeg")}, 400),
    "not an image": ({"image": ("a.jpg", b"hello, world" * 50, "image/jpeg")}, 400),
    "truncated jpeg": ({"image": ("a.jpg", JPEG[: len(JPEG) // 2], "image/jpeg")}, 400),
    "bad model": ({"image": ("a.jpg", JPEG), "model": (None, "huge")}, 400),
    "bad flag": ({"image": ("a.jpg", JPEG), "clean_scratches": (None, "yes")}, 400),
    "unknown field": ({"image": ("a.jpg", JPEG), "modle": (None, "tiny")}, 400),
    "model as file": ({"image": ("a.jpg", JPEG), "model": ("m.txt", b"tiny")}, 400),
    "bad base64": ({"image": (None, "!!!not base64!!!")}, 400),
    "data url not image": ({"image": (None, "data:text/html;base64,PGgxPmhpPC9oMT4=")}, 400),
    "ftp url": ({"image": (None, "ftp://example.com/a.jpg")}, 400),
    "private url": ({"image": (None, "http://10.0.0.1/a.jpg")}, 400),
    "base64 of text": ({"image": (None, base64.b64encode(b"just text, no image").decode())}, 400),
    "decompression bomb": ({"image": ("bomb.png", png_bomb(6000, 6000), "image/png")}, 400),
    "negative seed": ({"image": ("a.jpg", JPEG), "seed": (None, "-1")}, 400),
    "seed too big": ({"image": ("a.jpg", JPEG), "seed": (None, str(2**32))}, 400),
    "seed as a superscript digit": ({"image": ("a.jpg", JPEG), "seed": (None, "²")}, 400),
    "prompt too long": ({"image": ("a.jpg", JPEG), "prompt": (None, "x" * 301)}, 400),
    "prompt with control chars": ({"image": ("a.jpg", JPEG), "prompt": (None, "red\x00car")}, 400),
    "svg": ({"image": ("a.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml")}, 400),
}


def files_stored(service) -> int:
    return sum(1 for path in service["storage"].rglob("*") if path.is_file())


@pytest.mark.parametrize("name", list(CASES))
def test_bad_v1_input(client, service, name):
    fields, status = CASES[name]
    files = [(key, value) for key, values in fields.items()
             for value in (values if isinstance(values, list) else [values])]
    before = files_stored(service)
    response = client.post("/api/v1/colorize", files=files)
    assert response.status_code == status, (name, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    assert files_stored(service) == before


def test_not_multipart(client):
    response = client.post("/api/v1/colorize", json={"image": "x"})
    assert response.status_code == 400 and "multipart" in response.json()["detail"]
    garbage = client.post("/colorize", content=b"--x\r\nnonsense",
                          headers={"content-type": "multipart/form-data; boundary=x"})
    assert garbage.status_code == 400


def test_body_too_large(client, service):
    big = np.random.default_rng(0).integers(0, 255, (1200, 1200, 3), dtype=np.uint8)  # ~4 MB PNG > 2 MB limit
    before = files_stored(service)
    response = client.post("/api/v1/colorize", files={"image": ("big.png", encode(big, "PNG"), "image/png")})
    assert response.status_code == 413 and "MB" in response.json()["detail"]
    upload = client.post("/upload", files={"file": ("big.png", encode(big, "PNG"), "image/png")})
    assert upload.status_code == 413
    assert files_stored(service) == before


def test_too_many_pixels_in_a_real_image(client):
    wide = Image.new("L", (4000, 1001))  # 4.004 MP > the 4 MP limit of the test config
    buffer = io.BytesIO()
    wide.save(buffer, format="PNG")
    response = client.post("/colorize", files={"file": ("wide.png", buffer.getvalue())})
    assert response.status_code == 400 and "pixels" in response.json()["detail"]


@pytest.mark.parametrize("route,field", [("/upload", "file"), ("/colorize", "file")])
def test_seed_003_bad_files(client, route, field):
    assert client.post(route, files={"other": ("a.jpg", JPEG)}).status_code == 400
    assert client.post(route, files={field: (None, "text, not a file")}).status_code == 400
    assert client.post(route, files={field: ("a.txt", b"not an image")}).status_code == 400
