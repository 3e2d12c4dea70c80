"""Every documented error of the App Check API (/health, /upload, /colorize, /download/{id},
/results/..., /uploads/...) and of routing, in-process: status, ``{"detail"}`` reason, headers, and
that nothing is stored on failure.

The app is the shipped one over real stages, a real App Check verifier and a real store
(tests/in_process.py); the few faults that need a stand-in say so by their class names.
"""
from __future__ import annotations

import re

import pytest

from auth import AppCheckSettings, AuthSettings
from auth.app_check import APP_CHECK_DENIED
from auth.policy import APP_CHECK_NOT_CONFIGURED
from pipeline.weights.settings import ModelRuntime
from tests.helpers import encode, photo
from tests.in_process import CrashingStage, FailingDiskStore, FullQueueStage, InProcessStage, app_settings
from tests.unit.test_key_api_errors import assert_refused

pytestmark = pytest.mark.timeout(60)

JPEG = encode(photo(48, 32))
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def service(start):
    return start()


@pytest.fixture
def token(signing_keys) -> dict[str, str]:
    return {"X-Firebase-AppCheck": signing_keys.token()}


def send(service, route: str, headers: dict, parts: list | None = None, **form: str):
    """POST ``route`` as multipart: ``parts`` (default: the photo as `file`), then text fields;
    no parts at all is a multipart body with no parts."""
    files = [("file", ("a.jpg", JPEG))] if parts is None else parts
    files += [(name, (None, value)) for name, value in form.items()]
    if not files:
        return service.client.post(route, content=b"--empty--\r\n", headers={
            **headers, "content-type": "multipart/form-data; boundary=empty"})
    return service.client.post(route, files=files, headers=headers)


def test_the_good_requests_store_what_they_answer(service, token):
    """The baseline the refusals below are measured against: this setup does store."""
    upload = send(service, "/upload", token)
    colorized = send(service, "/colorize", token, model="tiny")
    assert upload.status_code == colorized.status_code == 200, (upload.text, colorized.text)
    assert service.stored() == sorted([f"uploads/{upload.json()['filename']}",
                                       f"results/{colorized.json()['filename']}"])
    download = service.client.get(f"/download/{colorized.json()['result_id']}", headers=token)
    assert download.status_code == 200 and download.headers["content-type"] == "image/jpeg"


# --- 400 -------------------------------------------------------------------------------------------

BAD_FORMS = {  # name: (parts, the reason the client reads)
    "file missing": ([], "field 'file' is required and must be an image file"),
    "file sent as text": ([("file", (None, "text, not a file"))], "field 'file' is required and must be an image file"),
    "file not an image": ([("file", ("a.txt", b"not an image"))], re.compile(r"image is not a supported format \(.*\)")),
    "unknown field": ([("other", ("a.jpg", JPEG))], re.compile(r"unknown field 'other'; this route accepts: .+")),
}


@pytest.mark.parametrize("route", ["/upload", "/colorize"])
@pytest.mark.parametrize("case", list(BAD_FORMS))
def test_a_bad_form_is_400_with_its_reason(service, token, route, case):
    parts, reason = BAD_FORMS[case]
    assert_refused(send(service, route, token, list(parts)), 400, reason)
    assert service.stored() == []


def test_colorize_options_are_checked_and_the_body_must_be_multipart(service, token):
    assert_refused(send(service, "/colorize", token, model="huge"), 400,
                   "field 'model' must be one of large, tiny; got 'huge'")
    assert_refused(send(service, "/colorize", token, model="tiny", seed="-1"), 400,
                   "field 'seed' must be a whole number from 0 to 4294967295")
    assert_refused(service.client.post("/upload", json={"file": "x"}, headers=token), 400,
                   "send multipart/form-data (e.g. curl -F 'image=@photo.jpg')")
    assert service.stored() == []


# --- 401 -------------------------------------------------------------------------------------------

def test_a_missing_or_invalid_app_check_token_is_401_on_every_protected_route(service, signing_keys):
    tokens = {"missing": None, "garbage": "garbage", "expired": signing_keys.token(exp=1),
              "no expiry": signing_keys.token(drop=("exp",)),
              "another project": signing_keys.token(aud=["projects/someone-else"])}
    for name, value in tokens.items():
        headers = {"X-Firebase-AppCheck": value} if value else {}
        for response in (send(service, "/upload", headers), send(service, "/colorize", headers, model="tiny"),
                         service.client.get(f"/download/{UNKNOWN_ID}", headers=headers)):
            assert_refused(response, 401, APP_CHECK_DENIED)
    assert service.stored() == []


# --- 404 -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "reason"), [
    (f"/download/{UNKNOWN_ID}", "Result not found"),
    ("/download/not-a-uuid", "Result not found"),
    (f"/results/{UNKNOWN_ID}.jpg", "File not found"),
    ("/results/missing.jpg", "File not found"),
    ("/uploads/..%2f..%2fetc%2fpasswd", "Not Found"),  # decoded to several path segments: no route matches
    ("/results/%2e%2e/secret.png", "Not Found"),
    ("/uploads/.hidden.jpg", "File not found"),  # not a name the service could have issued
])
def test_an_unknown_id_or_file_is_404(service, token, path, reason):
    assert_refused(service.client.get(path, headers=token), 404, reason)


# --- 413 -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("route", ["/upload", "/colorize"])
def test_a_body_over_the_limit_is_413(service, token, route):
    big = [("file", ("big.png", b"\x89PNG" + b"\0" * (1 << 20)))]
    assert_refused(send(service, route, token, big), 413, "request body is larger than 1 MB")
    assert service.stored() == []


# --- 500 -------------------------------------------------------------------------------------------

def test_a_stage_that_fails_is_500(start, token):
    service = start(stages={"tiny": CrashingStage("stand-in fault: the stage crashed")})
    assert_refused(send(service, "/colorize", token, model="tiny"), 500,
                   re.compile(r"processing failed on our side \(request id \w+\); retry later"))
    assert service.stored() == []


@pytest.mark.parametrize("route", ["/upload", "/colorize"])
def test_storage_that_fails_is_500(start, token, route):
    service = start(store=FailingDiskStore)
    assert_refused(send(service, route, token, **({"model": "tiny"} if route == "/colorize" else {})), 500,
                   "could not store the image; retry later")
    assert service.stored() == []


def test_an_unexpected_failure_is_500_quoting_the_request_id(start, token):
    class BuggyStore(FailingDiskStore):
        """Fault stand-in: a store with a bug (not a StorageError), which no table row maps."""
        def get(self, kind, name):
            raise KeyError(name)

    service = start(store=BuggyStore)
    response = service.client.get(f"/download/{UNKNOWN_ID}", headers=token)
    request_id = response.headers["x-request-id"]
    assert_refused(response, 500, f"internal error (request id {request_id})")
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)


# --- 503 -------------------------------------------------------------------------------------------

def test_a_model_not_loaded_is_503(service, token):
    assert_refused(send(service, "/colorize", token), 503, "the 'large' colorization model is not loaded")  # default
    assert service.stored() == []


def test_health_is_503_when_no_colorizer_is_loaded(start, tmp_path, tiny_models, signing_keys):
    from tests.auth_fixtures import PROJECT_ID

    missing = app_settings(tiny_models, tmp_path, signing_keys.jwks_url, PROJECT_ID,
                           colorizers={"tiny": {"architecture": "ddcolor", "source": str(tmp_path / "gone")},
                                       "large": {"architecture": "ddcolor", "source": str(tmp_path / "gone")}})
    service = start(stages={"tiny": InProcessStage("tiny", missing, ModelRuntime(cache_dir=tmp_path / "cache"))})
    response = service.client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy" and body["model_loaded"] is False
    assert body["detail"] == "Model not loaded: no colorization model is available"
    assert body["models"] == {"tiny": {"loaded": False}, "large": {"loaded": False}}  # why: /admin/status


def test_a_full_queue_is_503_with_retry_after(start, token):
    service = start(stages={"tiny": FullQueueStage()})
    assert_refused(send(service, "/colorize", token, model="tiny"), 503, "server is busy; retry shortly",
                   Retry_After="2")
    assert service.stored() == []


def test_storage_that_cannot_be_read_is_503_with_retry_after(start, token):
    service = start(store=lambda root: FailingDiskStore(root, reads=True))
    for path in (f"/download/{UNKNOWN_ID}", f"/results/{UNKNOWN_ID}.jpg"):
        assert_refused(service.client.get(path, headers=token), 503, "storage is unavailable; retry later",
                       Retry_After="2")


def test_app_check_not_configured_is_503(start, token):
    service = start(auth=AuthSettings(database_url=None, database_url_env=None, app_check=AppCheckSettings()))
    assert_refused(send(service, "/upload", token), 503, APP_CHECK_NOT_CONFIGURED)
    assert service.stored() == []


# --- routing ---------------------------------------------------------------------------------------

def test_an_unknown_path_is_404_and_a_wrong_method_405_as_json(service):
    assert_refused(service.client.get("/nope"), 404, "Not Found")
    for path, allowed in (("/colorize", "POST"), ("/api/v1/colorize", "POST"), ("/health", "GET")):
        wrong = service.client.put(path)
        assert_refused(wrong, 405, "Method Not Allowed")
        assert allowed in wrong.headers["allow"]


def test_unreachable_storage_is_not_ready_and_jobs_are_refused_before_any_model_work(start, token):
    from storage import StorageError

    class UnreachableStore(FailingDiskStore):
        """Fault stand-in: a store whose health check fails the way an unreachable bucket does."""
        def check(self):
            raise StorageError("MinIO bucket b at 10.0.0.7:9000: connection refused")

    service = start(store=UnreachableStore, stages={"tiny": CrashingStage("must not run")})
    ready = service.client.get("/readyz")
    assert (ready.status_code, ready.headers["Retry-After"]) == (503, "2")
    assert ready.json() == {"status": "not ready", "checks": {"storage": False, "ledger": True, "models": True}}
    assert "10.0.0.7" not in ready.text
    for route in ("/colorize", "/upload"):
        assert_refused(send(service, route, token, **({"model": "tiny"} if route == "/colorize" else {})), 503,
                       "the service is not ready; retry shortly", Retry_After="2")
    assert service.client.get("/health").status_code == 200  # liveness of the models is another question


def test_ready_when_storage_ledger_and_a_colorizer_answer(service):
    ready = service.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"storage": True, "ledger": True, "models": True}}
