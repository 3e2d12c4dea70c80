"""The service's own metrics and job log, in-process: the shipped app over real stages, a real ledger
and a real store (tests/in_process.py), recording into ``service.telemetry.MemoryRecorder``; the
faults that need a stand-in say so by their class names. The same recording on Ray, scraped from
Ray's metrics port, is tests/integration/test_metrics.py."""
from __future__ import annotations

import json
import logging
import re
from collections import Counter

import pytest
from sqlalchemy import select

from auth import DENIAL_REASONS, RELEASE_REASONS, AuthSettings
from auth.db import make_engine, usage
from auth.keys import parse_key
from service import telemetry as t
from service.errors import ERROR_TABLE
from service.outcomes import DENIALS, classify
from service.telemetry import MemoryRecorder, Telemetry
from tests.helpers import encode, photo
from tests.in_process import CLOSED_PORT, CrashingStage, FailingDiskStore, FullQueueStage

pytestmark = pytest.mark.timeout(120)

JPEG = encode(photo(48, 32))
KEY_ROUTE, APP_ROUTE = "POST /api/v1/colorize", "POST /colorize"


class Lines(logging.Handler):
    """The job log's lines, as written."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def job_lines():
    handler = Lines()
    logger = t.job_logger()
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


def colorize(service, key: str | None, request_id: str, image: bytes | str = JPEG, **form: str):
    part = ("a.jpg", image) if isinstance(image, bytes) else (None, image)
    headers = {"X-Request-Id": request_id, **({"X-Api-Key": key} if key else {})}
    idempotency = form.pop("idempotency_key", None)
    if idempotency:
        headers["Idempotency-Key"] = idempotency
    return service.client.post("/api/v1/colorize", data={"model": "tiny", **form}, files=[("image", part)],
                               headers=headers)


def test_jobs_are_counted_and_logged_as_sent_and_as_the_ledger_saw_them(start, signing_keys, job_lines):
    recorder = MemoryRecorder()
    service = start(telemetry=Telemetry(recorder), stages={
        "scratch_repair": CrashingStage("stand-in fault: the stage crashed"),
        "face_remaster": FullQueueStage()})
    key, limited = service.key(credits=100), service.key(credits=100, rate_per_s=0.001, burst=1)
    sent: Counter[tuple[str, str]] = Counter()  # (route, outcome) -> requests
    expected_status: dict[str, int] = {}

    def send(request_id: str, outcome: str, status: int, *args, **form) -> None:
        response = colorize(service, *args, request_id=request_id, **form)
        assert response.status_code == status, (request_id, response.text)
        sent[(KEY_ROUTE, outcome)] += 1
        expected_status[request_id] = status

    send("ok-1", "ok", 200, key)
    send("ok-2", "ok", 200, key, idempotency_key="same-job")
    send("replay", "replayed", 200, key, idempotency_key="same-job")
    send("bad-image", "invalid_request", 400, key, image=b"not an image")
    send("unknown-key", "refused", 401, "ck_live_0123456789ab_" + "A" * 43)
    send("limited-1", "ok", 200, limited)
    send("limited-2", "shed", 429, limited)
    send("crash", "stage_failed", 502, key, clean_scratches="true")
    send("busy", "shed", 429, key, face_remaster="true")
    send("unloaded", "model_not_loaded", 503, key, model="large")
    send("unreachable", "url_fetch_failed", 502, key, image=f"http://127.0.0.1:{CLOSED_PORT}/a.jpg")
    app_check = service.client.post("/colorize", data={"model": "tiny"}, files={"file": ("a.jpg", JPEG)},
                                    headers={"X-Firebase-AppCheck": signing_keys.token(), "X-Request-Id": "app"})
    assert app_check.status_code == 200, app_check.text
    sent[(APP_ROUTE, "ok")] += 1
    expected_status["app"] = 200
    wrong_key, refused = "ck_live_0123456789ab_" + "B" * 43, 1  # unknown-key was refused already
    for attempt in range(AuthSettings.model_fields["failed_auth_burst"].default + 2):
        # Failed authentications from one address are throttled once they pass the burst.
        if colorize(service, wrong_key, request_id=f"wrong-{attempt}").status_code == 429:
            sent[(KEY_ROUTE, "shed")] += 1
            expected_status[f"wrong-{attempt}"] = 429
            break
        sent[(KEY_ROUTE, "refused")] += 1
        expected_status[f"wrong-{attempt}"] = 401
        refused += 1
    else:
        pytest.fail("failed authentications were never throttled")

    # Jobs by route and outcome, and one latency observation each.
    counted = {(route, outcome): recorder.get(t.JOBS, route=route, outcome=outcome) for route, outcome in sent}
    assert counted == dict(sent)
    assert recorder.get(t.JOBS) == sum(sent.values()) == len(recorder.get(t.JOB_SECONDS))
    assert recorder.get(t.JOBS, model="tiny", add_ons="clean_scratches", outcome="stage_failed") == 1
    assert recorder.get(t.JOBS, model="none", outcome="refused") == refused  # 401s come before the form is read
    # Sheds by reason, fetch failures by kind.
    assert {reason: recorder.get(t.SHED, reason=reason) for reason in t.SHED_REASONS} == \
        {"overload": 1, "not_ready": 0, "rate_limited": 1, "auth_throttled": 1}
    assert recorder.get(t.SHED, route=KEY_ROUTE) == 3
    assert recorder.get(t.URL_FETCH_ERRORS, kind="unreachable") == 1 and recorder.get(t.URL_FETCH_ERRORS) == 1
    # Credits, as the ledger recorded them: held = spent + given back, spent = what the balances lost.
    with service.access.ledger.engine.connect() as conn:
        rows = conn.execute(select(usage.c.status, usage.c.price)).all()
    spent = sum(price for status, price in rows if status == "succeeded")
    given_back = sum(price for status, price in rows if status == "failed")
    assert recorder.get(t.CREDITS_CHARGED) == spent == (100 - service.balance(key)) + (100 - service.balance(limited))
    assert recorder.get(t.CREDITS_RELEASED, reason="job_failed") == given_back > 0
    assert recorder.get(t.CREDITS_RESERVED) == spent + given_back
    assert recorder.get(t.LEDGER_ERRORS) == 0

    # One log line per job, JSON, with what the job was and nothing else.
    entries = {entry["request_id"]: entry for entry in map(json.loads, job_lines)}
    assert len(job_lines) == len(entries) == sum(sent.values())
    assert {rid: entry["status"] for rid, entry in entries.items()} == expected_status
    ok = entries["ok-1"]
    assert ok["route"] == KEY_ROUTE and ok["outcome"] == "ok" and ok["model"] == "tiny" and ok["add_ons"] == []
    assert ok["key_id"] == parse_key(key).key_id and ok["price"] == ok["charged"] == 1
    assert ok["image"] == {"width": 48, "height": 32}
    assert set(ok["stages"]) == {"tiny"} and ok["stages"]["tiny"]["run_s"] > 0
    assert 0 < ok["stages"]["tiny"]["run_s"] <= ok["seconds"]
    # Where the job's time went in the ingress, in order; the stages' round trip holds their own runs.
    assert list(ok["phases"]) == ["ledger", "pixel_budget", "decode", "stages", "encode", "store"]
    assert ok["stages"]["tiny"]["run_s"] <= ok["phases"]["stages"] and sum(ok["phases"].values()) <= ok["seconds"] + 0.001  # each rounded to 0.1 ms
    assert ok["phases"]["ledger"] > 0  # check_key, open_job and finish_job, each timed
    assert len(recorder.get(t.JOB_PHASE_SECONDS, phase="stages")) == \
        sum(1 for entry in entries.values() if "stages" in entry["phases"])
    assert entries["replay"]["outcome"] == "replayed" and entries["replay"]["charged"] == 0
    assert entries["crash"]["add_ons"] == ["clean_scratches"] and entries["crash"]["charged"] == 0
    assert entries["busy"]["reason"] == "overload" and entries["limited-2"]["reason"] == "rate_limited"
    assert "key_id" not in entries["unknown-key"] and entries["unknown-key"]["model"] is None
    assert entries["app"]["app_id"] and "key_id" not in entries["app"] and entries["app"]["price"] == 0


def test_storage_failures_are_counted_by_operation(start):
    recorder = MemoryRecorder()
    service = start(telemetry=Telemetry(recorder), store=FailingDiskStore)
    assert colorize(service, service.key(), "disk").status_code == 502
    assert recorder.get(t.STORAGE_ERRORS, operation="write") == 1
    assert recorder.get(t.JOBS, outcome="storage_failed") == 1
    assert recorder.get(t.CREDITS_RELEASED) == recorder.get(t.CREDITS_RESERVED) == 1


def test_text_job_lines_for_a_terminal(start, job_lines):
    service = start(job_log_format="text")
    key = service.key()
    assert colorize(service, key, "plain-1").status_code == 200
    (line,) = job_lines
    assert re.fullmatch(rf"job plain-1 {KEY_ROUTE} 200 ok model=tiny add_ons=none image=48x32 "
                        rf"key_id={parse_key(key).key_id} price=1 charged=1 \d+\.\d{{3}}s "
                        r"\| tiny \d+\.\d{3}s \(queued \d+\.\d{3}s, batch 1\) "
                        r"\| in the ingress: pixel_budget \d+\.\d{3}s, decode \d+\.\d{3}s, stages \d+\.\d{3}s, "
                        r"encode \d+\.\d{3}s, store \d+\.\d{3}s", line), line


def test_ledger_failures_are_counted_by_operation(start, tmp_path):
    recorder = MemoryRecorder()
    service = start(telemetry=Telemetry(recorder))
    key = service.key()
    service.access.ledger.engine.dispose()  # the ledger's database is gone: every query fails
    service.access.ledger.engine = make_engine(f"sqlite:///{tmp_path / 'empty.sqlite3'}", create_tables=False)
    answer = colorize(service, key, "no-ledger")
    assert answer.status_code == 503, answer.text
    assert recorder.get(t.LEDGER_ERRORS, operation="check_key") == 1
    assert recorder.get(t.JOBS, outcome="ledger_unavailable") == 1


# --- the vocabulary --------------------------------------------------------------------------------

def test_every_documented_failure_has_an_outcome():
    """A row added to service.errors' table needs its word here too, or it would count as "error"."""
    for exc_type in ERROR_TABLE:
        assert classify(exc_type.__new__(exc_type)).outcome != "error", exc_type
    assert set(DENIALS) <= set(DENIAL_REASONS)
    assert {failure.shed_reason for failure in DENIALS.values() if failure.shed_reason} <= set(t.SHED_REASONS)
    assert t.CREDITS_RELEASED.values["reason"] == RELEASE_REASONS


def test_metric_names_and_labels_follow_prometheus_conventions():
    names = [metric.name for metric in t.METRICS]
    assert len(names) == len(set(names))
    for metric in t.METRICS:
        assert re.fullmatch(r"colorize_[a-z_]+", metric.name) and metric.description, metric
        assert metric.name.endswith("_total") == (metric.kind == t.COUNTER), metric.name
        assert not metric.name.endswith(("_count", "_sum", "_bucket")), metric.name  # Prometheus' own suffixes
        if metric.kind == t.HISTOGRAM:
            assert list(metric.boundaries) == sorted(set(metric.boundaries)) and metric.boundaries[0] > 0
            assert metric.name.endswith(("_seconds", "_size")), metric.name
        assert not {"deployment", "replica", "application"} & set(metric.tags)  # Serve adds these
        # Bounded labels only: every label but the route template has a closed set of values.
        assert set(metric.values) == set(metric.tags) - {"route"} or metric.values.get("route"), metric
        for name in metric.tags:
            assert not re.search(r"key|url|file|token|id$", name), (metric.name, name)


def test_job_routes_are_the_apps_colorize_routes(start):
    routes = {f"{method} {route.path}" for route in start().client.app.routes
              for method in (getattr(route, "methods", None) or ()) if method != "HEAD"}
    assert set(t.JOB_ROUTES) <= routes
    assert {route for route in routes if route.endswith("/colorize")} == set(t.JOB_ROUTES)
