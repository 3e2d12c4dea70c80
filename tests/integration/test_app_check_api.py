"""The App Check API end to end over real HTTP: /health, /upload, /colorize, /download/{id},
/results/{f}, /uploads/{f}."""
from __future__ import annotations

import io
import json
import subprocess

import numpy as np
import pytest
from PIL import Image

from tests.helpers import encode, photo

pytestmark = pytest.mark.integration


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=120, check=True)


def test_health(service):
    body = json.loads(curl(f"{service['url']}/health").stdout)
    assert body["status"] == "healthy" and body["model_loaded"] is True
    assert body["models"]["large"]["loaded"] and body["models"]["tiny"]["loaded"]
    assert body["stages"]["scratch_repair"]["loaded"] and body["stages"]["face_remaster"]["loaded"]


def test_upload_then_public_file(service, tmp_path):
    image = tmp_path / "image.jpg"
    original = encode(photo(200, 100))
    image.write_bytes(original)
    body = json.loads(curl("-X", "POST", f"{service['url']}/upload", "-H", f"X-Firebase-AppCheck: {service['app_check']}",
                           "-F", f"file=@{image}").stdout)
    assert set(body) == {"success", "image_id", "image_url", "filename"} and body["success"] is True
    assert body["filename"] == f"{body['image_id']}.jpg"
    assert body["image_url"] == f"{service['url']}/uploads/{body['filename']}"
    fetched = subprocess.run(["curl", "-sS", "-D", "-", body["image_url"], "-o", str(tmp_path / "back.jpg")],
                             capture_output=True, text=True, timeout=60, check=True)
    assert "content-type: image/jpeg" in fetched.stdout.lower()
    assert (tmp_path / "back.jpg").read_bytes() == original  # stored as sent: nothing lost


def test_colorize_download_results(service, tmp_path):
    image = tmp_path / "grayscale_image.jpg"
    image.write_bytes(encode(photo(240, 135)))
    body = json.loads(curl("-X", "POST", f"{service['url']}/colorize", "-H", f"X-Firebase-AppCheck: {service['app_check']}",
                           "-F", f"file=@{image}").stdout)
    assert set(body) == {"success", "result_id", "download_url", "api_download_url", "filename"}
    assert body["filename"] == f"{body['result_id']}.jpg"
    assert body["download_url"] == f"{service['url']}/results/{body['filename']}"
    assert body["api_download_url"] == f"{service['url']}/download/{body['result_id']}"
    target = tmp_path / "colorized_image.jpg"
    curl("-X", "GET", body["api_download_url"], "-H", f"X-Firebase-AppCheck: {service['app_check']}", "-o", str(target))
    downloaded = Image.open(target)
    assert downloaded.format == "JPEG" and downloaded.size == (240, 135)  # aspect ratio preserved
    public = curl(body["download_url"]).stdout
    assert public == target.read_bytes()


def test_colorize_tiny_model(client):
    response = client.post("/colorize", files={"file": ("a.png", encode(photo(90, 60), "PNG"))},
                           data={"model": "tiny"})
    assert response.status_code == 200, response.text
    result = Image.open(io.BytesIO(client.get(response.json()["download_url"]).content))
    assert result.size == (90, 60)


@pytest.mark.parametrize(("path", "reason"), [("/download/00000000-0000-4000-8000-000000000000", "Result not found"),
                                            ("/results/missing.jpg", "File not found")])
def test_not_found(client, path, reason):
    response = client.get(path)
    assert response.status_code == 404 and response.json() == {"detail": reason}


def test_unknown_route_and_method(client):
    unknown = client.get("/nope")
    assert unknown.status_code == 404 and unknown.json() == {"detail": "Not Found"}
    response = client.get("/colorize")
    assert response.status_code == 405 and response.json() == {"detail": "Method Not Allowed"}
    assert "POST" in response.headers["allow"]


def test_formats(client):
    rgb = photo(64, 40)
    for fmt in ("WEBP", "TIFF", "BMP", "GIF"):
        data = encode(rgb, fmt)
        response = client.post("/colorize", files={"file": (f"x.{fmt.lower()}", data)})
        assert response.status_code == 200, (fmt, response.text)
    sixteen = Image.fromarray(np.asarray(rgb[..., 0], np.uint16) * 257)
    assert sixteen.mode == "I;16"
    buffer = io.BytesIO()
    sixteen.save(buffer, format="PNG")
    response = client.post("/colorize", files={"file": ("x16.png", buffer.getvalue())})
    assert response.status_code == 200, response.text


def test_one_request_id_per_response_and_a_client_id_is_kept(client):
    generated = client.get("/health")
    assert len(generated.headers.get_list("x-request-id")) == 1
    echoed = client.get("/no/such/route", headers={"X-Request-Id": "trace-0042"})
    assert echoed.status_code == 404 and echoed.headers.get_list("x-request-id") == ["trace-0042"]
