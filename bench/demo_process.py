"""`make demo` in a subprocess with all its state in one folder: for tests and benchmarks that
must stop, kill and restart the service itself (the client's restart test, bench/cli.py).

It runs what `make demo` runs (``python -m deployments.launch`` on serve_config.demo.yaml, so
``serve run`` with the CPU Ray settings) with the storage, the SQLite ledger and the model paths
moved into ``workdir``, in a process group of its own so that ``kill()`` takes Ray with it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "serve_config.demo.yaml"


class DemoService:
    def __init__(self, workdir: Path, models: Path, port: int, *, auth: dict[str, Any] | None = None):
        from tools.build_demo import model_args

        self.workdir, self.port = Path(workdir), port
        self.url = f"http://127.0.0.1:{port}"
        self.ledger_url = f"sqlite:///{self.workdir / 'ledger.sqlite3'}"
        config = yaml.safe_load(DEMO_CONFIG.read_text())
        args = config["applications"][0]["args"]
        args.update(model_args(models))
        args["storage"]["root"] = str(self.workdir / "storage")
        args["model_cache_dir"] = str(self.workdir / "model-cache")
        args["auth"].update({"database_url": self.ledger_url, "database_url_env": None, **(auth or {})})
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = self.workdir / "serve_config.yaml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = self.workdir / "service.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180) -> float:
        """Start and wait until the tiny model answers; returns the seconds it took."""
        started = time.monotonic()
        env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)  # its own cluster, never the caller's
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "deployments.launch", str(self.config), "--host", "127.0.0.1",
                 "--port", str(self.port)], cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the demo service exited ({self.process.returncode}):\n{self.log_tail()}")
            if time.monotonic() - started > timeout_s:
                self.kill()
                raise TimeoutError(f"the demo service was not ready within {timeout_s:.0f} s:\n{self.log_tail()}")
            if self._tiny_ready():
                return time.monotonic() - started
            time.sleep(0.5)

    def _tiny_ready(self) -> bool:
        try:
            health = httpx.get(f"{self.url}/health", timeout=5, trust_env=False)
        except httpx.HTTPError:
            return False
        return health.status_code == 200 and bool(health.json().get("models", {}).get("tiny", {}).get("loaded"))

    def kill(self) -> None:
        """Crash it: SIGKILL to every process of its session at once (serve run, Ray's daemons, the
        proxy, every replica). Ray puts workers in process groups of their own and they die only when
        their raylet notices, so killing the group alone leaves the proxy answering for seconds."""
        if self.process is None:
            return
        for pid in self.service_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=30)
        self._wait_port_closed()

    def service_pids(self) -> list[int]:
        """Every process of the running service (serve run, Ray's daemons, the proxy, replicas)."""
        session, found = self.process.pid, []  # start_new_session: the session id is its pid
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as stat:
                        fields = stat.read().rsplit(")", 1)[1].split()
                except (FileNotFoundError, ProcessLookupError, IndexError):
                    continue
                if int(fields[3]) == session:  # after the name: state, ppid, pgrp, session
                    found.append(int(entry))
        return found

    def stop(self, timeout_s: float = 20) -> None:
        """Stop it as a terminal would (SIGTERM; `serve run` then shuts Ray down), then kill what is left."""
        if self.process is None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
        self.process.wait(timeout=30)
        self.kill()  # Ray processes that outlived serve run

    def _signal_group(self, number: int) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, number)  # start_new_session: the group id is its pid
        except ProcessLookupError:
            pass

    def _wait_port_closed(self, timeout_s: float = 15) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/-/healthz", timeout=1, trust_env=False)
            except httpx.HTTPError:
                return
            time.sleep(0.2)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def create_key(self, credits: int, *, rate_per_s: float = 1000, burst: int = 1000) -> str:
        from auth.accounts import Accounts
        from auth.db import make_engine

        engine = make_engine(self.ledger_url)
        try:
            return Accounts(engine).create_key(credits=credits, rate_per_s=rate_per_s, burst=burst).key
        finally:
            engine.dispose()

    def __enter__(self) -> DemoService:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
