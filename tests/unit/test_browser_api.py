"""What browsers need from the HTTP app, in-process (Starlette's TestClient, no Ray): CORS from
the settings, the key holder's account, the price table, X-Credits-Remaining, the workbench."""
from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from auth import AuthSettings, OpenAccess, PolicyAccess
from auth.accounts import Accounts
from service.app import build_http_app
from service.web.cors import CorsSettings
from service.jobs import StageFailed, StageUnavailable
from service.settings import ConfigError, load_settings
from storage import make_store
from tests.helpers import encode, photo
from tools.build_demo import model_args

PAGE_ORIGIN = "https://app.example.com"
JPEG = encode(photo(64, 48))


class FailingStages:
    """A stage runner whose stages are all loaded but whose colorizer fails: every job is
    admitted, reserved, and released (no fake outputs here; successes run on the real graph)."""

    def __init__(self, failure: Exception):
        self.failure = failure

    async def statuses(self, *, wait_s: float = 0.0) -> dict:
        return {name: {"loaded": True} for name in ("scratch_repair", "large", "tiny", "face_remaster")}

    async def require(self, plan) -> None:
        if isinstance(self.failure, StageUnavailable):
            raise self.failure

    async def run(self, plan, image):
        raise self.failure


def make_app(tmp_path: Path, *, cors: dict | None = None, auth: bool = True, workbench: bool = True,
             failure: Exception = StageFailed("the colorizer raised")):
    args = {**model_args(tmp_path / "models"), "storage": {"backend": "local", "root": str(tmp_path / "storage")},
            "cors": cors or {}, "workbench": workbench}
    if auth:
        args["auth"] = {"database_url": f"sqlite:///{tmp_path / 'ledger.sqlite3'}", "database_url_env": None}
    settings = load_settings(args, base_dir=tmp_path)
    access = PolicyAccess(settings.auth, environ={}) if auth else OpenAccess()
    app = build_http_app(settings, FailingStages(failure), make_store(settings.storage), access)
    return app, access


@pytest.fixture
def keyed(tmp_path: Path):
    app, access = make_app(tmp_path, cors={"allow_origins": [PAGE_ORIGIN]})
    accounts = Accounts(access.ledger.engine)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        yield client, accounts
    access.close()


def test_preflight_is_answered_on_every_route_for_a_listed_origin(keyed):
    client, _ = keyed
    for method, path in (("POST", "/api/v1/colorize"), ("GET", "/api/v1/account"), ("POST", "/upload"),
                         ("POST", "/colorize"), ("GET", "/download/x"), ("GET", "/health"), ("GET", "/no/such/route")):
        response = client.options(path, headers={
            "Origin": PAGE_ORIGIN, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "x-api-key, x-firebase-appcheck, idempotency-key, content-type"})
        assert response.status_code == 200, (path, response.text)
        assert response.headers["access-control-allow-origin"] == PAGE_ORIGIN
        allowed = {h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")}
        assert {"x-api-key", "x-firebase-appcheck", "idempotency-key", "content-type"} <= allowed
        assert response.headers["access-control-max-age"] == "600"
        assert "access-control-allow-credentials" not in response.headers


def test_cross_origin_answers_expose_the_headers_scripts_need(keyed):
    client, _ = keyed
    for response in (client.get("/api/v1/pricing", headers={"Origin": PAGE_ORIGIN}),
                     client.post("/api/v1/colorize", headers={"Origin": PAGE_ORIGIN}, files={"image": JPEG}),  # 401
                     client.get("/nope", headers={"Origin": PAGE_ORIGIN})):
        assert response.headers["access-control-allow-origin"] == PAGE_ORIGIN
        exposed = {h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")}
        assert exposed == {"x-request-id", "retry-after", "x-credits-remaining"}


def test_other_origins_get_no_cors_and_a_json_refusal(keyed):
    client, _ = keyed
    response = client.get("/api/v1/pricing", headers={"Origin": "https://evil.example"})
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
    preflight = client.options("/api/v1/colorize", headers={"Origin": "https://evil.example",
                                                            "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 400 and preflight.json() == {"detail": "Disallowed CORS origin"}
    assert "access-control-allow-origin" not in preflight.headers


def test_without_listed_origins_there_is_no_cors(tmp_path: Path):
    app, access = make_app(tmp_path)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        response = client.options("/api/v1/colorize", headers={"Origin": PAGE_ORIGIN,
                                                               "Access-Control-Request-Method": "POST"})
        assert response.status_code == 405 and "access-control-allow-origin" not in response.headers
    access.close()


def test_any_origin_for_the_demo(tmp_path: Path):
    app, access = make_app(tmp_path, cors={"allow_origins": ["*"]})
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        response = client.get("/api/v1/pricing", headers={"Origin": "http://localhost:5173"})
        assert response.headers["access-control-allow-origin"] == "*"
    access.close()


@pytest.mark.parametrize("cors, message", [
    ({"allow_origins": ["*"], "allow_credentials": True}, "list your origins instead"),
    ({"allow_origins": ["https://app.example.com/"]}, "no path or trailing slash"),
    ({"allow_origins": ["app.example.com"]}, "scheme://host[:port]"),
    ({"allow_origin": ["*"]}, "unknown key"),
    ({"max_age_s": -1}, "greater than or equal to 0"),
])
def test_cors_settings_are_checked_at_start(tmp_path: Path, cors: dict, message: str):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_settings({**model_args(tmp_path), "cors": cors}, base_dir=tmp_path)
    assert CorsSettings(allow_origins=("https://a.example", "http://127.0.0.1:8080"), allow_credentials=True)


def test_account_reads_the_key_and_charges_nothing(keyed):
    client, accounts = keyed
    new = accounts.create_key(credits=7, name="Acme", rate_per_s=2.5, burst=4)
    for _ in range(6):  # more than the burst: reading the account takes no token
        response = client.get("/api/v1/account", headers={"X-Api-Key": new.key})
        assert response.status_code == 200
    assert response.json() == {"keyId": new.key_id, "name": "Acme", "credits": 7,
                               "rateLimit": {"perSecond": 2.5, "burst": 4}}
    assert response.headers["x-credits-remaining"] == "7" and response.headers["cache-control"] == "no-store"
    assert accounts.usage(new.key_id) == []
    for headers in ({}, {"X-Api-Key": "ck_live_000000000000_" + "A" * 43}):
        refused = client.get("/api/v1/account", headers=headers)
        assert refused.status_code == 401 and "X-Api-Key" in refused.json()["detail"]
        assert "x-credits-remaining" not in refused.headers


def test_account_without_keys_configured_is_503(tmp_path: Path):
    app, _ = make_app(tmp_path, auth=False)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        response = client.get("/api/v1/account", headers={"X-Api-Key": "ck_live_x"})
        assert response.status_code == 503 and "not enabled" in response.json()["detail"]


def test_pricing_comes_from_the_stage_table(keyed):
    client, _ = keyed
    response = client.get("/api/v1/pricing")
    assert response.json() == {"unit": "credits", "models": {"large": 1, "tiny": 1},
                               "addOns": {"clean_scratches": 1, "face_remaster": 2}}


def test_credits_remaining_on_failures_and_refusals(tmp_path: Path):
    app, access = make_app(tmp_path)
    accounts = Accounts(access.ledger.engine)
    key = accounts.create_key(credits=3, rate_per_s=0.001, burst=3).key
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        def colorize(**form):
            return client.post("/api/v1/colorize", headers={"X-Api-Key": key}, files={"image": ("a.jpg", JPEG)},
                               data={"model": "tiny", **form})

        failed = colorize(face_remaster="true")  # 3 credits reserved, then given back
        assert failed.status_code == 502 and failed.headers["x-credits-remaining"] == "3"
        too_dear = colorize(face_remaster="true", clean_scratches="true")  # 4 credits
        assert too_dear.status_code == 403 and too_dear.headers["x-credits-remaining"] == "3"
        plain = colorize()
        assert plain.status_code == 502 and plain.headers["x-credits-remaining"] == "3"
        limited = colorize()  # the burst of 3 is spent
        assert limited.status_code == 429 and limited.headers["x-credits-remaining"] == "3"
        assert int(limited.headers["retry-after"]) >= 1
        unknown = client.post("/api/v1/colorize", headers={"X-Api-Key": "nope"}, files={"image": JPEG})
        assert unknown.status_code == 401 and "x-credits-remaining" not in unknown.headers
    access.close()


def test_credits_remaining_on_403_and_unavailable_models(tmp_path: Path):
    app, access = make_app(tmp_path, failure=StageUnavailable("the 'tiny' colorization model is not loaded"))
    accounts = Accounts(access.ledger.engine)
    key = accounts.create_key(credits=2).key
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        def colorize(**form):
            return client.post("/api/v1/colorize", headers={"X-Api-Key": key}, files={"image": ("a.jpg", JPEG)},
                               data={"model": "tiny", **form})

        unavailable = colorize()
        assert unavailable.status_code == 503 and unavailable.headers["x-credits-remaining"] == "2"
        poor = colorize(face_remaster="true")
        assert poor.status_code == 403 and poor.headers["x-credits-remaining"] == "2"
        assert accounts.get(key.split("_")[2]).balance == 2
    access.close()


def test_the_workbench_is_served_at_the_root(tmp_path: Path):
    app, access = make_app(tmp_path)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        for asset, kind in (("workbench.js", "text/javascript"), ("workbench.css", "text/css")):
            assert f'"{asset}"' in page.text  # relative: works under any route prefix
            response = client.get(f"/{asset}")
            assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
        assert client.post("/").status_code == 405
        assert client.get("/colorize").status_code == 405  # no catch-all hides other routes' methods
        assert client.get("/index.html").status_code == 404
    access.close()
    app, access = make_app(tmp_path, workbench=False)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        assert client.get("/").status_code == 404
    access.close()


def test_the_workbench_loads_nothing_from_elsewhere():
    root = Path(__file__).resolve().parents[2] / "workbench"
    assert sorted(p.name for p in root.iterdir()) == ["index.html", "workbench.css", "workbench.js"]
    for path in root.iterdir():
        text = path.read_text()
        for marker in ("//cdn", "googleapis", "unpkg", "jsdelivr", "@import", "<script src=\"http", "fonts."):
            assert marker not in text, (path.name, marker)
