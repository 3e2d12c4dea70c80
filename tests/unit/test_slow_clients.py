"""The proxy's connection bounds and parser errors (deployments/proxy_hooks) on a real uvicorn server
in this process, patched on a subclass of its HTTP protocol so nothing else here is touched; no Ray."""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from deployments.proxy_hooks import answer_malformed_requests_in_json, bound_slow_clients

CAP = 4


@pytest.fixture
def bounded_server():
    """A uvicorn server whose protocol keeps at most CAP connections and closes one that has not
    sent its headers within 3 s; ``/slow`` holds its request until the test releases it."""
    class Bounded(HttpToolsProtocol):
        pass

    assert bound_slow_clients(3.0, CAP, protocol=Bounded)
    assert answer_malformed_requests_in_json(protocol=Bounded)
    release = threading.Event()

    async def slow(request):
        while not release.is_set():
            await asyncio.sleep(0.02)
        return PlainTextResponse("done")

    app = Starlette(routes=[Route("/livez", lambda request: PlainTextResponse("ok")), Route("/slow", slow)])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http=Bounded, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", port, release
    release.set()
    server.should_exit = True
    thread.join(10)


def closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(4096) == b""
    except (TimeoutError, socket.timeout):
        return False
    except OSError:
        return True


def test_idle_sockets_at_the_cap_give_way_to_a_probe_oldest_first(bounded_server):
    url, port, _ = bounded_server
    idle = []
    for partial in (b"", b"GET /liv", b"GET /livez HTTP/1.1\r\nHost: x\r\n", b""):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(partial)
        idle.append(sock)
        time.sleep(0.05)  # opened in this order
    try:
        probe = httpx.get(f"{url}/livez", timeout=2, headers={"Connection": "close"})
        assert probe.text == "ok"  # the probe took the oldest's place
        assert closed_by_server(idle[0], 2)
        assert not any(closed_by_server(sock, 0.2) for sock in idle[1:])  # the probe's place is free again
        for _ in range(2):  # the first fills that place, the second makes the next oldest go
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        assert closed_by_server(idle[1], 2)
        assert not any(closed_by_server(sock, 0.2) for sock in idle[2:])
        # ...and the rest still go when their headers are overdue
        assert all(closed_by_server(sock, 5) for sock in idle[2:])
    finally:
        for sock in idle:
            sock.close()


def test_a_newcomer_is_refused_only_when_every_place_serves_a_request(bounded_server):
    url, port, release = bounded_server
    busy = []
    for _ in range(CAP):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        busy.append(sock)
    time.sleep(0.3)  # all CAP requests are in the app now
    try:
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/livez", timeout=2)
        release.set()
        for sock in busy:  # the requests in flight were not disturbed
            sock.settimeout(5)
            assert b"200 OK" in sock.recv(4096)
        assert httpx.get(f"{url}/livez", timeout=2).text == "ok"
    finally:
        for sock in busy:
            sock.close()


def test_a_request_the_parser_cannot_read_is_answered_in_the_contracts_shape(bounded_server):
    _, port, _ = bounded_server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost x\r\n\r\n")  # a header line without its colon
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head.lower()
    assert json.loads(body) == {"detail": "malformed request"}
