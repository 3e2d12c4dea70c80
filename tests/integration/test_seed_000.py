"""Seed 000: POST /api/v1/colorize over real HTTP against the running Serve app."""
from __future__ import annotations

import base64
import io
import json
import subprocess

import numpy as np
import pytest
from PIL import Image

from tests.helpers import FileServer, encode, photo
from tests.integration.conftest import URL_SERVER_PORT

pytestmark = pytest.mark.integration


def fetch_png(client, url: str) -> Image.Image:
    response = client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def test_seed_curl_command(service, tmp_path):
    """The seed's own curl sample, pointed at this service."""
    source = tmp_path / "file.jpg"
    source.write_bytes(encode(photo(300, 170)))
    out = subprocess.run(
        ["curl", "-sS", "-X", "POST", "-H", f"X-Api-Key: {service['api_key']}",
         "-F", f"image=@{source}", "-F", "model=large", f"{service['url']}/api/v1/colorize"],
        capture_output=True, text=True, timeout=120, check=True)
    body = json.loads(out.stdout)
    assert list(body) == ["outputUrl"]
    assert body["outputUrl"].startswith(service["url"] + "/results/") and body["outputUrl"].endswith(".png")


def test_output_keeps_size_and_lightness(client):
    original = photo(300, 170)
    response = client.post("/api/v1/colorize", files={"image": ("a.png", encode(original, "PNG"), "image/png")},
                           data={"model": "tiny"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    result = np.asarray(fetch_png(client, response.json()["outputUrl"]).convert("RGB"))
    assert result.shape == original.shape  # original size and aspect ratio
    # Colorization keeps the full-resolution lightness: the greyscale of the output tracks the input.
    grey = np.asarray(Image.fromarray(result).convert("L"), dtype=np.float32)
    assert np.corrcoef(grey.ravel(), original[..., 0].astype(np.float32).ravel())[0, 1] > 0.95


@pytest.mark.parametrize("form", [
    {"model": "large", "clean_scratches": "true"},
    {"model": "tiny", "face_remaster": "true"},
    {"model": "tiny", "clean_scratches": "TRUE", "face_remaster": "false"},
    {"model": "large", "prompt": "a red barn under a blue sky", "seed": "42"},
])
def test_add_ons(client, form):
    response = client.post("/api/v1/colorize", files={"image": ("a.jpg", encode(photo(128, 96)), "image/jpeg")},
                           data=form)
    assert response.status_code == 200, response.text
    assert fetch_png(client, response.json()["outputUrl"]).size == (128, 96)


def test_alpha_is_kept(client):
    rgba = np.dstack([photo(64, 48), np.full((48, 64), 128, np.uint8)])
    response = client.post("/api/v1/colorize", files={"image": ("a.png", encode(rgba, "PNG"), "image/png")})
    assert response.status_code == 200, response.text
    result = fetch_png(client, response.json()["outputUrl"])
    assert result.mode == "RGBA" and np.asarray(result)[..., 3].max() == 128


@pytest.mark.parametrize("encoding", ["base64", "data_url", "url"])
def test_image_as_text(client, tmp_path, encoding):
    data = encode(photo(120, 80))
    if encoding == "url":
        (tmp_path / "photo.jpg").write_bytes(data)
        with FileServer(tmp_path, URL_SERVER_PORT) as base:
            response = client.post("/api/v1/colorize", files={"image": (None, f"{base}/photo.jpg")})
    else:
        text = base64.b64encode(data).decode()
        value = text if encoding == "base64" else f"data:image/jpeg;base64,{text}"
        response = client.post("/api/v1/colorize", files={"image": (None, value)})
    assert response.status_code == 200, response.text
    assert fetch_png(client, response.json()["outputUrl"]).size == (120, 80)


def test_url_input_errors(client, tmp_path):
    with FileServer(tmp_path, URL_SERVER_PORT) as base:
        missing = client.post("/api/v1/colorize", files={"image": (None, f"{base}/nope.jpg")})
    assert missing.status_code == 400 and "404" in missing.json()["detail"]
    blocked = client.post("/api/v1/colorize", files={"image": (None, "http://169.254.169.254/latest/meta-data")})
    assert blocked.status_code == 400
    loopback = client.post("/api/v1/colorize", files={"image": (None, "http://localhost:1/x.jpg")})
    assert loopback.status_code == 400


def test_face_remaster_changes_only_the_face(client):
    from skimage import data

    portrait = np.asarray(Image.fromarray(data.astronaut()).convert("L").convert("RGB"))
    upload = {"image": ("astronaut.png", encode(portrait, "PNG"), "image/png")}
    plain = client.post("/api/v1/colorize", files=upload, data={"model": "tiny"})
    remastered = client.post("/api/v1/colorize", files=upload, data={"model": "tiny", "face_remaster": "true"})
    assert plain.status_code == remastered.status_code == 200
    before = np.asarray(fetch_png(client, plain.json()["outputUrl"]).convert("RGB")).astype(int)
    after = np.asarray(fetch_png(client, remastered.json()["outputUrl"]).convert("RGB")).astype(int)
    changed = np.abs(after - before).max(axis=2) > 0
    ys, xs = np.nonzero(changed)
    assert changed.any(), "the face stage changed nothing"
    # The astronaut's face is roughly x 160-260, y 40-170 in the 512x512 picture.
    assert 120 < xs.mean() < 300 and 20 < ys.mean() < 200 and changed.mean() < 0.25


def test_seed_makes_text_guided_output_reproducible(client):
    upload = {"image": ("a.jpg", encode(photo(96, 64)), "image/jpeg")}
    outputs = []
    for seed in ("7", "7", "8"):
        response = client.post("/api/v1/colorize", files=upload,
                               data={"model": "large", "prompt": "a green field", "seed": seed})
        assert response.status_code == 200, response.text
        outputs.append(np.asarray(fetch_png(client, response.json()["outputUrl"])))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[0], outputs[2])
