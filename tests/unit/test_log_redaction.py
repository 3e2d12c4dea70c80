"""No API key, App Check token or presigned-URL signature ever reaches a log line, in-process: real jobs
(successes, failures and refusals) through the shipped app with presigned MinIO links (moto on
loopback), every logger and the process's stderr captured. The same over Ray, reading every log file
of the Ray session: tests/integration/test_metrics.py."""
from __future__ import annotations

import logging
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest

from auth.keys import parse_key
from storage import MinioStore
from tests.helpers import encode, photo
from tests.in_process import CLOSED_PORT, CrashingStage

pytestmark = pytest.mark.timeout(120)

JPEG = encode(photo(48, 32))


class Everything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.text: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.text.append(self.format(record))  # with the traceback, if any


@pytest.fixture
def logs():
    """Every record of the root logger and of the loggers that do not pass theirs on (Ray's, the job log)."""
    handler = Everything()
    loggers = [logging.getLogger(name) for name in ("", "ray", "ray.serve", "colorize.jobs")]
    root_level = loggers[0].level
    loggers[0].setLevel(logging.INFO)  # as Ray's workers run: INFO records of every library reach the handlers
    for logger in loggers:
        logger.addHandler(handler)
    yield handler.text
    for logger in loggers:
        logger.removeHandler(handler)
    loggers[0].setLevel(root_level)


def minio(endpoint: str):
    def make(_root) -> MinioStore:
        store = MinioStore(endpoint=endpoint, access_key="test-access", secret_key="test-secret",
                           bucket=f"redaction-{uuid.uuid4().hex[:12]}", secure=False, region="us-east-1")
        store.check()  # creates the bucket
        return store
    return make


def test_no_credential_or_signature_reaches_a_log_line(start, signing_keys, moto_endpoint, logs, capfd):
    service = start(store=minio(moto_endpoint), stages={"scratch_repair": CrashingStage("stand-in fault")})
    key, poor = service.key(credits=100), service.key(credits=0)
    wrong_secret = f"ck_live_{parse_key(key).key_id}_{'W' * 43}"  # a real key id with a wrong secret
    token, forged = signing_keys.token(), signing_keys.token(sub="1:123:web:forged") + "x"
    client_signature = "f" * 64
    signed_image_url = f"http://127.0.0.1:{CLOSED_PORT}/a.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256&" \
                       f"X-Amz-Credential=AKIA%2F20260101&X-Amz-Signature={client_signature}"

    def post(api_key: str | None, request_id: str, image: bytes | str = JPEG, **form: str) -> int:
        part = ("a.jpg", image) if isinstance(image, bytes) else (None, image)
        headers = {"X-Request-Id": request_id, **({"X-Api-Key": api_key} if api_key else {})}
        return service.client.post("/api/v1/colorize", data={"model": "tiny", **form}, files=[("image", part)],
                                   headers=headers).status_code

    ok = service.client.post("/api/v1/colorize", data={"model": "tiny"}, files={"image": ("a.jpg", JPEG)},
                             headers={"X-Api-Key": key, "X-Request-Id": "ok"})
    assert ok.status_code == 200, ok.text
    signature = parse_qs(urlsplit(ok.json()["outputUrl"]).query)["X-Amz-Signature"][0]
    answers = {
        "wrong-secret": post(wrong_secret, "wrong-secret"),
        "malformed": post("ck_live_" + key[8:-3], "malformed"),  # the key, cut short
        "no-credits": post(poor, "no-credits"),
        "crash": post(key, "crash", clean_scratches="true"),
        "bad-image": post(key, "bad-image", image=b"GIF89a not really"),
        "signed-url": post(key, "signed-url", image=signed_image_url),
        "key-as-image": post(key, "key-as-image", image=key),  # text that is neither URL nor base64
    }
    assert answers == {"wrong-secret": 401, "malformed": 401, "no-credits": 403, "crash": 502, "bad-image": 400,
                       "signed-url": 502, "key-as-image": 400}
    app_check = {name: service.client.post("/colorize", data={"model": "tiny"}, files={"file": ("a.jpg", JPEG)},
                                           headers={"X-Firebase-AppCheck": value}).status_code
                 for name, value in (("token", token), ("forged", forged))}
    assert app_check == {"token": 200, "forged": 401}
    assert service.client.get("/download/" + "0" * 8, headers={"X-Firebase-AppCheck": forged}).status_code == 401

    out, err = capfd.readouterr()
    text = "\n".join([*logs, out, err])
    # The capture holds the job lines and the failures' own logs: a test that captured nothing would pass.
    for expected in ('"request_id":"crash"', '"request_id":"wrong-secret"', parse_key(key).key_id,
                     "failed in the graph", "App Check token rejected"):
        assert expected in text, expected
    secrets = {"key": key, "key's secret": key.rsplit("_", 1)[1], "wrong secret": wrong_secret,
               "poor key": poor, "App Check token": token, "its signature": token.rsplit(".", 1)[1],
               "forged token": forged, "presigned signature": signature, "client's signature": client_signature}
    leaked = [name for name, value in secrets.items() if value in text]
    assert not leaked, leaked
