"""The demo profile's API key: created once, reused on every launch, printed by the launcher."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy.engine import make_url

from .accounts import Accounts
from .db import make_engine
from .keys import InvalidKeyFormat, generate_key, hash_matches, parse_key
from .settings import AuthSettings

DEMO_KEY_ENV = "DEMO_API_KEY"
DEMO_CREDITS = 1000
DEMO_KEY_NAME = "demo"
# The default bucket (1 request/s) would hold a folder of photos to one a second on a machine that
# does 20-40: the demo key may use the whole box.
DEMO_RATE_PER_S, DEMO_BURST = 50.0, 100


def ensure_demo_key(settings: AuthSettings, environ: Mapping[str, str] = os.environ, *,
                    credits: int = DEMO_CREDITS, key_file: Path | None = None) -> str:
    """Return the demo API key, creating it in the ledger (with ``credits``) if it is not there.

    The key is ``$DEMO_API_KEY`` when set (it must be a valid key, e.g. one made by
    ``colorize-admin keys create``); otherwise a random key kept in ``key_file`` (default:
    ``demo_api_key`` beside a SQLite ledger, mode 0600) so every launch prints the same one.
    An existing key keeps its balance: launching twice does not add credits.
    """
    url = settings.effective_database_url(environ)
    if url is None:
        raise ValueError("API keys are disabled (auth.database_url is null): no demo key to create")
    engine = make_engine(url)
    try:
        accounts = Accounts(engine)
        configured = environ.get(DEMO_KEY_ENV, "").strip()
        if configured:
            try:
                wanted = parse_key(configured)
            except InvalidKeyFormat as exc:
                raise ValueError(f"{DEMO_KEY_ENV} is set but is not a valid API key: {exc}") from None
        else:
            key_file = key_file or _default_key_file(url)
            wanted = _read_key_file(key_file) if key_file else None
            if wanted is None:
                wanted = generate_key()
                if key_file:
                    _write_key_file(key_file, wanted.key)
        stored_hash = accounts.stored_hash(wanted.key_id)
        if stored_hash is None:
            accounts.create_key(credits=credits, name=DEMO_KEY_NAME, key=wanted, rate_per_s=DEMO_RATE_PER_S,
                                burst=DEMO_BURST)
        elif not hash_matches(stored_hash, wanted.key_hash):
            raise ValueError(f"key id {wanted.key_id} already belongs to another key in the ledger; "
                             f"choose another {DEMO_KEY_ENV} or delete {key_file or 'it'}")
        elif accounts.get(wanted.key_id).revoked_at is not None:
            raise ValueError(f"the demo key {wanted.key_id} has been revoked; unset {DEMO_KEY_ENV} "
                             f"or delete {key_file or 'the key file'} to get a new one")
        return wanted.key
    finally:
        engine.dispose()


def _default_key_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        return Path(parsed.database).parent / "demo_api_key"
    return None


def _read_key_file(path: Path):
    try:
        return parse_key(path.read_text())
    except (FileNotFoundError, InvalidKeyFormat):
        return None


def _write_key_file(path: Path, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")
