"""What the service reports about its own work: Prometheus metrics and one log line per job.

No Ray here. ``METRICS`` lists every metric the service exports, with Prometheus names (``_total``
counters, ``_seconds`` in seconds) and label values from closed sets: never a key, a URL or a file
name. ``Telemetry`` turns events (a request ends, a stage runs a batch, credits move) into updates of
those metrics on a ``Recorder``: ``Recorder`` itself drops them (tests, in-process), ``MemoryRecorder``
keeps them to be read back, ``deployments.metrics.RayRecorder`` exports them through Ray Serve, where
each node's metrics port serves them as ``ray_<name>`` with the deployment, replica and application.

Each request to a contract route has a ``RequestRecord`` (``current_request()`` while it runs): the
route handlers and the graph note on it what the job was (model, add-ons, price, image size, who,
each stage's timings); when the request ends, ``Telemetry.request_finished`` counts it and, for a job
route, writes its one line to the ``colorize.jobs`` logger, as JSON or as text (``job_log_format``).
"""
from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from auth import RELEASE_REASONS, AccessEvents

from .stages import ADD_ONS, COLORIZERS, STAGES

COUNTER, HISTOGRAM, GAUGE = "counter", "histogram", "gauge"
RAY_PREFIX = "ray_"  # Ray's metrics port serves an application's metric `x` as `ray_x`
JOB_ROUTES = ("POST /api/v1/colorize", "POST /colorize")  # routes whose requests are jobs (one log line each)
LogFormat = Literal["json", "text"]

OUTCOMES = ("ok", "replayed", "invalid_request", "not_found", "refused", "shed", "model_not_loaded", "stage_failed",
            "storage_failed", "url_fetch_failed", "ledger_unavailable", "cancelled", "error")
SHED_REASONS = ("overload", "not_ready", "rate_limited", "auth_throttled")  # 429/503 answers that say "retry later"
STORAGE_OPERATIONS = ("write", "read", "link")                 # link: presigning a result's URL
URL_FETCH_KINDS = ("refused", "too_large", "unreachable")      # the fetch's 400, 413, 502
LEDGER_OPERATIONS = ("check_key", "account", "open_job", "take_pixel_tokens", "finish_job", "fail_job", "sweep")
# Where a job's time goes in the ingress, in the order it passes them (the job log's "phases" and
# colorize_job_phase_seconds): the ledger's calls, waiting for the pixel budget, decoding, the stages'
# round trip (queues, hops and runs; "stages" in the log has each stage's own share), encoding, the store write.
PHASES = ("ledger", "pixel_budget", "decode", "stages", "encode", "store")
STAGE_NAMES = tuple(spec.name for spec in STAGES)
NO_MODEL = "none"  # a request refused before its form was read has no model yet
ADD_ON_SETS = ("none", *("+".join(combo) for size in range(1, len(ADD_ONS) + 1)
                         for combo in itertools.combinations(sorted(ADD_ONS), size)))

SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)  # le buckets: integer sizes land exactly


@dataclass(frozen=True)
class Metric:
    name: str                 # as the code records it; Prometheus sees RAY_PREFIX + name
    kind: str                 # COUNTER | HISTOGRAM | GAUGE
    description: str
    tags: tuple[str, ...] = ()
    values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # closed label sets (route: the app's)
    boundaries: tuple[float, ...] = ()

    @property
    def series(self) -> tuple[str, ...]:
        """The names a Prometheus scrape shows for it."""
        base = RAY_PREFIX + self.name
        return (f"{base}_bucket", f"{base}_sum", f"{base}_count") if self.kind == HISTOGRAM else (base,)

    def check(self, tags: Mapping[str, str]) -> None:
        if set(tags) != set(self.tags):
            raise ValueError(f"{self.name}: labels {sorted(tags)}, expected {sorted(self.tags)}")
        for name, value in tags.items():
            if name in self.values and value not in self.values[name]:
                raise ValueError(f"{self.name}: {name}={value!r} is not one of {self.values[name]}")


_JOB_TAGS = ("route", "model", "add_ons", "outcome")
_JOB_VALUES = {"route": JOB_ROUTES, "model": (*COLORIZERS, NO_MODEL), "add_ons": ADD_ON_SETS, "outcome": OUTCOMES}
_STAGE = {"stage": STAGE_NAMES}

JOBS = Metric("colorize_jobs_total", COUNTER, "Jobs (requests to a colorize route) by route, model, add-ons and "
              "outcome", _JOB_TAGS, _JOB_VALUES)
JOB_SECONDS = Metric("colorize_job_seconds", HISTOGRAM, "Time from a job's request reaching the ingress to its "
                     "answer, by route, model, add-ons and outcome", _JOB_TAGS, _JOB_VALUES, SECONDS)
SHED = Metric("colorize_requests_shed_total", COUNTER, "Requests answered 'retry later' (429/503 with Retry-After) "
              "by route and reason", ("route", "reason"), {"reason": SHED_REASONS})
STAGE_SECONDS = Metric("colorize_stage_seconds", HISTOGRAM, "Time one photo spends in a stage's replica: queued "
                       "for a batch, then the batch's run", ("stage",), _STAGE, SECONDS)
STAGE_QUEUE_SECONDS = Metric("colorize_stage_queue_seconds", HISTOGRAM, "Time one photo waits in a stage's replica "
                             "for its batch to start", ("stage",), _STAGE, SECONDS)
STAGE_BATCH_SIZE = Metric("colorize_stage_batch_size", HISTOGRAM, "Photos per batch a stage ran", ("stage",), _STAGE,
                          BATCH_SIZES)
MODEL_LOAD_SECONDS = Metric("colorize_model_load_seconds", GAUGE, "How long a stage replica took to load its model",
                            ("stage",), _STAGE)
MODEL_LOADED = Metric("colorize_model_loaded", GAUGE, "1 when a stage replica's model is loaded, 0 when its load "
                      "failed (the replica answers 'model not loaded')", ("stage",), _STAGE)
CREDITS_RESERVED = Metric("colorize_credits_reserved_total", COUNTER, "Credits held when key-API jobs were admitted")
CREDITS_CHARGED = Metric("colorize_credits_charged_total", COUNTER, "Credits spent by key-API jobs that succeeded")
CREDITS_RELEASED = Metric("colorize_credits_released_total", COUNTER, "Held credits given back to keys: the job "
                          "failed or was cancelled (job_failed), or its reservation expired (expired)", ("reason",),
                          {"reason": RELEASE_REASONS})
LEDGER_ERRORS = Metric("colorize_ledger_errors_total", COUNTER, "Credit-ledger database calls that failed, by "
                       "operation", ("operation",), {"operation": LEDGER_OPERATIONS})
STORAGE_ERRORS = Metric("colorize_storage_errors_total", COUNTER, "Requests that failed on storage, by operation",
                        ("operation",), {"operation": STORAGE_OPERATIONS})
URL_FETCH_ERRORS = Metric("colorize_url_fetch_errors_total", COUNTER, "Images sent as URLs that could not be used, "
                          "by kind (refused: bad, forbidden or 4xx; too_large; unreachable: network, timeout, 5xx)",
                          ("kind",), {"kind": URL_FETCH_KINDS})

JOB_PHASE_SECONDS = Metric("colorize_job_phase_seconds", HISTOGRAM, "Time a job spent in each phase of its work "
                           "in the ingress (ledger calls, pixel-budget wait, decoding, the stages' round trip, "
                           "encoding, storing), summed per job", ("phase",), {"phase": PHASES}, SECONDS)

METRICS: tuple[Metric, ...] = (JOBS, JOB_SECONDS, JOB_PHASE_SECONDS, SHED, STAGE_SECONDS, STAGE_QUEUE_SECONDS,
                               STAGE_BATCH_SIZE, MODEL_LOAD_SECONDS, MODEL_LOADED, CREDITS_RESERVED, CREDITS_CHARGED,
                               CREDITS_RELEASED, LEDGER_ERRORS, STORAGE_ERRORS, URL_FETCH_ERRORS)
EXPORTED_SERIES: frozenset[str] = frozenset(name for metric in METRICS for name in metric.series)


class Recorder:
    """Where metric updates go. This one drops them (the default in tests and in-process)."""

    def record(self, metric: Metric, value: float, tags: Mapping[str, str]) -> None:
        """Counter: add ``value``; histogram: observe it; gauge: set it."""


class MemoryRecorder(Recorder):
    """Keeps every update, checking its labels against the metric's closed sets."""

    def __init__(self) -> None:
        self.values: dict[str, dict[tuple[tuple[str, str], ...], Any]] = defaultdict(dict)

    def record(self, metric: Metric, value: float, tags: Mapping[str, str]) -> None:
        metric.check(tags)
        series = self.values[metric.name]
        key = tuple(sorted(tags.items()))
        if metric.kind == COUNTER:
            series[key] = series.get(key, 0) + value
        elif metric.kind == HISTOGRAM:
            series.setdefault(key, []).append(value)
        else:
            series[key] = value

    def get(self, metric: Metric, **tags: str) -> Any:
        """Counters: the sum over series whose labels include ``tags``; histograms: their observations; gauges:
        the values."""
        found = [value for key, value in self.values[metric.name].items() if set(tags.items()) <= set(key)]
        if metric.kind == COUNTER:
            return sum(found)
        if metric.kind == HISTOGRAM:
            return [observation for values in found for observation in values]
        return found


@dataclass
class RequestRecord:
    """What one request was and what became of it, noted while it runs."""
    request_id: str
    route: str                                  # "POST /colorize": method and the route's template
    started: float = field(default_factory=time.perf_counter)
    model: str | None = None
    add_ons: frozenset[str] = frozenset()
    price: int = 0                              # credits the job costs (key API; 0 elsewhere)
    principal: str | None = None                # a key id, "app:<app id>" or "anonymous": never a credential
    replayed: bool = False                      # an Idempotency-Key replay: nothing ran, nothing charged
    image_size: tuple[int, int] | None = None   # (width, height) as decoded
    stages: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> queued_s, run_s, batch_size
    phases: dict[str, float] = field(default_factory=dict)  # PHASES -> seconds, summed (the ledger: every call)
    status: int | None = None
    outcome: str = "ok"
    reason: str | None = None                   # why it was shed (SHED_REASONS)
    storage_operation: str | None = None        # which storage call failed
    url_fetch_kind: str | None = None           # how an image URL failed

    def job(self, model: str, add_ons: frozenset[str] = frozenset(), price: int = 0) -> None:
        self.model, self.add_ons, self.price = model, add_ons, price

    def admitted(self, principal: str, *, replayed: bool = False) -> None:
        self.principal, self.replayed = principal, replayed

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as part of ``name`` (one of PHASES), also when it raises."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add_phase(name, time.perf_counter() - started)

    def add_phase(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    @property
    def charged(self) -> int:
        return self.price if self.outcome == "ok" else 0


_CURRENT: ContextVar[RequestRecord | None] = ContextVar("colorize_request", default=None)


def current_request() -> RequestRecord:
    """The record of the request this code runs for; outside a request, a throwaway one."""
    return _CURRENT.get() or RequestRecord(request_id="", route="")


class Telemetry(AccessEvents):
    def __init__(self, recorder: Recorder | None = None, *, log_format: LogFormat = "json"):
        self.recorder = recorder or Recorder()
        self.log_format = log_format

    @contextmanager
    def request(self, request_id: str, route: str) -> Iterator[RequestRecord]:
        """The record of one request, current while the block runs; counted (and logged) when it ends.
        A request cancelled under the block (the client went away) ends as ``cancelled``."""
        record = RequestRecord(request_id=request_id, route=route)
        token = _CURRENT.set(record)
        try:
            yield record
        except BaseException:
            record.outcome = "cancelled"
            raise
        finally:
            _CURRENT.reset(token)
            self.request_finished(record)

    def request_finished(self, record: RequestRecord) -> None:
        if record.outcome == "ok" and record.replayed:
            record.outcome = "replayed"
        if record.reason:
            self._record(SHED, 1, route=record.route, reason=record.reason)
        if record.storage_operation:
            self._record(STORAGE_ERRORS, 1, operation=record.storage_operation)
        if record.url_fetch_kind:
            self._record(URL_FETCH_ERRORS, 1, kind=record.url_fetch_kind)
        if record.route not in JOB_ROUTES:
            return
        seconds = time.perf_counter() - record.started
        tags = {"route": record.route, "model": record.model or NO_MODEL, "add_ons": add_on_set(record.add_ons),
                "outcome": record.outcome}
        self._record(JOBS, 1, **tags)
        self._record(JOB_SECONDS, seconds, **tags)
        for phase, phase_seconds in record.phases.items():
            self._record(JOB_PHASE_SECONDS, phase_seconds, phase=phase)
        line = json_line(record, seconds) if self.log_format == "json" else text_line(record, seconds)
        job_logger().info(line)

    # Stage replicas
    def stage_call(self, stage: str, *, queued_s: float, seconds: float) -> None:
        self._record(STAGE_QUEUE_SECONDS, queued_s, stage=stage)
        self._record(STAGE_SECONDS, seconds, stage=stage)

    def stage_batch(self, stage: str, size: int) -> None:
        self._record(STAGE_BATCH_SIZE, size, stage=stage)

    def model_load(self, stage: str, *, loaded: bool, seconds: float) -> None:
        self._record(MODEL_LOADED, 1.0 if loaded else 0.0, stage=stage)
        self._record(MODEL_LOAD_SECONDS, seconds, stage=stage)

    # auth.AccessEvents (called from the ledger's threads)
    def credits_reserved(self, amount: int) -> None:
        self._record(CREDITS_RESERVED, amount)

    def credits_charged(self, amount: int) -> None:
        self._record(CREDITS_CHARGED, amount)

    def credits_released(self, amount: int, reason: str) -> None:
        self._record(CREDITS_RELEASED, amount, reason=reason)

    def ledger_failed(self, operation: str) -> None:
        self._record(LEDGER_ERRORS, 1, operation=operation)

    def ledger_call(self, operation: str, seconds: float) -> None:
        # The ledger runs in a worker thread started with the request's context: this is its record.
        # The sweep runs beside the request that happened to start it, for everyone: not its time.
        if operation != "sweep":
            current_request().add_phase("ledger", seconds)

    def _record(self, metric: Metric, value: float, **tags: str) -> None:
        self.recorder.record(metric, value, tags)


def add_on_set(add_ons: frozenset[str]) -> str:
    return "+".join(sorted(add_ons)) or "none"


def _who(principal: str | None) -> dict[str, str]:
    if principal is None or principal == "anonymous":
        return {}
    if principal.startswith("app:"):
        return {"app_id": principal.removeprefix("app:")}
    return {"key_id": principal}


def json_line(record: RequestRecord, seconds: float) -> str:
    """One job as one JSON object. Every value is a number, a route template, a name from a closed set,
    the request id (short and plain, see ``service.app``) or an id: nothing a client wrote freely."""
    entry: dict[str, Any] = {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "event": "job", "request_id": record.request_id, "route": record.route, "status": record.status,
        "outcome": record.outcome, **({"reason": record.reason} if record.reason else {}),
        "model": record.model, "add_ons": sorted(record.add_ons),
        "image": {"width": record.image_size[0], "height": record.image_size[1]} if record.image_size else None,
        **_who(record.principal), "price": record.price, "charged": record.charged, "seconds": round(seconds, 4),
        "stages": {name: {key: round(value, 4) if isinstance(value, float) else value for key, value in timing.items()}
                   for name, timing in record.stages.items()},
        "phases": {name: round(value, 4) for name, value in _in_order(record.phases)},
    }
    return json.dumps(entry, separators=(",", ":"))


def text_line(record: RequestRecord, seconds: float) -> str:
    """The same job, for reading in a terminal."""
    parts = [f"job {record.request_id} {record.route} {record.status} {record.outcome}"
             + (f" ({record.reason})" if record.reason else ""),
             f"model={record.model or NO_MODEL}", f"add_ons={add_on_set(record.add_ons)}"]
    if record.image_size:
        parts.append(f"image={record.image_size[0]}x{record.image_size[1]}")
    parts += [f"{key}={value}" for key, value in _who(record.principal).items()]
    parts += [f"price={record.price}", f"charged={record.charged}", f"{seconds:.3f}s"]
    stages = [f"{name} {timing.get('run_s', 0.0):.3f}s (queued {timing.get('queued_s', 0.0):.3f}s, "
              f"batch {timing.get('batch_size', '?')})" for name, timing in record.stages.items()]
    phases = [f"{name} {value:.3f}s" for name, value in _in_order(record.phases)]
    return " ".join(parts) + (" | " + ", ".join(stages) if stages else "") + \
        (" | in the ingress: " + ", ".join(phases) if phases else "")


def _in_order(phases: Mapping[str, float]) -> list[tuple[str, float]]:
    return [(name, phases[name]) for name in PHASES if name in phases]


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def job_logger() -> logging.Logger:
    """``colorize.jobs``: one line per job on stderr, exactly as formatted (no prefix), not passed on to the
    root logger. On Ray, a replica's stderr goes to its ``worker-*.err`` file and to the driver's console."""
    logger = logging.getLogger("colorize.jobs")
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger

