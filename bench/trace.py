"""Where a lone request's time goes: one client, one request at a time, timed per hop.

The client times each request end to end; the Ingress's job log line (``service.telemetry``) says how
long the job took inside it, phase by phase, and how long the stage ran and queued (carried back
with the photo, ``deployments.timing``). The differences are the hops:

* client <-> Ingress: the client's HTTP, Serve's proxy and its actor call to the Ingress, the
  Ingress's HTTP handling before and after the job (form parsing, the answer);
* Ingress <-> stage and back: the ``stages`` phase minus the stage's own queue and run time (Serve's
  router, Ray's actor call with the photo inline, the result's way back).

Read from the job lines the Ingress writes to its stderr (Ray's ``worker-*.err`` files), so it
needs the JSON job log format (the default). Medians over the requests after a warm-up.
"""
from __future__ import annotations

import glob
import json
import statistics
import time
from pathlib import Path

import httpx

from .load import Target


def lone_requests(target: Target, logs_dir: Path, *, requests: int = 60, warmup: int = 15,
                  pause_s: float = 0.05) -> dict[str, float]:
    """Medians in ms: client, Ingress job and its phases, the stage's run and queue, and the hops."""
    latencies = []
    with httpx.Client(timeout=target.timeout_s, trust_env=False) as client:
        for index in range(warmup + requests):
            body, content_type = target.bodies[index % len(target.bodies)]
            sent = time.perf_counter()
            response = client.post(target.url, content=body, headers={**target.headers, "Content-Type": content_type})
            latencies.append(time.perf_counter() - sent)
            if response.status_code != 200:
                raise RuntimeError(f"lone request answered {response.status_code}: {response.text[:200]}")
            time.sleep(pause_s)  # one at a time, the stage idle when the next arrives
    time.sleep(1.0)  # the last job lines reach the log files
    jobs = job_lines(logs_dir)[-requests:]
    if len(jobs) < requests:
        raise RuntimeError(f"found {len(jobs)} job lines in {logs_dir}, expected {requests}")
    stage = next(iter(jobs[0]["stages"]))
    client_ms = _median(latencies[warmup:])
    job_ms = _median(job["seconds"] for job in jobs)
    run_ms = _median(job["stages"][stage]["run_s"] for job in jobs)
    queued_ms = _median(job["stages"][stage]["queued_s"] for job in jobs)
    phases = {name: _median(job["phases"].get(name, 0.0) for job in jobs) for name in jobs[0]["phases"]}
    hops_ms = _median(job["phases"]["stages"] - job["stages"][stage]["run_s"] - job["stages"][stage]["queued_s"]
                      for job in jobs)
    return {"client": client_ms, "client <-> Ingress (proxy, HTTP)": client_ms - job_ms, "Ingress job": job_ms,
            **{f"  {name}": value for name, value in phases.items()},
            f"    {stage} stage run": run_ms, f"    {stage} stage queue": queued_ms,
            "    Ingress <-> stage hops": hops_ms,
            "  rest of the Ingress job": job_ms - sum(phases.values())}


def job_lines(logs_dir: Path) -> list[dict]:
    found = []
    for path in glob.glob(str(logs_dir / "worker-*.err")):
        with open(path, errors="replace") as lines:
            for line in lines:
                if line.startswith("{") and '"job"' in line:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    if entry.get("event") == "job":
                        found.append(entry)
    return sorted(found, key=lambda job: job["time"])


def _median(values) -> float:
    return statistics.median(list(values)) * 1000
