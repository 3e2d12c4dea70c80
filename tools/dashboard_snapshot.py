"""A picture of the dashboard with real data, offline: the demo service (deployments.launch with
serve_config.demo.yaml, in a scratch directory), a Prometheus scraping its metrics port, a few
minutes of mixed traffic on loopback, then tools.render_dashboard.

    python -m tools.dashboard_snapshot --prometheus-bin /usr/bin/prometheus --minutes 4 docs/dashboard.png

Traffic (bounded in time and count): steady tiny-model jobs, jobs with add-ons and the text-guided
model, bad images, image URLs the service may not fetch, unknown keys (now and then, and once in a
row of 25, which throttles the address for a few seconds), a key over its rate limit, and one burst. Prometheus is Debian's
`prometheus` package (or any Prometheus 2.x binary); nothing is fetched from the network.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.helpers import encode, free_port, photo

ROOT = Path(__file__).resolve().parents[1]
MAX_REQUESTS = 20_000


def wait_for(what: str, check, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(1)
    raise RuntimeError(f"{what} did not come up within {timeout_s:g} s")


async def traffic(base: str, key: str, limited: str, minutes: float) -> dict[int, int]:
    """Mixed jobs for ``minutes``; answers counted by status."""
    small, scratched = encode(photo(160, 120, seed=1)), encode(photo(320, 200, seed=2))
    statuses: dict[int, int] = {}
    end = time.monotonic() + minutes * 60
    sent = 0

    async def one(client: httpx.AsyncClient, api_key: str, image: bytes | str = small, **form: str) -> None:
        nonlocal sent
        sent += 1
        part = ("a.jpg", image) if isinstance(image, bytes) else (None, image)
        answer = await client.post("/api/v1/colorize", headers={"X-Api-Key": api_key},
                                   files={"image": part}, data={"model": "tiny", **form})
        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1

    async def steady(client: httpx.AsyncClient, n: int) -> None:
        while time.monotonic() < end and sent < MAX_REQUESTS:
            kind = n % 10
            if kind < 5:
                await one(client, key)
            elif kind < 7:
                await one(client, key, scratched, clean_scratches="true")
            elif kind == 7:
                await one(client, key, scratched, face_remaster="true", clean_scratches="true")
            elif kind == 8:
                await one(client, key, model="large")
            else:
                await one(client, key, b"not an image")
            n += 3

    unknown = "ck_live_0123456789ab_" + "x" * 43

    async def nuisances(client: httpx.AsyncClient) -> None:
        n = 0
        while time.monotonic() < end and sent < MAX_REQUESTS:
            await one(client, limited)                                  # over its rate now and then: shed
            if n % 8 == 0:  # below the failed-authentication refill (0.5/s), so the address is not throttled
                await one(client, unknown)
                await one(client, key, image="http://127.0.0.1:9/old.jpg")  # a private address: refused
            n += 1
            await asyncio.sleep(0.5)

    async def bursts(client: httpx.AsyncClient) -> None:
        await asyncio.sleep(minutes * 60 / 3)
        await asyncio.gather(*(one(client, key) for _ in range(48)))
        await asyncio.sleep(minutes * 60 / 3)
        for _ in range(25):  # failed authentications in a row: the address is throttled for a few seconds
            await one(client, unknown)

    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        await asyncio.gather(*(steady(client, n) for n in range(3)), nuisances(client), bursts(client))
    return statuses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--prometheus-bin", default="prometheus")
    parser.add_argument("--minutes", type=float, default=4)
    args = parser.parse_args(argv)
    output = args.output.resolve()
    work = Path(tempfile.mkdtemp(prefix="dashboard-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "tools.build_demo", str(work / ".models" / "demo")], cwd=ROOT, env=env,
                   check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    launch_log = work / "launch.log"
    with launch_log.open("w") as log_file:
        service = subprocess.Popen([sys.executable, "-m", "deployments.launch", str(ROOT / "serve_config.demo.yaml"),
                                    "--port", str(port)], cwd=work, env=env, stdout=log_file,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    prometheus = None
    try:
        wait_for("the demo", lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200,
                 600)
        # The node's metrics port listens on every interface; scrape it on loopback.
        target = "127.0.0.1:" + re.search(r"metrics: http://[^/\s]+:(\d+)/metrics", launch_log.read_text()).group(1)
        prom_port = free_port()
        (work / "prometheus.yml").write_text(
            "global: {scrape_interval: 2s}\n"
            f"scrape_configs: [{{job_name: ray, static_configs: [{{targets: ['{target}']}}]}}]\n")
        prometheus = subprocess.Popen([args.prometheus_bin, f"--config.file={work / 'prometheus.yml'}",
                                       f"--storage.tsdb.path={work / 'tsdb'}",
                                       f"--web.listen-address=127.0.0.1:{prom_port}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        prom = f"http://127.0.0.1:{prom_port}"
        wait_for("prometheus", lambda: httpx.get(f"{prom}/-/ready", timeout=5).status_code == 200, 60)

        from auth.accounts import Accounts
        from auth.db import make_engine

        accounts = Accounts(make_engine(f"sqlite:///{work / 'data' / 'ledger.sqlite3'}"))
        key = accounts.create_key(credits=1_000_000, rate_per_s=1000, burst=1000).key
        limited = accounts.create_key(credits=1000, rate_per_s=0.5, burst=2).key
        started = time.monotonic()
        statuses = asyncio.run(traffic(f"http://127.0.0.1:{port}", key, limited, args.minutes))
        print(f"traffic: {sum(statuses.values())} requests in {time.monotonic() - started:.0f} s: {statuses}")
        time.sleep(8)  # the last points reach Prometheus
        from tools.render_dashboard import DASHBOARD, render
        import json

        drawn = render(prom, output, minutes=args.minutes + 0.5, step_s=5, rate_interval="60s", application=".*",
                       dashboard=json.loads(DASHBOARD.read_text()))
        print(f"wrote {output} ({drawn} series)")
        return 0
    finally:
        for process in (prometheus, service):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
