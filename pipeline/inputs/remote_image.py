"""Fetch an image given as an http(s) URL without letting the URL reach internal services.

Defences: strict URL parsing; resolve once and refuse any non-public address (SSRF); connect to
that validated address without resolving again (DNS rebinding); re-validate every redirect
target; cap the body while streaming; bound each socket operation and the whole fetch in time.
"""
from __future__ import annotations

import functools
import http.client
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

USER_AGENT = "colorize-service/0.1 (image fetcher)"
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CHUNK_BYTES = 64 * 1024
_HOST_PATTERN = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?|[0-9a-f:.]+")  # DNS name or IP literal
# Characters that keep their meaning in a path/query; anything else non-ASCII gets percent-encoded.
_URL_SAFE_CHARS = "!#$%&'()*+,-./:;=?@[]_~"
# NAT64 well-known prefix: such an address reaches the embedded IPv4 address through the gateway.
_NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")
log = logging.getLogger(__name__)


class RemoteImageError(Exception):
    """A fetch failure carrying the HTTP status the service should answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class _Target:
    url: str
    scheme: str
    host: str  # lower-case, IDNA-encoded, without IPv6 brackets
    port: int
    request_path: str  # path + query, percent-encoded ASCII

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class _Redirect:
    location: str


def normalize_origin(origin: str) -> str:
    """``scheme://host:port`` in the form fetches compare against; ValueError when it is not one."""
    parts = urlsplit(origin.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if scheme not in _DEFAULT_PORTS or not parts.hostname or port is None or parts.path not in ("", "/") \
            or parts.query or "@" in parts.netloc:
        raise ValueError(f"{origin!r} is not an origin like http://host:port (scheme, host and port, nothing else)")
    host = parts.hostname.lower()
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def fetch_image_bytes(
    url: str,
    *,
    max_bytes: int,
    timeout_s: float = 10.0,
    max_redirects: int = 5,
    allow_hosts: frozenset[str] = frozenset(),
    total_timeout_s: float | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> bytes:
    """Download the body of `url` (at most `max_bytes`), following redirects safely.

    `timeout_s` bounds connect and each read; `total_timeout_s` (default 3 * timeout_s) bounds the
    whole fetch. Origins in `allow_hosts` (exactly ``scheme://host:port``) skip the public-address
    check: for tests and trusted internal stores; other ports of the same host stay refused.
    Raises RemoteImageError (status 400, 413 or 502); its message never carries network details
    (refused vs timed out vs TLS), which would let callers map private networks.
    """
    if max_bytes <= 0 or timeout_s <= 0:
        raise ValueError(f"max_bytes and timeout_s must be positive, got {max_bytes} and {timeout_s}")
    total = 3 * timeout_s if total_timeout_s is None else total_timeout_s
    limits = _Limits(max_bytes, timeout_s, time.monotonic() + total, ssl_context)
    allowed = frozenset(normalize_origin(origin) for origin in allow_hosts)
    current_url = url
    for _ in range(max_redirects + 1):
        target = _parse_url(current_url)
        outcome = _fetch_once(target, _resolve_allowed_addresses(target, allowed), limits)
        if not isinstance(outcome, _Redirect):
            return outcome
        current_url = urljoin(target.url, outcome.location)  # validated from scratch next round
    raise RemoteImageError(502, f"image URL redirected more than {max_redirects} times")


def _parse_url(url: str) -> _Target:
    if not url:
        raise RemoteImageError(400, "image URL is empty")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise RemoteImageError(400, "image URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        if (port := parts.port) == 0:
            raise ValueError("port 0 is not allowed")
    except ValueError as exc:  # bad IPv6 brackets, non-numeric or out-of-range port
        raise RemoteImageError(400, f"image URL is malformed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise RemoteImageError(400, f"image URL scheme must be http or https, got {scheme or 'none'!r}")
    if "@" in parts.netloc:
        raise RemoteImageError(400, "image URL must not contain credentials (user:password@)")
    if not parts.hostname:
        raise RemoteImageError(400, "image URL has no host")
    try:
        host = parts.hostname.encode("idna").decode("ascii").lower()
    except UnicodeError:
        host = ""
    if not _HOST_PATTERN.fullmatch(host):  # also refuses IPv6 zone ids ("%eth0")
        raise RemoteImageError(400, f"image URL host {parts.hostname!r} is not a valid host name")
    path = quote(parts.path or "/", safe=_URL_SAFE_CHARS)
    query = quote(parts.query, safe=_URL_SAFE_CHARS)
    request_path = f"{path}?{query}" if query else path
    return _Target(url, scheme, host, port or _DEFAULT_PORTS[scheme], request_path)


def _resolve_allowed_addresses(target: _Target, allowed: frozenset[str]) -> list[tuple[str, int]]:
    """Resolve once; every address must be public unless the host is explicitly allowed."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        log.info("resolving %r failed: %s", target.host, exc)
        raise RemoteImageError(502, f"could not resolve image host {target.host!r}") from None
    addresses: list[tuple[str, int]] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        ip_text = str(sockaddr[0]).split("%", 1)[0]  # drop an IPv6 zone id
        if target.origin not in allowed:
            reason = _non_public_reason(ipaddress.ip_address(ip_text))
            if reason:
                message = f"image URL host {target.host!r} resolves to a {reason} address ({ip_text}); not allowed"
                raise RemoteImageError(400, message)
        if (ip_text, target.port) not in addresses:
            addresses.append((ip_text, target.port))
    return addresses


def _non_public_reason(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `ip` must not be contacted, or None if it is a globally routable unicast address."""
    embedded = _embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    if embedded is not None:
        reason = _non_public_reason(embedded)
        return f"{reason} (embedded in IPv6)" if reason else None
    site_local = isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local  # fec0::/10, not in is_private
    checks = (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
              ("multicast", ip.is_multicast), ("private", ip.is_private), ("site-local", site_local),
              ("reserved", ip.is_reserved), ("non-global", not ip.is_global))
    return next((name for name, hit in checks if hit), None)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address really reaches (mapped, 6to4, NAT64), if any."""
    nat64 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64_PREFIX else None
    return ip.ipv4_mapped or ip.sixtofour or nat64  # address objects are always truthy


class _Watchdog:
    """Shuts the socket down at the overall deadline, so slow-drip servers cannot hold a fetch."""

    def __init__(self, deadline: float) -> None:
        self.fired = False
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            self._shutdown_if_fired()

    def stop(self) -> None:
        self._timer.cancel()
        self.watch(None)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            self._shutdown_if_fired()

    def _shutdown_if_fired(self) -> None:
        if self.fired and self._sock is not None:
            try:  # the plain-socket shutdown also wakes a reader blocked inside TLS
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
            except OSError:
                pass


@functools.cache
def _default_tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()  # verifies certificates; loading the CA store takes ~30 ms, so reuse it


@dataclass(frozen=True)
class _Limits:
    max_bytes: int
    timeout_s: float
    deadline: float  # time.monotonic() value
    context: ssl.SSLContext | None  # None: the system CA store


class _PinnedConnection(http.client.HTTPConnection):
    """HTTP(S) connection to an already validated IP, keeping the original Host and TLS name."""

    def __init__(self, target: _Target, address: tuple[str, int], limits: _Limits, watchdog: _Watchdog) -> None:
        super().__init__(target.host, target.port, timeout=limits.timeout_s)
        self.default_port = _DEFAULT_PORTS[target.scheme]  # Host header omits the default port
        self._target, self._address, self._limits, self._watchdog = target, address, limits, watchdog

    def connect(self) -> None:
        remaining = self._limits.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed before connecting")
        sock = socket.create_connection(self._address, min(self._limits.timeout_s, remaining))
        self._watchdog.watch(sock)
        self.sock = sock
        if self._target.scheme == "https":
            context = self._limits.context or _default_tls_context()
            tls = context.wrap_socket(sock, server_hostname=self._target.host, do_handshake_on_connect=False)
            self.sock = tls
            self._watchdog.watch(tls)  # wrapping detached the plain socket
            tls.do_handshake()


def _fetch_once(target: _Target, addresses: list[tuple[str, int]], limits: _Limits) -> bytes | _Redirect:
    watchdog = _Watchdog(limits.deadline)
    timed_out = RemoteImageError(502, f"fetching the image from {target.host!r} timed out")
    try:
        outcome = _connect_and_read(target, addresses, limits, watchdog)
    except (RemoteImageError, OSError, http.client.HTTPException) as exc:
        # The watchdog's shutdown surfaces as a reset, a TLS error or an early EOF (a short response).
        if watchdog.fired or isinstance(exc, TimeoutError):
            raise timed_out from None
        if isinstance(exc, RemoteImageError):
            raise
        log.info("fetching from %r failed: %s: %s", target.host, type(exc).__name__, exc)
        raise RemoteImageError(502, f"could not fetch the image from {target.host!r}") from None
    finally:
        watchdog.stop()
    if watchdog.fired:  # an EOF forced by the watchdog can look like a complete, truncated body
        raise timed_out
    return outcome


def _connect_and_read(
    target: _Target, addresses: list[tuple[str, int]], limits: _Limits, watchdog: _Watchdog
) -> bytes | _Redirect:
    last_error: OSError = OSError(f"no address to connect to for {target.host!r}")
    for address in addresses:
        conn = _PinnedConnection(target, address, limits, watchdog)
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            if isinstance(exc, ssl.SSLError):
                raise  # a TLS failure is not a reason to try another address
            last_error = exc
            continue
        try:
            return _request(conn, target, limits.max_bytes)
        finally:
            conn.close()
    raise last_error


def _request(conn: _PinnedConnection, target: _Target, max_bytes: int) -> bytes | _Redirect:
    headers = {"User-Agent": USER_AGENT, "Accept": "image/*", "Accept-Encoding": "identity", "Connection": "close"}
    conn.request("GET", target.request_path, headers=headers)
    with conn.getresponse() as response:  # closing it matters: it owns the socket once headers are read
        if (status := response.status) in _REDIRECT_STATUSES:
            location = response.getheader("Location")
            if not location:
                raise RemoteImageError(502, f"image URL redirect (HTTP {status}) has no Location header")
            return _Redirect(location.strip())
        if 400 <= status < 500:
            raise RemoteImageError(400, f"image URL returned HTTP {status}")
        if not 200 <= status < 300:
            raise RemoteImageError(502, f"image URL returned HTTP {status}")
        encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
        if encoding != "identity":
            raise RemoteImageError(502, f"image URL sent unsupported Content-Encoding {encoding!r}")
        declared = (response.getheader("Content-Length") or "").strip()
        if declared.isdigit() and int(declared) > max_bytes:
            raise RemoteImageError(413, f"image is {int(declared)} bytes; the limit is {max_bytes}")
        body = _read_capped(response, max_bytes)
        if not body:
            raise RemoteImageError(400, "image URL returned an empty body")
        return body


def _read_capped(response: http.client.HTTPResponse, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    received = 0
    while True:
        chunk = response.read1(_CHUNK_BYTES)  # one socket read at most, so the cap acts promptly
        if not chunk:
            return b"".join(chunks)
        received += len(chunk)
        if received > max_bytes:
            raise RemoteImageError(413, f"image is larger than the limit of {max_bytes} bytes")
        chunks.append(chunk)
