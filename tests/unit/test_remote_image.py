"""fetch_image_bytes against throwaway loopback servers; nothing here touches the real internet."""
from __future__ import annotations

import functools
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from pipeline.inputs.remote_image import USER_AGENT, RemoteImageError, fetch_image_bytes

pytestmark = pytest.mark.timeout(30)

IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
FIFTY_MB = 50 * 1024 * 1024
PUBLIC_IP = "93.184.216.34"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _RecordingServer

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.path, dict(self.headers)))
        route, _, arg = self.path.lstrip("/").split("?")[0].partition("/")
        number = int(arg) if arg.isdigit() else 0
        simple = {
            "image": (200, IMAGE, {}), "empty": (200, b"", {}), "status": (number, b"error page", {}),
            "loop": (301, b"", {"Location": "/loop"}),  # /redirect/2 -> /redirect/1 -> /redirect/0 -> /image
            "redirect": (302, b"", {"Location": f"/redirect/{number - 1}" if number else "/image"}),
            "to": (307, b"", {"Location": unquote(self.path.partition("?")[2])}),  # /to?<encoded URL>
        }
        if route in simple:
            self._reply(*simple[route])
        elif route == "chunked":
            chunks = [b"%x\r\n%s\r\n" % (len(p), p) for p in (IMAGE[:100], IMAGE[100:1000], IMAGE[1000:])]
            self._write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", *chunks, b"0\r\n\r\n")
        elif route == "huge":  # tries to send 50 MB, with or without announcing it
            length = f"Content-Length: {FIFTY_MB}\r\n" if arg == "declared" else ""
            head = f"HTTP/1.1 200 OK\r\n{length}Connection: close\r\n\r\n".encode()
            self.server.huge_sent = self._write(head, *[bytes(256 * 1024)] * (FIFTY_MB // (256 * 1024)))
            self.server.huge_done.set()
        elif route == "drip":  # headers at once, then one body byte per 50 ms
            head = b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n"
            self._write(head, *[b"\0"] * 400, pause_s=0.05)
        elif route == "drip-headers":  # even the status line arrives slowly
            head = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 400 + b"\r\n\r\n"
            self._write(*(head[i : i + 1] for i in range(len(head))), pause_s=0.05)
        elif route == "silent":
            time.sleep(3)

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), "Connection": "close", **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _write(self, *pieces: bytes, pause_s: float = 0.0) -> int:
        """Raw bytes until done or the client hangs up; returns how many got out."""
        sent = 0
        try:
            for piece in pieces:
                self.wfile.write(piece)
                self.wfile.flush()
                sent += len(piece)
                time.sleep(pause_s)
        except OSError:
            pass
        return sent


class _RecordingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.huge_sent = 0
        self.huge_done = threading.Event()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def _serve(server: ThreadingHTTPServer) -> Iterator[ThreadingHTTPServer]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def server() -> Iterator[_RecordingServer]:
    yield from _serve(_RecordingServer())  # type: ignore[misc]


def _fetch(url: str, **kwargs: object) -> bytes:
    """Fetch with the URL's own origin allowed (test servers live on loopback)."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}" if parts.port else url
    return fetch_image_bytes(url, **{"max_bytes": 1_000_000, "timeout_s": 2.0, "allow_hosts": frozenset({origin}),
                                     **kwargs})


def _expect_error(status: int, url: str, **kwargs: object) -> RemoteImageError:
    with pytest.raises(RemoteImageError) as caught:
        _fetch(url, **kwargs)
    assert caught.value.status == status, caught.value.message
    return caught.value


@pytest.fixture
def no_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "create_connection", lambda *args: pytest.fail(f"fetch tried to connect: {args}"))


def _fake_network(
    monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]], local_port: int | None = None
) -> tuple[list[str], list[tuple[str, int]]]:
    """DNS answers `answers`; with local_port every dial lands there. Returns (lookups, dials)."""
    real_getaddrinfo, real_create_connection = socket.getaddrinfo, socket.create_connection
    lookups: list[str] = []
    dialled: list[tuple[str, int]] = []

    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list:
        lookups.append(host)
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in answers[host]]
        return real_getaddrinfo(host, port, *args, **kwargs)

    def create_connection(address: tuple[str, int], timeout: float, *args: object) -> socket.socket:
        dialled.append(address)
        return real_create_connection(("127.0.0.1", local_port), timeout)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    if local_port is not None:
        monkeypatch.setattr(socket, "create_connection", create_connection)
    return lookups, dialled


def test_fetches_body_and_sends_identifying_headers(server: _RecordingServer) -> None:
    assert _fetch(f"{server.base}/image") == IMAGE
    sent = {name: server.requests[0][1][name] for name in ("User-Agent", "Accept", "Accept-Encoding")}
    assert sent == {"User-Agent": USER_AGENT, "Accept": "image/*", "Accept-Encoding": "identity"}


@pytest.mark.parametrize(
    ("path", "options"),
    [("/chunked", {}), ("/image", {"max_bytes": len(IMAGE)}), ("/redirect/2", {"max_redirects": 3})],
)  # chunked encoding; a body exactly at the cap; three redirects within a limit of three
def test_successful_fetches_return_the_whole_body(server: _RecordingServer, path: str, options: dict) -> None:
    assert _fetch(server.base + path, **options) == IMAGE


def test_public_host_is_dialled_at_the_validated_ip_with_original_host_header(
    server: _RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups, dialled = _fake_network(monkeypatch, {"images.example": [PUBLIC_IP]}, server.server_address[1])
    assert fetch_image_bytes("http://images.example/image", max_bytes=10_000) == IMAGE
    assert dialled == [(PUBLIC_IP, 80)]
    assert lookups.count("images.example") == 1  # one lookup: a rebinding second answer is never asked for
    assert server.requests[0][1]["Host"] == "images.example"


@pytest.mark.parametrize("declared", ["declared", "undeclared"])
def test_oversized_body_is_refused_without_reading_it_all(server: _RecordingServer, declared: str) -> None:
    started = time.monotonic()
    error = _expect_error(413, f"{server.base}/huge/{declared}", max_bytes=100_000)
    assert "limit" in error.message
    assert time.monotonic() - started < 5
    assert server.huge_done.wait(10), "server never noticed the client hang up"
    assert server.huge_sent < FIFTY_MB


def test_body_one_byte_over_the_cap_is_refused(server: _RecordingServer) -> None:
    _expect_error(413, f"{server.base}/chunked", max_bytes=len(IMAGE) - 1)


@pytest.mark.parametrize(
    ("route", "timeout_s", "total_timeout_s"),
    [("drip", 1.0, 0.8), ("drip-headers", 1.0, 0.8), ("silent", 0.3, 10.0)],
)  # slow drips are stopped by the overall deadline, a silent server by the per-read timeout
def test_slow_servers_are_cut_off(
    server: _RecordingServer, route: str, timeout_s: float, total_timeout_s: float
) -> None:
    started = time.monotonic()
    error = _expect_error(502, f"{server.base}/{route}", timeout_s=timeout_s, total_timeout_s=total_timeout_s)
    assert "timed out" in error.message
    assert time.monotonic() - started < min(timeout_s, total_timeout_s) + 1.5


@pytest.mark.parametrize(("code", "expected"), [(404, 400), (403, 400), (500, 502), (503, 502)])
def test_remote_status_codes_map_to_service_statuses(server: _RecordingServer, code: int, expected: int) -> None:
    error = _expect_error(expected, f"{server.base}/status/{code}")
    assert f"HTTP {code}" in error.message


def test_empty_body_is_a_bad_request(server: _RecordingServer) -> None:
    _expect_error(400, f"{server.base}/empty")


def test_unreachable_port_is_a_bad_gateway() -> None:
    with socket.socket() as probe:  # bind then close: a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _expect_error(502, f"http://127.0.0.1:{port}/image")


@pytest.mark.parametrize(("path", "requests_made"), [("/loop", 5), ("/redirect/3", 3)])
def test_too_many_redirects_give_up(server: _RecordingServer, path: str, requests_made: int) -> None:
    error = _expect_error(502, server.base + path, max_redirects=requests_made - 1)
    assert f"redirected more than {requests_made - 1} times" in error.message
    assert len(server.requests) == requests_made


@pytest.mark.parametrize(
    ("target", "reason"),
    [("http://localhost:{port}/image", "loopback"), ("http://169.254.169.254/latest", "link-local"),
     ("http://10.0.0.1/", "private"), ("file:///etc/passwd", "scheme")],
)
def test_redirect_targets_are_validated_again(
    server: _RecordingServer, monkeypatch: pytest.MonkeyPatch, target: str, reason: str
) -> None:
    real_create_connection, dialled = socket.create_connection, []
    monkeypatch.setattr(socket, "create_connection", lambda a, *r: dialled.append(a) or real_create_connection(a, *r))
    location = target.format(port=server.server_address[1]).replace(":", "%3A").replace("/", "%2F")
    error = _expect_error(400, f"{server.base}/to?{location}")
    assert reason in error.message
    assert len(dialled) == 1 and [path for path, _ in server.requests] == [f"/to?{location}"]


UNSAFE_URLS = [  # (url, words the refusal must contain); 2002:: is 6to4 and 64:ff9b:: NAT64, wrapping IPv4
    ("http://127.0.0.1:8080/", "loopback"), ("http://localhost/", "loopback"), ("http://[::1]/", "loopback"),
    ("http://2130706433/", "loopback"), ("http://0x7f.0.0.1/", "loopback"), ("http://017700000001/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "loopback"), ("https://127.0.0.1/", "loopback"),
    ("http://[2002:7f00:1::]/", "loopback"), ("http://[64:ff9b::a00:1]/", "private"), ("http://10.1.2.3/", "private"),
    ("http://192.168.0.10:8080/", "private"), ("http://[fd00::1]/", "private"), ("http://[fe80::1]/", "link-local"),
    ("http://169.254.169.254/latest", "link-local"),
    ("http://100.64.0.1/", "non-global"), ("http://0.0.0.0/", "unspecified"), ("http://224.0.0.1/", "multicast"),
    ("ftp://x/", "scheme"), ("file:///etc/passwd", "scheme"), ("javascript:alert(1)", "scheme"),
    ("//example.com/a.png", "scheme"), ("http:///a.png", "no host"), ("http://user:pw@example.com/", "credentials"),
    ("http://user@example.com/", "credentials"), ("http://example.com\\@127.0.0.1/", "credentials"),
    ("http://example.com:abc/", "malformed"), ("http://example.com:99999/", "malformed"),
    ("http://example.com:0/", "malformed"), ("http://[fe80::1%25eth0]/", "not a valid host"),
    ("http://exa mple.com/", "whitespace"), ("http://example.com/a\r\nX-Injected: 1", "control"), ("", "empty"),
]


@pytest.mark.parametrize(("url", "reason"), UNSAFE_URLS)
def test_unsafe_or_malformed_urls_are_refused_without_connecting(no_connect: None, url: str, reason: str) -> None:
    with pytest.raises(RemoteImageError) as caught:
        fetch_image_bytes(url, max_bytes=1000)
    assert caught.value.status == 400
    assert reason in caught.value.message


def test_host_resolving_to_any_private_address_is_refused(monkeypatch: pytest.MonkeyPatch, no_connect: None) -> None:
    _fake_network(monkeypatch, {"mixed.example": [PUBLIC_IP, "10.0.0.7"]})
    error = _expect_error(400, "http://mixed.example/a.png", allow_hosts=frozenset())
    assert "10.0.0.7" in error.message


def test_tls_handshake_failure_is_a_bad_gateway(server: _RecordingServer, caplog: pytest.LogCaptureFixture) -> None:
    https_url = server.base.replace("http://", "https://") + "/image"  # plain HTTP behind https
    with caplog.at_level("INFO", logger="pipeline.inputs.remote_image"):
        assert _expect_error(502, https_url).message == "could not fetch the image from '127.0.0.1'"
    assert "SSL" in caplog.text  # the reason goes to the log, not to the client


def test_network_failures_look_alike_to_the_client(server: _RecordingServer) -> None:
    """Refused, reset and TLS failures give one message: clients cannot map ports with it."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    refused = _expect_error(502, f"http://127.0.0.1:{port}/image").message
    tls = _expect_error(502, server.base.replace("http://", "https://") + "/image").message
    assert refused == tls == "could not fetch the image from '127.0.0.1'"


def test_only_the_exact_allowed_origin_skips_the_private_address_check(server: _RecordingServer) -> None:
    other_port = f"http://127.0.0.1:{server.server_address[1] + 1}"
    error = _expect_error(400, server.base + "/image", allow_hosts=frozenset({other_port}))
    assert "loopback" in error.message
    assert _fetch(server.base + "/image", allow_hosts=frozenset({server.base})) == IMAGE


@pytest.mark.parametrize("address", ["fec0::1", "fec0:abcd::7"])
def test_site_local_ipv6_is_refused(monkeypatch: pytest.MonkeyPatch, no_connect: None, address: str) -> None:
    _fake_network(monkeypatch, {"site.example": [address]})
    assert "site-local" in _expect_error(400, "http://site.example/a.png", allow_hosts=frozenset()).message


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=img.test"
    command += f" -addext subjectAltName=DNS:img.test -keyout {key} -out {cert}"
    subprocess.run(command.split(), check=True, capture_output=True, timeout=20)
    return cert, key


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[_RecordingServer]:
    server = _RecordingServer()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    yield from _serve(server)  # type: ignore[misc]


@pytest.mark.parametrize(("host", "trusted"), [("img.test", True), ("other.test", True), ("img.test", False)])
def test_https_verifies_certificate_against_the_url_host(
    tls_server: _RecordingServer, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
    host: str, trusted: bool, caplog: pytest.LogCaptureFixture,
) -> None:
    _fake_network(monkeypatch, {host: [PUBLIC_IP]}, tls_server.server_address[1])
    context = ssl.create_default_context(cafile=str(certificate[0])) if trusted else None
    fetch = functools.partial(fetch_image_bytes, f"https://{host}/image", max_bytes=10_000, ssl_context=context)
    if host == "img.test" and trusted:  # the one name the certificate vouches for, from a trusted issuer
        assert fetch() == IMAGE and tls_server.requests[0][1]["Host"] == host
        return
    with pytest.raises(RemoteImageError) as caught, caplog.at_level("INFO", logger="pipeline.inputs.remote_image"):
        fetch()
    assert caught.value.status == 502 and "certificate" in caplog.text.lower()
