"""API key format: generation, parsing and hashing. No database here.

A key looks like ``ck_live_<key id>_<secret>``: the 12-hex-char key id is not secret (it is
what ``keys list``/``usage`` show and how a key is looked up), the secret is 32 random bytes.
Only SHA-256 of the whole key is stored. A plain, fast hash is enough because the key
carries 256 bits of randomness: a leaked hash cannot be brute-forced, so a slow KDF or a
pepper would add cost without adding safety (unlike for human-chosen passwords).
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

KEY_PREFIX = "ck_live_"
KEY_ID_CHARS = 12
SECRET_BYTES = 32
_KEY = re.compile(rf"^{KEY_PREFIX}(?P<key_id>[0-9a-f]{{{KEY_ID_CHARS}}})_(?P<secret>[A-Za-z0-9_-]{{43}})$")
_KEY_ID = re.compile(rf"^[0-9a-f]{{{KEY_ID_CHARS}}}$")
# Compared against when the key id is unknown, so that path costs the same as a wrong secret.
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()


class InvalidKeyFormat(ValueError):
    """The text is not an API key of this service (the message never repeats the text)."""


@dataclass(frozen=True)
class NewKey:
    key_id: str
    key: str        # the full key: shown once, never stored
    key_hash: str   # what is stored


def generate_key() -> NewKey:
    key_id = secrets.token_hex(KEY_ID_CHARS // 2)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(SECRET_BYTES)}"
    return NewKey(key_id=key_id, key=key, key_hash=hash_key(key))


def parse_key(text: str) -> NewKey:
    """Validate a presented or configured key and return its id and hash."""
    match = _KEY.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise InvalidKeyFormat(f"not an API key: expected '{KEY_PREFIX}' + 12 hex chars + '_' + 43 url-safe chars")
    key = match.group(0)
    return NewKey(key_id=match.group("key_id"), key=key, key_hash=hash_key(key))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def hash_matches(stored_hash: str | None, presented_hash: str) -> bool:
    """Constant-time comparison; an unknown key (no stored hash) still does the comparison."""
    return hmac.compare_digest(stored_hash or _DUMMY_HASH, presented_hash) and stored_hash is not None


def validate_key_id(key_id: str) -> str:
    if not _KEY_ID.fullmatch(key_id):
        raise InvalidKeyFormat(f"not a key id: expected {KEY_ID_CHARS} lowercase hex characters, e.g. 3f9a0c12b7de")
    return key_id
