"""The colorize-admin CLI (on SQLite and PostgreSQL) and the demo key."""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from auth import AuthSettings, JobRequest, ensure_demo_key
from auth.accounts import Accounts
from auth.admin import main
from auth.db import make_engine
from auth.keys import generate_key
from auth.ledger import Ledger
from tests.auth_fixtures import database_url, postgres_server, postgres_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]


def _cli(capsys, url: str, *args: str) -> tuple[int, str, str]:
    code = main(["--database-url", url, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_manages_keys_credits_and_usage(capsys, database_url: str):  # noqa: F811
    code, out, err = _cli(capsys, database_url, "keys", "create", "--credits", "5", "--rate", "2", "--burst", "3",
                          "--name", "Acme Ltd")
    assert code == 0 and "cannot be shown again" in err
    key = re.search(r"api key: (ck_live_\S+)", out).group(1)
    key_id = re.search(r"key id:\s+([0-9a-f]{12})", out).group(1)
    assert key_id in key

    code, out, _ = _cli(capsys, database_url, "keys", "list")
    assert code == 0 and key_id in out and "Acme Ltd" in out and key not in out
    assert re.search(rf"{key_id}\s+5\s+2\s+3\s", out)

    assert _cli(capsys, database_url, "credits", "add", key_id, "7")[1].strip() == f"{key_id}: balance 12"

    engine = make_engine(database_url)
    try:
        ledger = Ledger(engine)
        job = JobRequest("POST /api/v1/colorize", price=3, details={"model": "tiny", "face_remaster": "true"})
        ledger.finish_job(ledger.open_job(key, job), result_id="done.png", response=None)
        ledger.fail_job(ledger.open_job(key, job), "StageFailed: boom")
    finally:
        engine.dispose()
    code, out, _ = _cli(capsys, database_url, "usage", key_id)
    assert code == 0 and "done.png" in out and "StageFailed: boom" in out and "face_remaster" in out
    assert re.search(r"succeeded\s+1 jobs\s+3 credits", out) and re.search(r"failed\s+1 jobs", out)
    assert _cli(capsys, database_url, "usage")[0] == 0

    assert _cli(capsys, database_url, "keys", "revoke", key_id)[0] == 0
    code, _, err = _cli(capsys, database_url, "keys", "revoke", key_id)
    assert code == 1 and "already revoked" in err
    code, _, err = _cli(capsys, database_url, "credits", "add", "not-an-id", "1")
    assert code == 1 and "key id" in err
    code, _, err = _cli(capsys, database_url, "usage", "0123456789ab")
    assert code == 1 and "no key" in err
    assert _cli(capsys, database_url, "sweep")[1].startswith("released 0")


def test_cli_runs_as_a_module_with_the_url_from_the_environment(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'env-ledger.sqlite3'}"
    env = {**os.environ, "COLORIZE_DATABASE_URL": url}
    done = subprocess.run([sys.executable, "-m", "auth.admin", "keys", "create", "--credits", "1"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "env-ledger.sqlite3").exists() and "ck_live_" in done.stdout


def test_demo_key_from_the_environment_is_created_once(tmp_path: Path):
    settings = AuthSettings(database_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    wanted = generate_key()
    environ = {"DEMO_API_KEY": wanted.key}
    assert ensure_demo_key(settings, environ, credits=50) == wanted.key
    assert ensure_demo_key(settings, environ, credits=50) == wanted.key
    engine = make_engine(settings.database_url)
    try:
        [info] = Accounts(engine).list_keys()
        assert (info.key_id, info.balance, info.name) == (wanted.key_id, 50, "demo")  # not topped up twice
        assert (info.rate_per_s, info.burst) == (50.0, 100)  # a folder of photos is not held to 1/s
    finally:
        engine.dispose()
    with pytest.raises(ValueError, match="DEMO_API_KEY is set but is not a valid API key"):
        ensure_demo_key(settings, {"DEMO_API_KEY": "demo123"})


def test_demo_key_without_the_environment_is_kept_beside_the_ledger(tmp_path: Path):
    settings = AuthSettings(database_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    first = ensure_demo_key(settings, {})
    assert ensure_demo_key(settings, {}) == first
    key_file = tmp_path / "demo_api_key"
    assert key_file.read_text().strip() == first and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    with pytest.raises(ValueError, match="disabled"):
        ensure_demo_key(AuthSettings(database_url=None), {})
