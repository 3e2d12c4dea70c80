"""What operators deploy beside the service (docs/operate.md): the Prometheus scrape configuration, the
alert rules and the Grafana dashboard in deploy/. They must parse, and every query in them must name
only metrics the service exports (service.telemetry), under the names Ray serves them."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from service import telemetry as t

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "le", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, keywords,
    label names (in braces or in by/without/on lists) or numbers."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                 # strings (label values)
    expr = re.sub(r"\{[^}]*\}", "", expr)                            # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)                           # ranges, [$__rate_interval]
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\b\d[\w.]*", "", expr)                              # numbers, durations (5m)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        after = expr[match.end():].lstrip()
        if not after.startswith("(") and match.group(0).lower() not in PROMQL_WORDS:
            names.add(match.group(0))
    return names


def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana-dashboard.json").read_text())


def dashboard_queries() -> list[str]:
    panels = [panel for panel in dashboard()["panels"] if panel["type"] != "row"]
    # Variables list label values of a metric: `label_values(metric, label)` reads as a query of `metric`.
    variables = [re.fullmatch(r"label_values\((\w+), *\w+\)", variable["definition"]).group(1)
                 for variable in dashboard()["templating"]["list"] if variable["type"] == "query"]
    return [target["expr"] for panel in panels for target in panel["targets"]] + variables


def alert_queries() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_the_name_reader_finds_metrics_and_only_metrics():
    """Guards the checks below: a reader that found nothing would pass them all."""
    expr = ('histogram_quantile(0.99, sum by (le, stage) (rate(ray_colorize_stage_seconds_bucket'
            '{application=~"$application", stage="tiny"}[$__rate_interval]))) / on (stage) group_left '
            'max(up{job="ray"}) > bool 0.5 and ray_colorize_jobs_total offset 5m')
    assert metric_names(expr) == {"ray_colorize_stage_seconds_bucket", "up", "ray_colorize_jobs_total"}


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_query_names_only_exported_metrics(source):
    queries = dashboard_queries() if source == "dashboard" else alert_queries()
    assert queries
    for expr in queries:
        names = metric_names(expr)
        assert names, expr
        assert names <= t.EXPORTED_SERIES, (expr, names - t.EXPORTED_SERIES)


def test_the_dashboard_shows_every_metric_and_the_panels_operators_need():
    used = {name for expr in dashboard_queries() for name in metric_names(expr)}
    for metric in t.METRICS:
        assert set(metric.series) & used, f"{metric.name} is on no panel"
    titles = " | ".join(panel["title"] for panel in dashboard()["panels"]).lower()
    for needed in ("jobs per second", "latency", "stage latency p99", "batch size", "shed", "credits", "errors",
                   "models loaded"):
        assert needed in titles, needed
    for panel in dashboard()["panels"]:
        assert {"id", "type", "title", "gridPos"} <= set(panel), panel.get("title")
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}" and target["refId"]
    ids = [panel["id"] for panel in dashboard()["panels"]]
    assert len(ids) == len(set(ids)) and dashboard()["uid"]


def test_alerts_cover_what_operators_watch():
    rules = {rule["alert"]: rule for group in yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"]
             for rule in group["rules"]}
    watched = {"ColorizeShedding": "shed", "ColorizeStageSlow": "ray_colorize_stage_seconds_bucket",
               "ColorizeLedgerErrors": "ray_colorize_ledger_errors_total",
               "ColorizeModelNotLoaded": "ray_colorize_model_loaded"}
    for alert, needle in watched.items():
        assert needle in rules[alert]["expr"], alert
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]


def test_scrape_configs_find_rays_metrics_ports():
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    # The file Ray's head keeps (deployments.launch prints the session's own copy).
    assert job["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    assert all((DEPLOY / rules).is_file() for rules in config["rule_files"])
    monitor = yaml.safe_load((DEPLOY / "podmonitor.yaml").read_text())
    assert monitor["kind"] == "PodMonitor" and monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Prometheus) is not installed")
def test_promtool_accepts_the_config_and_the_rules():
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"]):
        done = subprocess.run(["promtool", *args], cwd=DEPLOY, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
