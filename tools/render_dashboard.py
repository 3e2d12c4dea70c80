"""Draw the Grafana dashboard (deploy/grafana-dashboard.json) as one PNG, offline: each panel's queries
run against a Prometheus that scraped the service, laid out by the panels' grid positions.

    python -m tools.render_dashboard --prometheus http://127.0.0.1:9090 --minutes 10 docs/dashboard.png

Grafana itself is not needed (nor installable offline here); this reads the same panel definitions,
so the picture shows what the dashboard would, not a hand-made lookalike. Needs matplotlib.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana-dashboard.json"
ROW_UNITS, COLUMNS = 1.0, 24  # Grafana's grid: 24 columns, rows of ~30 px
UNITS = {"s": "seconds", "reqps": "per second", "ops": "per second", "percentunit": "share", "none": ""}


def query_range(prometheus: str, expr: str, start: float, end: float, step_s: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step_s})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=30) as answer:
        body = json.load(answer)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def substitute(expr: str, rate_interval: str, application: str) -> str:
    """Grafana's variables, as Grafana would fill them in."""
    return expr.replace("$__rate_interval", rate_interval).replace("$application", application)


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip() or "value"


def render(prometheus: str, output: Path, *, minutes: float, step_s: float, rate_interval: str,
           application: str, dashboard: dict[str, Any], end: float | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from datetime import datetime, timezone

    end = end or time.time()
    start = end - minutes * 60
    panels = dashboard["panels"]
    height = max(panel["gridPos"]["y"] + panel["gridPos"]["h"] for panel in panels)
    figure = plt.figure(figsize=(20, height * 0.36), dpi=80)
    figure.suptitle(f"{dashboard['title']}: last {minutes:g} min, drawn offline from the dashboard's panel "
                    "definitions (tools/render_dashboard.py)", fontsize=13, y=0.995)
    drawn = 0
    for panel in panels:
        grid = panel["gridPos"]
        left, width = grid["x"] / COLUMNS, grid["w"] / COLUMNS
        top = 1 - grid["y"] / height
        if panel["type"] == "row":
            figure.text(0.01, top - 0.3 / height, panel["title"], fontsize=12, weight="bold", va="top")
            continue
        axes = figure.add_axes((left + 0.035, 1 - (grid["y"] + grid["h"]) / height + 1.1 / height,
                                width - 0.05, (grid["h"] - 2.0) / height))
        axes.set_title(panel["title"], fontsize=10, loc="left")
        lines = 0
        for target in panel["targets"]:
            expr = substitute(target["expr"], rate_interval, application)
            for series in query_range(prometheus, expr, start, end, step_s):
                points = [(datetime.fromtimestamp(float(t), timezone.utc), float(v)) for t, v in series["values"]
                          if v not in ("NaN", "+Inf", "-Inf")]
                if points:
                    axes.plot(*zip(*points), label=legend(target.get("legendFormat", ""), series["metric"]),
                              linewidth=1.2)
                    lines += 1
        if not lines:
            axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes, color="grey")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        axes.set_ylabel(UNITS.get(unit, unit), fontsize=8)
        axes.tick_params(labelsize=7)
        axes.set_xlim(datetime.fromtimestamp(start, timezone.utc), datetime.fromtimestamp(end, timezone.utc))
        axes.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        axes.xaxis.set_major_locator(mdates.MinuteLocator(interval=1 if grid["w"] >= 8 and minutes <= 10
                                                          else max(1, round(minutes / 3))))
        axes.grid(alpha=0.3)
        if lines:
            axes.legend(fontsize=6, loc="upper left", ncol=2, framealpha=0.6)
        drawn += lines
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output)
    return drawn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--prometheus", required=True, help="base URL of a Prometheus that scraped the service")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--step", type=float, default=5, help="seconds between points")
    parser.add_argument("--rate-interval", default="60s",
                        help="what Grafana's $__rate_interval stands for (4 scrape intervals of 15 s)")
    parser.add_argument("--application", default=".*", help="the $application variable (a regex)")
    parser.add_argument("--end", type=float, help="unix time the window ends (default: now)")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    args = parser.parse_args(argv)
    drawn = render(args.prometheus.rstrip("/"), args.output, minutes=args.minutes, step_s=args.step,
                   rate_interval=args.rate_interval, application=args.application,
                   dashboard=json.loads(args.dashboard.read_text()), end=args.end)
    print(f"wrote {args.output} ({drawn} series)")
    return 0 if drawn else 1


if __name__ == "__main__":
    sys.exit(main())
