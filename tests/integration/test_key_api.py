"""The key API end to end: POST /api/v1/colorize with X-Api-Key over real HTTP against the running
Serve app (outputs, each add-on's effect, images as text, guidance)."""
from __future__ import annotations

import base64
import io
import json
import subprocess

import cv2
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


def test_the_contracts_curl_sample_answers_an_output_url(service, tmp_path):
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


def colorized(client, image: np.ndarray, **form: str) -> np.ndarray:
    """The service's output for ``image`` (sent as PNG, so the input is exact) as an RGB array."""
    response = client.post("/api/v1/colorize", files={"image": ("a.png", encode(image, "PNG"), "image/png")},
                           data=form)
    assert response.status_code == 200, response.text
    return np.asarray(fetch_png(client, response.json()["outputUrl"]).convert("RGB"))


def scratched_photo() -> tuple[np.ndarray, np.ndarray]:
    """A photo with a bright and a dark 1 px scratch, and where the scratches are."""
    clean = photo(160, 120, seed=3)
    scratched = clean.copy()
    cv2.line(scratched, (10, 20), (150, 100), (250, 250, 250), 1)
    cv2.line(scratched, (30, 110), (120, 5), (15, 15, 15), 1)
    return scratched, np.abs(scratched.astype(int) - clean).max(axis=2) > 0


def test_scratch_repair_replaces_only_the_scratches_before_colorizing(client, service):
    from pipeline.weights.settings import ModelRuntime
    from service.settings import load_settings
    from service.stages import stage

    scratched, scratches = scratched_photo()
    spec = stage("scratch_repair")  # the stage as the service loads it (LaMa inpainter of the demo models)
    repairer = spec.load(load_settings(service["args"]).stage_settings(spec),
                         ModelRuntime(cache_dir=service["storage"] / "cache"))
    mask = repairer.detect(scratched) > 0
    repaired = repairer.repair(scratched)
    assert mask[scratches].mean() > 0.9 and mask.mean() < 0.1  # found the scratches, and little else
    assert not np.array_equal(repaired[mask], scratched[mask])
    np.testing.assert_array_equal(repaired[~mask], scratched[~mask])

    served = colorized(client, scratched, model="tiny", clean_scratches="true")
    # The service colorized exactly the repaired photo: the same output as colorizing it directly
    # (within a level on a few pixels: LaMa's FFTs may round differently in the replica's threads).
    difference = np.abs(served.astype(int) - colorized(client, repaired, model="tiny"))
    assert difference.max() <= 2 and (difference > 0).mean() < 1e-3
    assert not np.array_equal(served, colorized(client, scratched, model="tiny"))  # without it: the scratches
    flags_in_capitals = colorized(client, scratched, model="tiny", clean_scratches="TRUE", face_remaster="false")
    np.testing.assert_array_equal(flags_in_capitals, served)


def test_face_remaster_leaves_a_photo_without_faces_as_colorized(client):
    image = photo(128, 96)
    np.testing.assert_array_equal(colorized(client, image, model="tiny", face_remaster="true"),
                                  colorized(client, image, model="tiny"))


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


def test_an_image_url_that_answers_404_is_400_with_its_reason(client, tmp_path):
    with FileServer(tmp_path, URL_SERVER_PORT) as base:
        missing = client.post("/api/v1/colorize", files={"image": (None, f"{base}/nope.jpg")})
    assert missing.status_code == 400 and missing.json() == {"detail": "image URL returned HTTP 404"}


def test_face_remaster_changes_only_the_face(client):
    from skimage import data

    portrait = np.asarray(Image.fromarray(data.astronaut()).convert("L").convert("RGB"))
    before = colorized(client, portrait, model="tiny").astype(int)
    after = colorized(client, portrait, model="tiny", face_remaster="true").astype(int)
    changed = np.abs(after - before).max(axis=2) > 0
    # MTCNN finds the astronaut's face at about x 179-268, y 58-174 (tests/unit/test_face_remaster.py):
    # the face itself is replaced, and every changed pixel lies within one face size of it.
    x0, y0, x1, y1 = 179, 58, 268, 174
    assert changed[y0 + 20:y1 - 20, x0 + 20:x1 - 20].mean() > 0.5, "the face stage left the face alone"
    near = np.zeros_like(changed)
    near[max(0, y0 - (y1 - y0)):y1 + (y1 - y0), max(0, x0 - (x1 - x0)):x1 + (x1 - x0)] = True
    assert not changed[~near].any() and changed.mean() < 0.2


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
