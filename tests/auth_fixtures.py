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


_server_url: str | None = None  # one server per test session, however many modules import the fixture


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """A throwaway PostgreSQL server on 127.0.0.1: the URL of its maintenance database.
    Stopped when the test process exits."""
    global _server_url
    if _server_url is None:
        _server_url = _start_postgres()
    return _server_url


def _start_postgres() -> str:
    bindir = _postgres_bindir()
    if bindir is None:
        reason = "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason}, and REQUIRE_POSTGRES=1")
        pytest.skip(f"{reason}; set REQUIRE_POSTGRES=1 to make this a failure")
    # PostgreSQL refuses to run as root: run its tools as the `postgres` OS user then.
    as_owner: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="colorize-pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_owner = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    try:
        subprocess.run(as_owner + [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                   "-E", "UTF8", "--no-sync", "--no-instructions"],
                       check=True, capture_output=True, timeout=120)
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB")
        subprocess.run(as_owner + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"),
                                   "-o", options, "-w", "-t", "60", "start"],
                       check=True, capture_output=True, timeout=90)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        output = getattr(exc, "stderr", b"") or b""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc}\n{output.decode(errors='replace')}\n{log}")

    def stop() -> None:
        subprocess.run(as_owner + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)

    atexit.register(stop)
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"


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
