"""``service.telemetry``'s metrics on Ray Serve: each one a ``ray.serve.metrics`` object, so it leaves
through the metrics port of the node its replica runs on (as ``ray_<name>``), tagged by Serve with
the deployment, the replica and the application.

Two things Ray 2.60 does that the code here and the dashboard allow for:
* a gauge that is not set again within two of Ray's report intervals is dropped from the scrape, so
  the last value of every gauge series is set again every half interval, from a daemon thread;
* a histogram's ``_sum`` is rebuilt from bucket midpoints (approximate): quantiles come from
  ``_bucket``, rates from ``_count``, and a mean batch size from two counts, never from ``_sum``.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from ray.serve import metrics

from service.telemetry import COUNTER, GAUGE, HISTOGRAM, METRICS, Metric, Recorder

DEFAULT_REPORT_INTERVAL_S = 10.0  # Ray's metrics_report_interval_ms default


class RayRecorder(Recorder):
    def __init__(self) -> None:
        # Made up front, in the replica: the ledger records from worker threads, where creating one would race.
        self._metrics = {metric.name: _make(metric) for metric in METRICS}
        self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}  # last value of each gauge series
        self._lock = threading.Lock()
        self._keeper: threading.Thread | None = None

    def record(self, metric: Metric, value: float, tags: Mapping[str, str]) -> None:
        made = self._metrics[metric.name]
        if metric.kind == COUNTER:
            if value > 0:  # Ray refuses to add zero
                made.inc(value, dict(tags))
        elif metric.kind == HISTOGRAM:
            made.observe(value, dict(tags))
        else:
            made.set(value, dict(tags))
            with self._lock:
                self._gauges[(metric.name, tuple(sorted(tags.items())))] = value
                if self._keeper is None:
                    self._keeper = threading.Thread(target=self._keep_gauges, name="gauge-keeper", daemon=True)
                    self._keeper.start()

    def _keep_gauges(self) -> None:
        every_s = max(0.5, _report_interval_s() / 2)
        while True:
            time.sleep(every_s)
            with self._lock:
                gauges = list(self._gauges.items())
            for (name, tags), value in gauges:
                self._metrics[name].set(value, dict(tags))


def _report_interval_s() -> float:
    try:
        import ray

        return ray._config.metrics_report_interval_ms() / 1000  # not public; the default when it moves
    except Exception:
        return DEFAULT_REPORT_INTERVAL_S


def _make(metric: Metric) -> Any:
    if metric.kind == COUNTER:
        return metrics.Counter(metric.name, description=metric.description, tag_keys=metric.tags)
    if metric.kind == HISTOGRAM:
        return metrics.Histogram(metric.name, description=metric.description, boundaries=list(metric.boundaries),
                                 tag_keys=metric.tags)
    assert metric.kind == GAUGE, metric
    return metrics.Gauge(metric.name, description=metric.description, tag_keys=metric.tags)
