"""The service's own metrics and job log on Ray: jobs of every kind (successes, a 4xx, refusals, sheds,
a model not loaded, a failed stage) against apps of their own, then Ray's metrics port scraped (it
exports with a delay: polled, bounded) and the session's log files read. The counters must equal what
was sent and what the ledger recorded; no credential or presigned-URL signature may be in any log file.

Apps: ``metrics`` (MinIO storage, so links are presigned; the tiny colorizer behind a queue of one, so a
burst is shed; the large colorizer and face remaster not loaded) and ``metrics-timeout`` (an ingress
and the tiny colorizer only, with a time limit no job can meet: each job fails in the graph)."""
from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from service import telemetry as t
from tests.helpers import encode, photo
from tests.integration.conftest import create_key, demo_args

pytestmark = pytest.mark.integration

KEY_ROUTE, APP_ROUTE = "POST /api/v1/colorize", "POST /colorize"
JPEG = encode(photo(96, 64, seed=5))
BURST = 12
EXPORT_WAIT_S = 60  # Ray's metrics agent exports every few seconds; polled until the numbers are in


def deploy(name: str, args: dict, options: dict | None = None) -> None:
    from ray import serve

    from deployments.app import build_graph
    from service.settings import load_settings

    serve.run(build_graph(load_settings(args), options or {}), name=name, route_prefix=f"/{name}")


@pytest.fixture(scope="module")
def apps(serve_cluster, models_dir, moto_endpoint, signing_keys, tmp_path_factory):
    from ray import serve

    started = time.monotonic()
    root = tmp_path_factory.mktemp("metrics")
    args = demo_args(root, models_dir, jwks_url=signing_keys.jwks_url, storage={
        "backend": "minio", "endpoint": moto_endpoint, "secure": False, "bucket": "colorize-metrics"})
    # Not loaded (weights missing): a feed-forward architecture, so the replica never imports diffusers.
    args["colorizers"]["large"] = {"architecture": "ddcolor", "source": str(root / "no-such-model")}
    args["face_remaster"] = {}  # no restorer weights: not loaded
    args["scratch_repair"] = {}  # OpenCV, no weights
    deploy("metrics", args, {"ColorizerTiny": {"max_ongoing_requests": 1, "max_queued_requests": 1,
                                               "user_config": {"max_batch_size": 1, "batch_wait_timeout_s": 0}}})
    timeout_args = {**args, "limits": {**args["limits"], "request_timeout_s": 0.001},
                    "storage": {"backend": "local", "root": str(root / "timeout-storage")},
                    "auth": {**args["auth"], "database_url": f"sqlite:///{root / 'timeout-ledger.sqlite3'}"}}
    first_s = time.monotonic() - started
    deploy_timeout_app(timeout_args)
    print(f"apps deployed in {first_s:.1f} s and {time.monotonic() - started - first_s:.1f} s")
    yield {"url": serve_cluster, "args": args, "timeout_args": timeout_args}
    serve.delete("metrics", _blocking=False)
    serve.delete("metrics-timeout", _blocking=False)


def deploy_timeout_app(args: dict) -> None:
    """The ingress over the one stage its jobs use (two replicas, not a whole graph's five)."""
    from ray import serve

    from deployments.ingress import Ingress
    from deployments.stage import Stage
    from service.settings import load_settings
    from service.stages import stage

    settings, tiny = load_settings(args), stage("tiny")
    stages = {tiny.name: Stage.options(name=tiny.deployment).bind(
        tiny.name, settings.stage_settings(tiny).model_dump(mode="json"), settings.model_runtime())}
    serve.run(Ingress.options(name="Ingress").bind(settings.model_dump(mode="json"), stages),
              name="metrics-timeout", route_prefix="/metrics-timeout")


def scrape() -> list:
    """Every sample the node's metrics port serves."""
    import ray

    port = ray.nodes()[0]["MetricsExportPort"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def total(samples: list, name: str, **labels: str) -> float:
    return sum(sample.value for sample in samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def session_logs() -> list[Path]:
    import ray

    return [path for path in Path(ray._private.worker._global_node.get_logs_dir_path()).rglob("*") if path.is_file()]


def test_counters_equal_what_was_sent_and_what_the_ledger_recorded(apps, signing_keys):
    base = f"{apps['url']}/metrics"
    key = create_key(apps["args"], credits=1000, rate_per_s=1000, burst=1000)
    limited = create_key(apps["args"], credits=1000, rate_per_s=0.001, burst=1)
    token = signing_keys.token()
    sent: Counter[tuple[str, str]] = Counter()  # (route, outcome) -> requests
    statuses: dict[str, int] = {}
    links: list[str] = []

    def post(request_id: str, outcome: str, status: int, api_key: str | None, image: bytes | str = JPEG,
             **form: str) -> None:
        part = ("a.jpg", image) if isinstance(image, bytes) else (None, image)
        headers = {"X-Request-Id": request_id, **({"X-Api-Key": api_key} if api_key else {})}
        answer = httpx.post(f"{base}/api/v1/colorize", data={"model": "tiny", **form}, files=[("image", part)],
                            headers=headers, timeout=60)
        assert answer.status_code == status, (request_id, answer.text)
        sent[(KEY_ROUTE, outcome)] += 1
        statuses[request_id] = status
        if status == 200:
            links.append(answer.json()["outputUrl"])

    started = time.monotonic()
    for n in range(3):
        post(f"m-ok-{n}", "ok", 200, key)
    post("m-scratches", "ok", 200, key, clean_scratches="true")
    post("m-bad-image", "invalid_request", 400, key, image=b"not an image")
    post("m-unknown-key", "refused", 401, "ck_live_0123456789ab_" + "U" * 43)
    post("m-large", "model_not_loaded", 503, key, model="large")
    post("m-faces", "model_not_loaded", 503, key, face_remaster="true")
    post("m-private-url", "url_fetch_failed", 400, key, image="http://127.0.0.1:9/a.jpg")  # not an allowed origin
    post("m-limited-1", "ok", 200, limited)
    post("m-limited-2", "shed", 429, limited)
    app_check = httpx.post(f"{base}/colorize", data={"model": "tiny"}, files={"file": ("a.jpg", JPEG)},
                           headers={"X-Firebase-AppCheck": token, "X-Request-Id": "m-app"}, timeout=60)
    assert app_check.status_code == 200, app_check.text
    sent[(APP_ROUTE, "ok")] += 1
    statuses["m-app"] = 200

    async def burst() -> list[httpx.Response]:  # more at once than the tiny colorizer's queue of one holds
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(
                client.post(f"{base}/api/v1/colorize", data={"model": "tiny"}, files={"image": ("a.jpg", JPEG)},
                            headers={"X-Api-Key": key, "X-Request-Id": f"m-burst-{n}"}) for n in range(BURST)))
    burst_answers = asyncio.run(burst())
    for n, answer in enumerate(burst_answers):
        assert answer.status_code in (200, 429), answer.text
        sent[(KEY_ROUTE, "ok" if answer.status_code == 200 else "shed")] += 1
        statuses[f"m-burst-{n}"] = answer.status_code
        if answer.status_code == 200:
            links.append(answer.json()["outputUrl"])
    overloaded = sum(answer.status_code == 429 for answer in burst_answers)
    assert 0 < overloaded < BURST, "the burst must be partly shed"
    timeout_key = create_key(apps["timeout_args"], credits=10)
    failed = httpx.post(f"{apps['url']}/metrics-timeout/api/v1/colorize", data={"model": "tiny"},
                        files={"image": ("a.jpg", JPEG)}, headers={"X-Api-Key": timeout_key,
                                                                   "X-Request-Id": "m-timeout"}, timeout=60)
    assert failed.status_code == 502, failed.text
    sent_s = time.monotonic() - started

    # Ray exports with a delay: poll until every job is counted, then compare everything.
    app = {"application": "metrics"}
    deadline = time.monotonic() + EXPORT_WAIT_S
    while True:
        samples = scrape()
        counted = total(samples, "ray_colorize_jobs_total", **app)
        done = counted == sum(sent.values()) and total(samples, "ray_colorize_jobs_total",
                                                       application="metrics-timeout", outcome="stage_failed") == 1
        if done or time.monotonic() > deadline:
            break
        time.sleep(1)
    waited_s = time.monotonic() - started - sent_s
    print(f"sent {sum(sent.values()) + 1} requests in {sent_s:.1f} s; metrics exported {waited_s:.1f} s later")

    jobs = {(route, outcome): total(samples, "ray_colorize_jobs_total", route=route, outcome=outcome, **app)
            for route, outcome in sent}
    assert jobs == dict(sent)
    assert total(samples, "ray_colorize_jobs_total", **app) == sum(sent.values())
    assert total(samples, "ray_colorize_job_seconds_count", **app) == sum(sent.values())
    assert total(samples, "ray_colorize_jobs_total", application="metrics-timeout", outcome="stage_failed",
                 model="tiny") == 1
    assert total(samples, "ray_colorize_requests_shed_total", reason="overload", **app) == overloaded
    assert total(samples, "ray_colorize_requests_shed_total", reason="rate_limited", **app) == 1
    assert total(samples, "ray_colorize_url_fetch_errors_total", kind="refused", **app) == 1

    # Credits: as the ledger recorded them.
    from auth.db import make_engine, usage

    engine = make_engine(apps["args"]["auth"]["database_url"])
    with engine.connect() as conn:
        rows = conn.execute(select(usage.c.status, usage.c.price)).all()
    engine.dispose()
    charged = sum(price for status, price in rows if status == "succeeded")
    released = sum(price for status, price in rows if status == "failed")
    assert charged == sent[(KEY_ROUTE, "ok")] + 1  # each success costs 1, clean_scratches 1 more
    assert total(samples, "ray_colorize_credits_charged_total", **app) == charged
    assert total(samples, "ray_colorize_credits_released_total", reason="job_failed", **app) == released > 0
    assert total(samples, "ray_colorize_credits_reserved_total", **app) == charged + released
    assert total(samples, "ray_colorize_ledger_errors_total", **app) == 0

    # Stages: the tiny colorizer's calls and batches, as its replica counted them itself.
    from ray import serve

    batches = serve.get_deployment_handle("ColorizerTiny", app_name="metrics").status.remote().result()["batch_sizes"]
    calls = sum(int(size) * count for size, count in batches.items())
    tiny = {"stage": "tiny", **app}
    assert calls == sent[(KEY_ROUTE, "ok")] + sent[(APP_ROUTE, "ok")]  # every success ran it, nothing else did
    assert total(samples, "ray_colorize_stage_seconds_count", **tiny) == calls
    assert total(samples, "ray_colorize_stage_queue_seconds_count", **tiny) == calls
    assert total(samples, "ray_colorize_stage_batch_size_count", **tiny) == sum(batches.values())
    for bound in t.STAGE_BATCH_SIZE.boundaries:  # Ray 2.60 makes up `_sum` from bucket midpoints: buckets only
        assert total(samples, "ray_colorize_stage_batch_size_bucket", le=f"{float(bound)}", **tiny) == \
            sum(count for size, count in batches.items() if int(size) <= bound)
    assert total(samples, "ray_colorize_stage_seconds_count", stage="scratch_repair", **app) == 1
    loaded = {stage: total(samples, "ray_colorize_model_loaded", stage=stage, **app) for stage in t.STAGE_NAMES}
    assert loaded == {"scratch_repair": 1, "large": 0, "tiny": 1, "face_remaster": 0}
    assert total(samples, "ray_colorize_model_load_seconds", stage="tiny", **app) > 0
    # Every metric recorded here is served under the names the dashboard's queries use.
    served = {sample.name for sample in samples}
    for metric in t.METRICS:
        if metric.name not in ("colorize_ledger_errors_total", "colorize_storage_errors_total"):  # none happened
            assert set(metric.series) <= served, metric.name

    # One job line per request, in the session's log files, with what the job was.
    expected = set(statuses) | {"m-timeout"}
    deadline = time.monotonic() + 30
    while True:
        entries = {}
        for path in session_logs():
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith('{"time"') and '"event":"job"' in line:
                    entry = json.loads(line)
                    if entry["request_id"] in expected:
                        assert entry["request_id"] not in entries, f"two lines for {entry['request_id']}"
                        entries[entry["request_id"]] = entry
        if set(entries) == expected or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert set(entries) == expected
    assert {rid: entry["status"] for rid, entry in entries.items() if rid != "m-timeout"} == statuses
    from auth.keys import parse_key

    scratches = entries["m-scratches"]
    assert scratches["key_id"] == parse_key(key).key_id and scratches["add_ons"] == ["clean_scratches"]
    assert scratches["outcome"] == "ok" and scratches["price"] == scratches["charged"] == 2
    assert scratches["image"] == {"width": 96, "height": 64}
    assert list(scratches["stages"]) == ["scratch_repair", "tiny"]  # graph order
    assert all(timing["batch_size"] >= 1 and timing["run_s"] > 0 for timing in scratches["stages"].values())
    assert entries["m-timeout"]["outcome"] == "stage_failed" and entries["m-timeout"]["charged"] == 0
    assert entries["m-limited-2"]["reason"] == "rate_limited"

    # No credential or signature anywhere in the session's logs (job lines, replicas' logs, Ray's own).
    signatures = [parse_qs(urlsplit(link).query)["X-Amz-Signature"][0] for link in links]
    assert len(signatures) == sent[(KEY_ROUTE, "ok")]
    secrets = [key, limited, timeout_key, token, *signatures]
    for path in session_logs():
        content = path.read_bytes()
        leaked = [secret[:12] + "..." for secret in secrets if secret.encode() in content]
        assert not leaked, (path, leaked)
