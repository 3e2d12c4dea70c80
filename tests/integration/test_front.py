"""What reaches the service from outside, through Serve's real proxy: credentials checked before
a body is read, bounded request ids, and a `make demo` box whose Ray listens on loopback only."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from tests.helpers import free_port
from tests.integration.conftest import demo_args

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def _is_ray_dashboard(port: int) -> bool:
    """The dashboard process's HTTP listener answers its version API, behind Ray's token auth
    (found by asking, not by the default port 8265, which another Ray on the machine may hold)."""
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/api/version", timeout=2)
    except httpx.HTTPError:
        return False
    return (answer.status_code == 200 and "ray_version" in answer.text) or \
        (answer.status_code == 401 and "authentication token" in answer.text)


def _status_line(url: str, request: bytes, timeout_s: float) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(request)
        return sock.recv(4096).split(b"\r\n", 1)[0]


@pytest.mark.parametrize("key", [None, "ck_live_0123456789ab_" + "x" * 40])
def test_a_bad_key_is_refused_before_the_body_is_sent(service, key):
    """Headers announce 1.5 MB and no body byte follows: the 401 must come anyway."""
    headers = [b"POST /api/v1/colorize HTTP/1.1", b"Host: 127.0.0.1", b"Content-Length: 1500000",
               b"Content-Type: multipart/form-data; boundary=x"] + ([f"X-Api-Key: {key}".encode()] if key else [])
    started = time.monotonic()
    assert _status_line(service["url"], b"\r\n".join(headers) + b"\r\n\r\n", timeout_s=20) == b"HTTP/1.1 401 Unauthorized"
    assert time.monotonic() - started < 10


def test_a_clients_request_id_is_kept_only_when_short_and_plain(client):
    assert client.get("/health", headers={"X-Request-Id": "job-42.a:b"}).headers["x-request-id"] == "job-42.a:b"
    for unusable in ("x" * 65, "a b", "<script>", "\xfc".encode("latin-1")):
        answer = client.get("/health", headers={"X-Request-Id": unusable})
        ids = answer.headers.get_list("x-request-id")
        assert len(ids) == 1 and ids[0] not in (unusable, "\xfc") and len(ids[0]) <= 64, (unusable, ids)


def test_make_demo_exposes_the_api_where_host_says_and_the_dashboard_only_on_loopback(models_dir, tmp_path):
    """The launcher as `make demo HOST=0.0.0.0` runs it: the API on every interface, Ray's dashboard
    (which accepts jobs, i.e. runs code) on loopback only. Ray 2.60's core gRPC servers and its
    runtime-env agent listen beyond loopback whatever the node IP; they require Ray's cluster token,
    and docs/deploy.md lists the ports to firewall."""
    config = yaml.safe_load((ROOT / "serve_config.demo.yaml").read_text())
    config["applications"][0]["args"] = demo_args(tmp_path, models_dir)
    config_path = tmp_path / "demo.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    process = subprocess.Popen([sys.executable, "-m", "deployments.launch", str(config_path), "--host", "0.0.0.0",
                                "--port", str(port)], cwd=tmp_path,
                               env={**environ, "PYTHONPATH": str(ROOT), "COLORIZE_PUBLIC_BASE_URL": "https://colorize.test"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, "the launcher exited"
            time.sleep(1)
        else:
            pytest.fail("the demo did not come up")
        tree = [process.pid] + [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
        sockets = [c for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.pid in tree]
        listening = {(c.laddr.ip, c.laddr.port) for c in sockets}
        assert ("0.0.0.0", port) in listening  # the API, where HOST says
        heads = {p.pid for p in psutil.Process(process.pid).children(recursive=True)
                 if any(part.endswith("dashboard/dashboard.py") for part in _cmdline(p))}
        dashboard = {(c.laddr.ip, c.laddr.port) for c in sockets
                     if c.pid in heads and _is_ray_dashboard(c.laddr.port)}
        assert dashboard and {ip for ip, _ in dashboard} <= {"127.0.0.1", "::1"}, sorted(listening)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
