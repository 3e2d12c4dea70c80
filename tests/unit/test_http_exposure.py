"""What the HTTP app shows the public, in-process: no internals in /health or failures, links only
for trusted hosts, stored files never sniffed, admin details behind a token."""
from __future__ import annotations

import numpy as np
import pytest
from starlette.testclient import TestClient

from auth import OpenAccess
from service.app import build_http_app
from service.jobs import StageFailed
from service.settings import load_settings
from storage import LocalStore, StorageError, new_object_name
from tests.helpers import encode, photo

ARGS = {"colorizers": {"large": {"architecture": "ddcolor", "source": "/models/large"},
                       "tiny": {"architecture": "ddcolor", "source": "/models/tiny"}}}
INTERNAL = {"tiny": {"loaded": True, "architecture": "ddcolor", "source": "/secret/models/tiny", "node_id": "n1",
                     "batch_sizes": {"1": 5}},
            "large": {"loaded": False, "error": "FileNotFoundError: /secret/models/large/model.safetensors"},
            "scratch_repair": {"loaded": True, "inpainter": "OpenCV Telea"}, "face_remaster": {"loaded": False}}


class StandInRunner:
    """A runner whose stages report ``INTERNAL`` and whose jobs fail the way ``failure`` says."""

    def __init__(self, failure: Exception | None = None):
        self.failure = failure

    async def statuses(self, *, wait_s: float = 0.0):
        return INTERNAL

    async def require(self, plan):
        pass

    async def run(self, plan, image: np.ndarray) -> np.ndarray:
        if self.failure:
            raise self.failure
        return image


def client(tmp_path, runner=None, **overrides) -> TestClient:
    settings = load_settings({**ARGS, **overrides}, base_dir=tmp_path)
    store = LocalStore(tmp_path / "storage")
    app = build_http_app(settings, runner or StandInRunner(), store, OpenAccess())
    return TestClient(app, base_url="http://127.0.0.1:8000")


def test_health_says_what_is_loaded_and_nothing_else(tmp_path):
    body = client(tmp_path).get("/health").json()
    assert body == {"status": "healthy", "model_loaded": True,
                    "models": {"large": {"loaded": False}, "tiny": {"loaded": True}},
                    "stages": {"scratch_repair": {"loaded": True}, "face_remaster": {"loaded": False}}}


def test_admin_status_needs_the_admin_token(tmp_path, monkeypatch):
    http = client(tmp_path)
    monkeypatch.delenv("COLORIZE_ADMIN_TOKEN", raising=False)
    assert http.get("/admin/status").status_code == 404  # off unless a token is configured
    monkeypatch.setenv("COLORIZE_ADMIN_TOKEN", "s3cret-token")
    refused = http.get("/admin/status", headers={"Authorization": "Bearer wrong"})
    assert refused.status_code == 401 and set(refused.json()) == {"detail"}
    allowed = http.get("/admin/status", headers={"Authorization": "Bearer s3cret-token"})
    assert allowed.status_code == 200 and allowed.json() == {"stages": INTERNAL}


def test_a_failed_stage_answers_with_a_request_id_not_its_internals(tmp_path):
    failure = StageFailed("The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR")
    http = client(tmp_path, StandInRunner(failure))
    files = {"image": ("a.png", encode(photo(40, 30), "PNG"), "image/png")}
    answer = http.post("/api/v1/colorize", files=files, data={"model": "tiny"}, headers={"X-Request-Id": "abc123"})
    assert answer.status_code == 502
    assert answer.json() == {"detail": "processing failed on our side (request id abc123); retry later"}
    seed_003 = http.post("/colorize", files={"file": files["image"]}, data={"model": "tiny"})
    assert seed_003.status_code == 500 and "actor" not in seed_003.text.lower()


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example"])
def test_links_are_never_built_from_an_untrusted_host(tmp_path, host):
    http = client(tmp_path)
    answer = http.post("/api/v1/colorize", headers={"Host": host},
                       files={"image": ("a.png", encode(photo(40, 30), "PNG"), "image/png")})
    assert answer.status_code == 400 and answer.json() == {"detail": "Invalid host header"}
    assert "evil" not in answer.text
    assert not any((tmp_path / "storage" / "results").glob("*"))  # refused before any work


def test_with_a_public_base_url_links_use_it_whatever_the_host(tmp_path):
    http = client(tmp_path, public_base_url="https://colorize.example.com")
    answer = http.post("/api/v1/colorize", headers={"Host": "evil.example"},
                       files={"image": ("a.png", encode(photo(40, 30), "PNG"), "image/png")})
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputUrl"].startswith("https://colorize.example.com/results/")


def test_configured_hosts_are_the_only_ones(tmp_path):
    http = client(tmp_path, allowed_hosts=["colorize.internal", "*.example.org"])
    assert http.get("/health", headers={"Host": "colorize.internal"}).status_code == 200
    assert http.get("/health", headers={"Host": "a.example.org"}).status_code == 200
    assert http.get("/health", headers={"Host": "127.0.0.1"}).status_code == 400


def test_stored_files_are_never_sniffed(tmp_path):
    http = client(tmp_path)
    name = new_object_name("png")
    LocalStore(tmp_path / "storage").put("results", name, encode(photo(8, 8), "PNG"), "image/png")
    for path in (f"/results/{name}", f"/download/{name.split('.')[0]}"):
        answer = http.get(path)
        assert answer.status_code == 200 and answer.headers["X-Content-Type-Options"] == "nosniff", path


def test_every_response_has_one_request_id(tmp_path):
    http = client(tmp_path)
    generated = http.get("/health")
    assert len(generated.headers.get_list("X-Request-Id")) == 1
    assert http.get("/nope").json() == {"detail": "Not Found"}


def test_a_link_that_cannot_be_signed_is_a_502_not_a_bare_500(tmp_path):
    class UnsignableStore(LocalStore):
        """Stand-in fault: signing the result's link fails (e.g. a MinIO presign)."""

        def public_url(self, kind, name, service_base_url):
            raise StorageError("presign failed: s3.internal:9000 said no")

    settings = load_settings(ARGS, base_dir=tmp_path)
    http = TestClient(build_http_app(settings, StandInRunner(), UnsignableStore(tmp_path / "storage"), OpenAccess()),
                      base_url="http://127.0.0.1:8000")
    answer = http.post("/api/v1/colorize", files={"image": ("a.png", encode(photo(40, 30), "PNG"), "image/png")},
                       headers={"X-Request-Id": "r1"})
    assert answer.status_code == 502
    assert answer.json() == {"detail": "storage failed on our side (request id r1); retry later"}
