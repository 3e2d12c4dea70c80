"""The graph on a real multi-node Ray cluster (four nodes on loopback, one machine).

The Ingress runs on the head, the stages on three workers, ColorizerTiny's two replicas on two
different workers; jobs flow through stages on different nodes into shared MinIO storage and
one ledger. Then a worker hosting a tiny replica is killed under load: the service keeps
answering, the replica comes back on the spare worker, and credits stay exact.

The cluster lives in its own process (``multinode_scenario.py``): this pytest process already
runs ``ray.init`` for the single-node suite, and a process joins one Ray cluster at a time.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from deployments.launch import CPU_RAY_ENV

pytestmark = [pytest.mark.integration, pytest.mark.timeout(480)]

SCENARIO = Path(__file__).with_name("multinode_scenario.py")
REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 360  # a run takes 40-75 s on 2 cores; the scenario's own waits fail well before this


def run_scenario() -> tuple[int, str, str]:
    # Ray's defaults, as on GPU clusters (the rest of the suite runs with launch.CPU_RAY_ENV).
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and k not in CPU_RAY_ENV}
    # Its own session: on a timeout, the scenario and every Ray process it started go, and
    # nothing else.
    process = subprocess.Popen([sys.executable, str(SCENARIO)], cwd=REPO, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.terminate()  # SIGTERM: the scenario unwinds and shuts Serve, Ray and moto down
        try:
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
        pytest.fail(f"the multi-node scenario ran over {TIMEOUT_S} s\n{_story(err)}")
    return process.returncode, out, err


def _story(stderr: str, limit: int = 12_000) -> str:
    """The scenario's own progress lines and its traceback, without Ray's log noise."""
    lines = stderr.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Traceback")), len(lines))
    kept = [line for line in lines[:start] if line.startswith("[multinode")] + lines[start:]
    return "\n".join(kept)[-limit:]


def test_graph_spreads_over_nodes_and_survives_losing_a_worker():
    returncode, out, err = run_scenario()
    result = next((line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("MULTINODE_RESULT ")), None)
    assert returncode == 0 and result is not None, f"scenario failed (exit {returncode}):\n{_story(err)}"
    report = json.loads(result)
    print(json.dumps(report, indent=2))  # shown with -s / on failure: placement, failover, credits

    # The graph spread over nodes (the scenario checked the same against live node ids).
    placement = report["placement"]
    assert placement["Ingress"] == ["head"]
    tiny = placement["ColorizerTiny"]
    assert len(set(tiny)) == 2 and "head" not in tiny
    assert all("head" not in placement[name] for name in ("ScratchRepair", "ColorizerLarge", "FaceRemaster"))
    assert set(report["tiny_batches_before"]) == set(tiny)  # jobs ran on both tiny replicas

    # A worker with a tiny replica died; the replica came back on the spare worker.
    victim, failover = report["victim"], report["failover"]
    assert victim["node"] in tiny and victim["spare"] not in tiny
    assert sorted(report["placement_after"]["ColorizerTiny"]) == sorted([victim["surviving_tiny"], victim["spare"]])
    assert report["tiny_batches_after"][victim["spare"]]  # the replacement serves jobs
    assert failover["kill_to_first_success_s"] <= 60 and failover["kill_to_recovered_s"] <= 120
    assert all(failure["at_s"] <= 60 for failure in failover["failed"])

    # Every success charged once and stored; every failure free.
    credits, requests = report["credits"], report["requests"]
    assert credits["final"] == credits["start"] - credits["price_each"] * requests["ok"]
    assert credits["usage_totals"]["succeeded"]["jobs"] == requests["ok"] == credits["stored_results"]
    assert requests["failed"] == len(failover["failed"])
