"""Charge before delivery: the ledger's PostgreSQL is stopped under load and started again. Every
link the service handed out is charged exactly once; every other answer is a 503 with Retry-After
and charges nothing."""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from sqlalchemy import func, select

from tests.auth_fixtures import PostgresServer
from tests.helpers import encode, photo
from tests.integration.conftest import create_key, demo_args

pytestmark = pytest.mark.integration

CLIENTS, RUN_S, STOP_AT_S, DOWN_S = 6, 14.0, 4.0, 5.0


@pytest.fixture(scope="module")
def outage_service(serve_cluster, models_dir, tmp_path_factory):
    from ray import serve

    from deployments.app import build_graph
    from service.settings import load_settings

    postgres = PostgresServer()
    root = tmp_path_factory.mktemp("ledger-outage")
    args = demo_args(root, models_dir)
    args["auth"] = {**args["auth"], "database_url": postgres.url, "commit_retry_s": 1.0}
    serve.run(build_graph(load_settings(args)), name="ledger-outage", route_prefix="/ledger-outage")
    key = create_key(args, credits=10_000, rate_per_s=1000, burst=1000)
    yield {"url": f"{serve_cluster}/ledger-outage", "key": key, "postgres": postgres, "args": args}
    serve.delete("ledger-outage")
    postgres.remove()


async def _load(url: str, key: str, postgres: PostgresServer) -> list[httpx.Response]:
    image = encode(photo(96, 64))
    answers: list[httpx.Response] = []
    started = time.monotonic()

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() - started < RUN_S:
            answers.append(await http.post("/api/v1/colorize", headers={"X-Api-Key": key},
                                           files={"image": ("a.jpg", image, "image/jpeg")}, data={"model": "tiny"}))

    async def outage() -> None:
        await asyncio.sleep(STOP_AT_S)
        await asyncio.to_thread(postgres.stop)
        await asyncio.sleep(DOWN_S)
        await asyncio.to_thread(postgres.start)

    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        await asyncio.gather(outage(), *(client(http) for _ in range(CLIENTS)))
    return answers


def test_every_delivered_result_is_charged_and_nothing_else(outage_service):
    from auth.db import api_keys, make_engine, usage
    from auth.keys import parse_key

    answers = asyncio.run(_load(outage_service["url"], outage_service["key"], outage_service["postgres"]))
    delivered = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert delivered and refused, "the outage must fall inside the run"
    for answer in refused:  # only the documented outage answer, never a link
        assert answer.status_code == 503 and "Retry-After" in answer.headers, answer.text
        assert set(answer.json()) == {"detail"} and "outputUrl" not in answer.text
    with httpx.Client(timeout=30) as http:  # every handed-out link works
        for answer in delivered:
            assert http.get(answer.json()["outputUrl"]).status_code == 200

    engine = make_engine(outage_service["postgres"].url)
    key_id = parse_key(outage_service["key"]).key_id
    try:
        deadline = time.monotonic() + 60  # withheld jobs are released once the ledger answers again
        while True:
            with engine.connect() as conn:
                pending = conn.execute(select(func.count()).select_from(usage)
                                       .where(usage.c.status == "reserved")).scalar()
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        with engine.connect() as conn:
            charged = conn.execute(select(func.count()).select_from(usage)
                                   .where(usage.c.status == "succeeded")).scalar()
            balance = conn.execute(select(api_keys.c.balance).where(api_keys.c.key_id == key_id)).scalar()
    finally:
        engine.dispose()
    assert pending == 0
    assert charged == len(delivered)            # delivered <=> charged, exactly
    assert balance == 10_000 - len(delivered)   # and nothing else was taken
