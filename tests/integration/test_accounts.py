"""The key API's metering and the App Check API's tokens against a running app with TWO ingress replicas:
credits are exact under concurrency, failed jobs cost nothing, retries are charged once."""
from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from auth.app_check import APP_CHECK_DENIED
from tests.helpers import encode, photo
from tests.integration.conftest import balance, create_key, demo_args

pytestmark = pytest.mark.integration

JPEG = encode(photo(64, 48))


def poison_vae(large: Path) -> None:
    """A real stage failure: NaN weights make the text-guided colorizer refuse its output."""
    weights = large / "base" / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state = {k: torch.full_like(v, float("nan")) if k.startswith("decoder.conv_out") else v for k, v in state.items()}
    save_file(state, weights)


def new_postgres_database(server_url: str) -> str:
    import psycopg

    name = f"metered_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def metered(request, serve_cluster, models_dir, signing_keys, tmp_path_factory):
    """The same app on each ledger database; its replicas share the ledger as a cluster would."""
    from ray import serve

    from deployments.app import build_graph
    from service.settings import load_settings

    root = tmp_path_factory.mktemp(f"metered-{request.param}")
    shutil.copytree(models_dir / "large", root / "broken-large")
    poison_vae(root / "broken-large")
    args = demo_args(root, models_dir, jwks_url=signing_keys.jwks_url)
    args["colorizers"]["large"]["source"] = str(root / "broken-large" / "base")
    args["colorizers"]["large"]["diffusion"]["controlnet"]["source"] = str(root / "broken-large" / "controlnet")
    if request.param == "postgresql":
        args["auth"]["database_url"] = new_postgres_database(request.getfixturevalue("postgres_server"))
    options = {"Ingress": {"num_replicas": 2}, "ColorizerTiny": {"max_ongoing_requests": 64}}
    name = f"metered-{request.param}"
    serve.run(build_graph(load_settings(args), options), name=name, route_prefix=f"/{name}")
    yield {"url": f"{serve_cluster}/{name}", "args": args, "storage": root / "storage"}
    serve.delete(name)


def post(metered, key: str | None, *, headers: dict | None = None, **form) -> httpx.Response:
    headers = {**({"X-Api-Key": key} if key else {}), **(headers or {})}
    data = {"model": "tiny", **form}
    return httpx.post(f"{metered['url']}/api/v1/colorize", files={"image": ("a.jpg", JPEG)}, data=data,
                      headers=headers, timeout=120)


def test_concurrent_requests_charge_exactly(metered):
    key = create_key(metered["args"], credits=15, rate_per_s=1000, burst=1000)

    async def burst():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(
                client.post(f"{metered['url']}/api/v1/colorize", files={"image": ("a.jpg", JPEG)},
                            data={"model": "tiny"}, headers={"X-Api-Key": key}) for _ in range(40)))

    statuses = sorted(response.status_code for response in asyncio.run(burst()))
    assert statuses.count(200) == 15 and statuses.count(403) == 25, statuses
    assert balance(metered["args"], key) == 0


def test_balance_headers_and_account_agree_with_the_ledger(metered):
    key = create_key(metered["args"], credits=20, rate_per_s=1000, burst=1000)
    jobs = [{"model": "tiny"}] * 6 + [{"model": "tiny", "clean_scratches": "true"}] * 3 + \
        [{"model": "tiny", "face_remaster": "true"}] * 2 + [{"model": "large"}] * 2  # large fails: released

    async def run_of_jobs():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(
                client.post(f"{metered['url']}/api/v1/colorize", files={"image": ("a.jpg", JPEG)}, data=form,
                            headers={"X-Api-Key": key}) for form in jobs))

    responses = asyncio.run(run_of_jobs())
    assert sorted(r.status_code for r in responses) == [200] * 11 + [502] * 2
    assert all(0 <= int(r.headers["X-Credits-Remaining"]) <= 20 for r in responses)  # each: the balance then
    account = httpx.get(f"{metered['url']}/api/v1/account", headers={"X-Api-Key": key}, timeout=60)
    assert account.json()["credits"] == 2 == balance(metered["args"], key) == \
        int(account.headers["X-Credits-Remaining"])  # 20 - 6 - 3 * 2 - 2 * 3
    # One at a time, every answer's header is exactly what the ledger holds after it.
    for form, status in (({"model": "tiny"}, 200), ({"model": "large"}, 502), ({"model": "tiny"}, 200),
                         ({"model": "tiny"}, 403)):
        response = post(metered, key, **form)
        assert response.status_code == status
        assert int(response.headers["X-Credits-Remaining"]) == balance(metered["args"], key)
    assert balance(metered["args"], key) == 0


def test_failed_job_costs_nothing(metered):
    key = create_key(metered["args"], credits=5, rate_per_s=1000, burst=1000)
    response = post(metered, key, model="large")
    assert response.status_code == 502 and "processing failed on our side" in response.json()["detail"]
    assert balance(metered["args"], key) == 5
    assert post(metered, key, clean_scratches="true").status_code == 200
    assert balance(metered["args"], key) == 3  # 1 + 1 for scratch repair


def test_idempotent_retry_is_charged_once(metered):
    key = create_key(metered["args"], credits=10, rate_per_s=1000, burst=1000)
    first = post(metered, key, headers={"Idempotency-Key": "order-17"}, face_remaster="true")
    again = post(metered, key, headers={"Idempotency-Key": "order-17"}, face_remaster="true")
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    assert balance(metered["args"], key) == 7  # 1 + 2 for face remaster, once
    conflict = post(metered, key, headers={"Idempotency-Key": "order-17"})  # a different request
    assert conflict.status_code == 409 and "already used with a different request" in conflict.json()["detail"]


def test_an_unknown_key_is_401_and_one_without_credits_403_before_any_work(metered):
    unknown = post(metered, "ck_live_0123456789ab_" + "x" * 43)
    assert unknown.status_code == 401
    assert unknown.json() == {"detail": "missing or invalid API key (send it in the X-Api-Key header)"}
    broke = create_key(metered["args"], credits=0)
    before = sum(1 for p in metered["storage"].rglob("*") if p.is_file())
    response = post(metered, broke)
    assert response.status_code == 403
    assert response.json() == {"detail": "not enough credits: this job costs 1; add credits to this key"}
    assert sum(1 for p in metered["storage"].rglob("*") if p.is_file()) == before  # refused before any work
    assert balance(metered["args"], broke) == 0


def test_rate_limit(metered):
    key = create_key(metered["args"], credits=10, rate_per_s=0.01, burst=1)
    assert post(metered, key).status_code == 200
    limited = post(metered, key)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert balance(metered["args"], key) == 9


def test_app_check(metered, signing_keys):
    url = f"{metered['url']}/colorize"
    files = {"file": ("a.jpg", JPEG)}
    for headers in ({}, {"X-Firebase-AppCheck": signing_keys.token(exp=1)}):  # missing, expired
        response = httpx.post(url, files=files, data={"model": "tiny"}, headers=headers, timeout=60)
        assert response.status_code == 401 and response.json() == {"detail": APP_CHECK_DENIED}
    good = httpx.post(url, files=files, data={"model": "tiny"},
                      headers={"X-Firebase-AppCheck": signing_keys.token()}, timeout=60)
    assert good.status_code == 200, good.text
    # Public routes need no token.
    assert httpx.get(good.json()["download_url"], timeout=60).status_code == 200
    assert httpx.get(f"{metered['url']}/health", timeout=60).status_code == 200
    assert httpx.get(good.json()["api_download_url"], timeout=60).status_code == 401
