"""Fixtures for the auth tests: a real PostgreSQL server, ledger URLs for both databases,
and a loopback JWKS server with a local RSA key for App Check tokens.

Import the fixtures into a test module (``from tests.auth_fixtures import ...``).
"""
from __future__ import annotations

import atexit
import glob
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.helpers import free_port

PROJECT_ID = "colorize-test"
PROJECT_NUMBER = "123456789012"
ISSUER = f"https://firebaseappcheck.googleapis.com/{PROJECT_NUMBER}"
APP_ID = "1:123456789012:web:0a1b2c3d4e5f"


def _postgres_bindir() -> Path | None:
    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if all((Path(bindir) / tool).exists() for tool in ("initdb", "pg_ctl")):
            return Path(bindir)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


_server: PostgresServer | None = None  # one server per test session, however many modules import the fixture


class PostgresServer:
    """A throwaway PostgreSQL server on 127.0.0.1 that tests can stop and start again (same port and
    data), to take the ledger away from a running service. Removed when the test process exits."""

    def __init__(self) -> None:
        bindir = _postgres_bindir()
        if bindir is None:
            reason = "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)"
            if os.environ.get("REQUIRE_POSTGRES") == "1":
                pytest.fail(f"{reason}, and REQUIRE_POSTGRES=1")
            pytest.skip(f"{reason}; set REQUIRE_POSTGRES=1 to make this a failure")
        self.bindir = bindir
        # PostgreSQL refuses to run as root: run its tools as the `postgres` OS user then.
        self.as_owner: list[str] = []
        self.root = Path(tempfile.mkdtemp(prefix="colorize-pg-"))
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        self.data, self.port = self.root / "data", free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync",
                  "--no-instructions", timeout=120)
        self.start()
        atexit.register(self.remove)

    def start(self) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options,
                  "-w", "-t", "60", "start", timeout=90)

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", timeout=60)

    def remove(self) -> None:
        subprocess.run(self.as_owner + [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                                        "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, tool: str, *args: str, timeout: float) -> None:
        try:
            subprocess.run(self.as_owner + [str(self.bindir / tool), *args], check=True, capture_output=True,
                           timeout=timeout)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
            output = getattr(exc, "stderr", b"") or b""
            pytest.fail(f"PostgreSQL {tool} failed: {exc}\n{output.decode(errors='replace')}\n{log}")


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The session's PostgreSQL server: the URL of its maintenance database."""
    global _server
    if _server is None:
        _server = PostgresServer()
    return _server.url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the session's server."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:16]}"
    plain = postgres_server.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_server.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path: Path) -> str:
    """The ledger URL, once per database: every test using it runs on SQLite and PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    return request.getfixturevalue("postgres_url")


class SigningKeys:
    """A local RSA key served as a JWKS on loopback, and a token factory."""

    def __init__(self, jwks_url: str, private_key: rsa.RSAPrivateKey, kid: str):
        self.jwks_url, self.private_key, self.kid = jwks_url, private_key, kid

    def token(self, *, drop: tuple[str, ...] = (), headers: dict | None = None, key=None,
              algorithm: str = "RS256", **claims) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "sub": APP_ID, "aud": [f"projects/{PROJECT_NUMBER}", f"projects/{PROJECT_ID}"],
                   "iat": now, "exp": now + 3600, **claims}
        for name in drop:
            payload.pop(name, None)
        header = {"kid": self.kid, "typ": "JWT", **(headers or {})}
        return jwt.encode(payload, key if key is not None else self.private_key, algorithm=algorithm, headers=header)


@pytest.fixture(scope="session")
def signing_keys() -> Iterator[SigningKeys]:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = "test-key-1"
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": kid, "alg": "RS256", "use": "sig"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield SigningKeys(f"http://127.0.0.1:{server.server_address[1]}/v1/jwks", private_key, kid)
    finally:
        server.shutdown()
        server.server_close()
