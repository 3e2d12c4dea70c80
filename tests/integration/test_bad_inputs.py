"""Bad inputs end to end through real Serve: the refusal crosses the proxy as a 4xx with its
``{"detail"}`` reason, and nothing is stored for it.

Every documented error of both contracts is checked in-process in seconds
(tests/unit/test_key_api_errors.py, test_app_check_api_errors.py); these few keep the path
through the Serve proxy and the ingress replica honest (streamed bodies, decoding in a replica).
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import encode, photo, png_bomb

pytestmark = pytest.mark.integration

JPEG = encode(photo(64, 48))


def files_stored(service) -> int:
    return sum(1 for path in service["storage"].rglob("*") if path.is_file())


@pytest.mark.parametrize(("image", "reason"), [
    (("a.jpg", b"hello, world" * 50, "image/jpeg"), "image is not a supported format"),
    (("bomb.png", png_bomb(6000, 6000), "image/png"), "image is 6000x6000 = 36000000 pixels; the limit is 4000000"),
    ((None, "http://10.0.0.1/a.jpg"), "image URL host '10.0.0.1' resolves to a private address"),
])
def test_key_api_bad_image_is_400_with_its_reason(client, service, image, reason):
    before = files_stored(service)
    response = client.post("/api/v1/colorize", files={"image": image})
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith(reason)
    assert files_stored(service) == before


def test_body_too_large_on_both_contracts(client, service):
    big = np.random.default_rng(0).integers(0, 255, (1200, 1200, 3), dtype=np.uint8)  # ~4 MB PNG > 2 MB limit
    before = files_stored(service)
    for route, field in (("/api/v1/colorize", "image"), ("/upload", "file")):
        response = client.post(route, files={field: ("big.png", encode(big, "PNG"), "image/png")})
        assert response.status_code == 413 and response.json() == {"detail": "request body is larger than 2 MB"}
    assert files_stored(service) == before


@pytest.mark.parametrize("route", ["/upload", "/colorize"])
def test_app_check_api_file_that_is_not_an_image_is_400(client, service, route):
    before = files_stored(service)
    response = client.post(route, files={"file": ("a.txt", b"not an image")})
    assert response.status_code == 400 and response.json()["detail"].startswith("image is not a supported format")
    assert files_stored(service) == before
