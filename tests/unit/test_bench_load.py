"""The benchmark's closed loop (bench/load.py) behaves like a client of the contract: a shed answer's
Retry-After is waited out before that client's next request, unless told to ignore it."""
from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.load import Target, closed_loop


class _AlwaysBusy(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 -- http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"detail": "busy"}'
        self.send_response(429)
        self.send_header("Retry-After", "1")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def busy_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AlwaysBusy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _run(url: str, honor: bool):
    target = Target(url, ((b"x", "application/octet-stream"),), timeout_s=5)
    return asyncio.run(closed_loop(target, 2, seconds=1.5, honor_retry_after=honor))


def test_a_shed_client_waits_as_told(busy_server):
    result = _run(busy_server, honor=True)
    assert 2 <= len(result.samples) <= 4  # two clients, at 0 s and after the 1 s they were told to wait
    assert {sample.status for sample in result.samples} == {429}


def test_a_client_told_to_ignore_it_resends_at_once(busy_server):
    assert len(_run(busy_server, honor=False).samples) > 20
