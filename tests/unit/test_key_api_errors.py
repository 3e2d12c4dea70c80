"""Every documented error of the key API (``POST /api/v1/colorize``), in-process: its status, its
``{"detail"}`` reason, its headers, and that a refused or failed job stores and charges nothing.

The app is the shipped one over real stages, a real ledger and a real store (tests/in_process.py);
the few faults that need a stand-in say so by their class names.
"""
from __future__ import annotations

import base64
import re
import threading
from http.server import BaseHTTPRequestHandler

import pytest

from auth import AuthSettings
from auth.keys import parse_key
from auth.policy import KEYS_NOT_CONFIGURED
from tests.in_process import CLOSED_PORT, IMAGE_HOST_PORT
from tests.helpers import LoopbackServer, encode, photo, png_bomb
from tests.in_process import CrashingStage, FailingDiskStore, FullQueueStage, HeldStage

pytestmark = pytest.mark.timeout(60)

ROUTE = "/api/v1/colorize"
JPEG = encode(photo(48, 32))
LIMIT = 1 << 20  # limits.max_upload_mb = 1 in tests/in_process.py
FIELDS = "image, model, clean_scratches, face_remaster, prompt, seed"
TEXT = None  # the file name of a text part, as curl -F 'name=value' sends it


class ImageHost(BaseHTTPRequestHandler):
    """The far side of an image URL: a photo, a 404, a 500, an image over the limit, a redirect
    to a private address."""

    def do_GET(self) -> None:
        if self.path == "/to-private.jpg":
            self.send_response(302)
            self.send_header("Location", "http://10.0.0.1/inside.jpg")
            self.end_headers()
            return
        status, body = {"/photo.jpg": (200, JPEG), "/broken.jpg": (500, b"oops"),
                        "/huge.jpg": (200, b"\xff" * (LIMIT + 1))}.get(self.path, (404, b"no such file"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def image_host() -> str:
    with LoopbackServer(ImageHost, IMAGE_HOST_PORT) as url:
        yield url


def colorize(service, key: str | None, form: dict | None = None, image: bytes | str = JPEG, **request):
    """POST the route as multipart: ``image`` as a file (bytes) or as text (a URL, base64), model=tiny
    unless ``form`` says otherwise."""
    headers = {**({"X-Api-Key": key} if key else {}), **request.pop("headers", {})}
    part = ("a.jpg", image) if isinstance(image, bytes) else (TEXT, image)
    return service.client.post(ROUTE, data={"model": "tiny", **(form or {})}, files=[("image", part)],
                               headers=headers, **request)


def assert_refused(response, status: int, detail: str | re.Pattern, **headers: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["detail"]
    if isinstance(detail, re.Pattern):
        assert detail.fullmatch(body["detail"]), body["detail"]
    else:
        assert body["detail"] == detail
    for name, value in headers.items():
        assert response.headers.get(name.replace("_", "-")) == value, name


@pytest.fixture
def service(start):
    return start()


def test_a_good_request_is_stored_and_charged(service):
    """The baseline the refusals below are measured against: this setup does store and charge."""
    key = service.key(credits=5)
    response = colorize(service, key, {"clean_scratches": "true"})
    assert response.status_code == 200, response.text
    assert re.fullmatch(r"http://127\.0\.0\.1:8000/results/[0-9a-f-]{36}\.png", response.json()["outputUrl"])
    assert service.balance(key) == 3 and len(service.stored()) == 1


# --- 400 -------------------------------------------------------------------------------------------

NOT_AN_IMAGE = re.compile(r"image is not a supported format \(.*\)")

BAD_FORMS = {  # name: (form parts, the reason the client reads)
    "image missing": ([("model", (TEXT, "tiny"))], f"field 'image' is required (a file, or text: http(s) URL, "
                      "base64, data URL)"),
    "image empty": ([("image", ("a.jpg", b""))], "image is empty"),
    "image sent twice, file and text": ([("image", ("a.jpg", JPEG)), ("image", (TEXT, "http://127.0.0.1/a.jpg"))],
                                        "field 'image' was sent twice (both a file and text)"),
    "image not an image": ([("image", ("a.jpg", b"hello, world" * 40))], NOT_AN_IMAGE),
    "image is svg": ([("image", ("a.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>"))], NOT_AN_IMAGE),
    "image truncated": ([("image", ("a.jpg", JPEG[: len(JPEG) // 2]))],
                        re.compile(r"image data is truncated or corrupt \(.+\)")),
    "too many pixels (decompression bomb)": ([("image", ("bomb.png", png_bomb(2000, 2000)))],
                                             "image is 2000x2000 = 4000000 pixels; the limit is 1000000"),
    "bad model": ([("image", ("a.jpg", JPEG)), ("model", (TEXT, "huge"))],
                  "field 'model' must be one of large, tiny; got 'huge'"),
    "bad add-on value": ([("image", ("a.jpg", JPEG)), ("clean_scratches", (TEXT, "yes"))],
                         "field 'clean_scratches' must be \"true\" or \"false\", got 'yes'"),
    "model sent as a file": ([("image", ("a.jpg", JPEG)), ("model", ("m.txt", b"tiny"))],
                             "field 'model' must be a text value, not a file"),
    "unknown field": ([("image", ("a.jpg", JPEG)), ("modle", (TEXT, "tiny"))],
                      f"unknown field 'modle'; this route accepts: {FIELDS}"),
    "seed out of range": ([("image", ("a.jpg", JPEG)), ("seed", (TEXT, str(2**32)))],
                          "field 'seed' must be a whole number from 0 to 4294967295"),
    "seed as a superscript digit": ([("image", ("a.jpg", JPEG)), ("seed", (TEXT, "\u00b2"))],
                                    "field 'seed' must be a whole number from 0 to 4294967295"),
    "prompt too long": ([("image", ("a.jpg", JPEG)), ("prompt", (TEXT, "x" * 301))],
                        re.compile(r"field 'prompt': .*300.*")),
    "bad base64": ([("image", (TEXT, "!!!not base64!!!"))],
                   "image text is not an http(s) URL, a data URL, or base64"),
    "base64 of text": ([("image", (TEXT, base64.b64encode(b"just text, no image").decode()))], NOT_AN_IMAGE),
    "data URL not an image": ([("image", (TEXT, "data:text/html;base64,PGgxPmhpPC9oMT4="))],
                              "image data URL has media type 'text/html', not an image"),
    "URL not http(s)": ([("image", (TEXT, "ftp://example.com/a.jpg"))], "image URL must use http or https"),
    "URL private": ([("image", (TEXT, "http://10.0.0.1/a.jpg"))],
                    "image URL host '10.0.0.1' resolves to a private address (10.0.0.1); not allowed"),
    "URL loopback": ([("image", (TEXT, "http://localhost:1/a.jpg"))],
                     re.compile(r"image URL host 'localhost' resolves to a loopback address \(.+\); not allowed")),
    "URL link-local": ([("image", (TEXT, "http://169.254.169.254/latest/meta-data"))],
                       re.compile(r"image URL host '169\.254\.169\.254' resolves to a link-local address.*")),
    "URL reserved (240.0.0.0/4, private to Python)": (
        [("image", (TEXT, "http://240.0.0.1/a.jpg"))],
        "image URL host '240.0.0.1' resolves to a private address (240.0.0.1); not allowed"),
}


@pytest.mark.parametrize("case", list(BAD_FORMS))
def test_a_bad_form_is_400_with_its_reason_and_costs_nothing(service, case):
    parts, reason = BAD_FORMS[case]
    key = service.key(credits=5)
    assert_refused(service.client.post(ROUTE, files=parts, headers={"X-Api-Key": key}), 400, reason)
    assert service.balance(key) == 5 and service.stored() == []


def test_a_body_that_is_not_multipart_is_400(service):
    key = service.key()
    assert_refused(service.client.post(ROUTE, json={"image": "x"}, headers={"X-Api-Key": key}),
                   400, "send multipart/form-data (e.g. curl -F 'image=@photo.jpg')")
    nameless = b"--x\r\nContent-Disposition: form-data\r\n\r\nhello\r\n--x--\r\n"  # a part without a name
    garbage = service.client.post(ROUTE, content=nameless, headers={
        "X-Api-Key": key, "content-type": "multipart/form-data; boundary=x"})
    assert_refused(garbage, 400, re.compile(r"invalid multipart body: .*\bname\b.*"))
    assert service.balance(key) == 10 and service.stored() == []


def test_image_urls_checked_on_every_redirect_and_4xx_are_400(service, image_host):
    key = service.key()
    redirected = colorize(service, key, image=f"{image_host}/to-private.jpg")
    assert_refused(redirected, 400, "image URL host '10.0.0.1' resolves to a private address (10.0.0.1); not allowed")
    assert_refused(colorize(service, key, image=f"{image_host}/nope.jpg"),
                   400, "image URL returned HTTP 404")
    assert service.balance(key) == 10 and service.stored() == []


def test_an_overlong_idempotency_key_is_400(service):
    key = service.key()
    assert_refused(colorize(service, key, headers={"Idempotency-Key": "k" * 256}),
                   400, "Idempotency-Key must be 1 to 255 characters")
    assert service.balance(key) == 10 and service.stored() == []


# --- 401, 403 --------------------------------------------------------------------------------------

INVALID_KEY = "missing or invalid API key (send it in the X-Api-Key header)"


def test_a_missing_unknown_malformed_or_revoked_key_is_401(service):
    key = service.key()
    key_id = parse_key(key).key_id
    wrong_secret = key[:-1] + ("A" if key[-1] != "A" else "B")
    for presented in (None, "ck_live_0123456789ab_" + "x" * 43, "not-a-key", wrong_secret):
        assert_refused(colorize(service, presented), 401, INVALID_KEY)
    service.accounts.revoke(key_id)
    assert_refused(colorize(service, key), 401, "this API key has been revoked")
    assert service.balance(key) == 10 and service.stored() == []


def test_too_few_credits_is_403_before_any_work(service):
    key = service.key(credits=1)
    held = HeldStage(CrashingStage("must never run"))
    service.runner.stages["scratch_repair"] = held
    response = colorize(service, key, {"clean_scratches": "true"})  # 1 + 1 credits
    assert_refused(response, 403, "not enough credits: this job costs 2; add credits to this key")
    assert held.calls == 0 and service.balance(key) == 1 and service.stored() == []


# --- 409 -------------------------------------------------------------------------------------------

def test_an_idempotency_key_reused_for_another_request_is_409(service):
    key = service.key(credits=5)
    first = colorize(service, key, headers={"Idempotency-Key": "order-17"})
    assert first.status_code == 200, first.text
    other = colorize(service, key, {"clean_scratches": "true"}, headers={"Idempotency-Key": "order-17"})
    assert_refused(other, 409, "this Idempotency-Key was already used with a different request; "
                               "use a new key for a new request")
    assert service.balance(key) == 4 and len(service.stored()) == 1  # the first job only


def test_an_idempotency_key_whose_first_request_still_runs_is_409(start, in_process_stages):
    held = HeldStage(in_process_stages["tiny"])
    service = start(stages={"tiny": held})
    key = service.key(credits=5)
    first: list = []
    running = threading.Thread(target=lambda: first.append(colorize(service, key, headers={"Idempotency-Key": "k1"})))
    running.start()
    try:
        assert held.entered.wait(20), "the first request never reached the stage"
        again = colorize(service, key, headers={"Idempotency-Key": "k1"})
        assert_refused(again, 409, "a request with this Idempotency-Key is still in progress; "
                                   "retry once it has finished")
    finally:
        held.release.set()
        running.join(30)
    assert first[0].status_code == 200 and held.calls == 1
    assert service.balance(key) == 4 and len(service.stored()) == 1


# --- 413 -------------------------------------------------------------------------------------------

def test_a_body_over_the_limit_is_413_declared_or_streamed(service):
    key = service.key()
    assert_refused(colorize(service, key, image=b"\x89PNG" + b"\0" * LIMIT), 413, "request body is larger than 1 MB")
    boundary = "limit"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\n\r\n".encode()
            + b"\0" * (LIMIT + 1) + f"\r\n--{boundary}--\r\n".encode())
    streamed = service.client.post(ROUTE, content=iter([body[:1000], body[1000:]]), headers={  # chunked: no length
        "X-Api-Key": key, "content-type": f"multipart/form-data; boundary={boundary}"})
    assert "content-length" not in streamed.request.headers
    assert_refused(streamed, 413, "request body is larger than 1 MB")
    assert service.balance(key) == 10 and service.stored() == []


def test_a_fetched_image_over_the_limit_is_413(service, image_host):
    key = service.key()
    fetched = colorize(service, key, image=f"{image_host}/huge.jpg")
    assert_refused(fetched, 413, f"image is {LIMIT + 1} bytes; the limit is {LIMIT}")
    assert service.balance(key) == 10 and service.stored() == []


# --- 429 -------------------------------------------------------------------------------------------

def test_the_rate_limit_is_429_with_retry_after(service):
    key = service.key(credits=5, rate_per_s=0.01, burst=1)
    assert colorize(service, key, image=b"not an image").status_code == 400  # spends the token
    limited = colorize(service, key)
    assert_refused(limited, 429, "rate limit exceeded for this API key; retry after the Retry-After delay")
    assert int(limited.headers["Retry-After"]) >= 1
    assert service.balance(key) == 5 and service.stored() == []


def test_full_stage_queues_are_429_with_retry_after(start):
    service = start(stages={"tiny": FullQueueStage()})
    key = service.key()
    assert_refused(colorize(service, key), 429, "server is busy; retry shortly", Retry_After="2")
    assert service.balance(key) == 10 and service.stored() == []


# --- 502 -------------------------------------------------------------------------------------------

def test_an_unreachable_or_failing_image_url_is_502(service, image_host):
    key = service.key()
    closed = f"http://127.0.0.1:{CLOSED_PORT}/a.jpg"  # allowed, but nothing listens there
    assert_refused(colorize(service, key, image=closed), 502, "could not fetch the image from '127.0.0.1'")
    assert_refused(colorize(service, key, image=f"{image_host}/broken.jpg"),
                   502, "image URL returned HTTP 500")
    assert service.balance(key) == 10 and service.stored() == []


def test_a_stage_that_fails_is_502(start):
    service = start(stages={"scratch_repair": CrashingStage("stand-in fault: the stage crashed")})
    key = service.key()
    assert_refused(colorize(service, key, {"clean_scratches": "true"}), 502,
                   re.compile(r"processing failed on our side \(request id \w+\); retry later"))
    assert service.balance(key) == 10 and service.stored() == []


def test_storage_that_fails_is_502_after_the_stages_ran(start):
    service = start(store=FailingDiskStore)
    key = service.key()
    tiny_calls = service.runner.stages["tiny"].calls
    assert_refused(colorize(service, key), 502, "could not store the image; retry later")
    assert service.runner.stages["tiny"].calls == tiny_calls + 1  # the work ran; its result could not be kept
    assert service.balance(key) == 10 and service.stored() == []


# --- 503 -------------------------------------------------------------------------------------------

def test_a_model_or_add_on_not_loaded_is_503(service):
    key = service.key()
    assert_refused(colorize(service, key, {"model": "large"}), 503, "the 'large' colorization model is not loaded")
    assert_refused(colorize(service, key, {"face_remaster": "true"}), 503, "the face remaster model is not loaded")
    assert service.balance(key) == 10 and service.stored() == []


def test_api_keys_not_configured_is_503(start):
    service = start(auth=AuthSettings(database_url=None, database_url_env=None))
    assert_refused(colorize(service, "ck_live_0123456789ab_" + "x" * 43), 503, KEYS_NOT_CONFIGURED)
    assert service.stored() == []
