"""API key format and hashing, the price table, token bucket arithmetic, auth settings."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

import auth.keys
from auth import AuthSettings
from auth.keys import InvalidKeyFormat, generate_key, hash_key, hash_matches, parse_key, validate_key_id
from auth.ratelimit import take_token
from auth.settings import DEFAULT_ROUTES


def test_generated_keys_are_prefixed_random_and_parse_back():
    keys = [generate_key() for _ in range(50)]
    assert len({key.key for key in keys}) == 50 and len({key.key_id for key in keys}) == 50
    for key in keys:
        assert re.fullmatch(r"ck_live_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key.key)
        assert key.key_id in key.key
        assert parse_key(key.key) == key
        assert parse_key(f"  {key.key}\n") == key  # pasted with whitespace


def test_only_a_sha256_of_the_key_is_kept():
    key = generate_key()
    assert key.key_hash == hashlib.sha256(key.key.encode()).hexdigest()
    assert key.key not in key.key_hash and hash_key(key.key) == key.key_hash


@pytest.mark.parametrize("text", ["", "ck_live_", "sk_live_0123456789ab_" + "a" * 43,
                                  "ck_live_0123456789AB_" + "a" * 43, "ck_live_0123456789ab_" + "a" * 42,
                                  "ck_live_0123456789ab_" + "a" * 42 + "!", "ck_live_0123456789ab-" + "a" * 43])
def test_malformed_keys_are_refused_without_echoing_them(text):
    with pytest.raises(InvalidKeyFormat) as caught:
        parse_key(text)
    assert "a" * 40 not in str(caught.value)


def test_hash_comparison_is_constant_time_even_for_unknown_keys(monkeypatch):
    calls = []
    real = auth.keys.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.keys.hmac, "compare_digest", spy)
    key = generate_key()
    assert hash_matches(key.key_hash, key.key_hash)
    assert not hash_matches(key.key_hash, generate_key().key_hash)
    assert not hash_matches(None, key.key_hash)  # unknown key id: compared against a dummy all the same
    assert len(calls) == 3


def test_key_ids_are_validated():
    assert validate_key_id("0123456789ab") == "0123456789ab"
    for bad in ("0123", "0123456789AB", "../etc/passwd"):
        with pytest.raises(InvalidKeyFormat):
            validate_key_id(bad)


def test_token_bucket_starts_full_and_refills_at_the_rate():
    burst, rate, now = 3, 0.5, 1000.0
    state = (None, None)
    for _ in range(burst):
        decision = take_token(*state, now, rate_per_s=rate, burst=burst)
        assert decision.allowed
        state = (decision.tokens, decision.at)
    refused = take_token(*state, now, rate_per_s=rate, burst=burst)
    assert not refused.allowed and refused.retry_after_s == 2  # one token every 2 s
    assert not take_token(*state, now + 1.9, rate_per_s=rate, burst=burst).allowed
    assert take_token(*state, now + 1.9, rate_per_s=rate, burst=burst).retry_after_s == 1  # never 0
    assert take_token(*state, now + 2.0, rate_per_s=rate, burst=burst).allowed
    long_after = take_token(*state, now + 3600, rate_per_s=rate, burst=burst)
    assert long_after.allowed and long_after.tokens == burst - 1  # capped at the burst


def test_token_bucket_retry_after_rounds_up_and_ignores_clock_going_back():
    decision = take_token(0.25, 100.0, 100.0, rate_per_s=0.1, burst=5)
    assert not decision.allowed and decision.retry_after_s == 8  # 0.75 token at 0.1/s = 7.5 s -> 8
    backwards = take_token(0.5, 100.0, 40.0, rate_per_s=1.0, burst=5)
    assert not backwards.allowed and backwards.tokens == 0.5 and backwards.at == 100.0


def test_auth_settings_defaults_and_strictness():
    settings = AuthSettings()
    assert settings.route_policy() == DEFAULT_ROUTES
    assert settings.route_policy()["POST /api/v1/colorize"] == "api_key"
    assert settings.route_policy()["GET /download"] == "app_check"
    assert AuthSettings(routes={"POST /colorize": "either"}).route_policy()["POST /colorize"] == "either"
    for bad in ({"unknown": 1}, {"routes": {"/colorize": "none"}}, {"routes": {"POST /x": "password"}},
                {"app_check": {"projectid": "x"}}, {"database_url": "mysql://x"},
                {"database_url_env": "postgresql://user:secret@db/x"}, {"default_burst": 0}):
        with pytest.raises(ValidationError):
            AuthSettings.model_validate(bad)


def test_database_url_comes_from_the_environment_first_and_relative_sqlite_paths_resolve():
    settings = AuthSettings()
    assert settings.effective_database_url({}) == "sqlite:///data/ledger.sqlite3"
    assert settings.effective_database_url({"COLORIZE_DATABASE_URL": "postgresql+psycopg://db/x"}) \
        == "postgresql+psycopg://db/x"
    assert AuthSettings(database_url=None).effective_database_url({}) is None
    assert settings.resolved(Path("/srv/app")).database_url == "sqlite:////srv/app/data/ledger.sqlite3"
    absolute = AuthSettings(database_url="sqlite:////var/lib/ledger.sqlite3")
    assert absolute.resolved(Path("/srv")).database_url == "sqlite:////var/lib/ledger.sqlite3"


def test_request_fingerprint_is_order_insensitive_and_unambiguous():
    from auth import request_fingerprint

    fields = [("image", b"\x89PNG..."), ("model", "tiny"), ("face_remaster", "true")]
    same = request_fingerprint("POST /api/v1/colorize", fields)
    assert same.startswith("sha256:") and same == request_fingerprint("POST /api/v1/colorize", fields[::-1])
    assert same != request_fingerprint("POST /api/v1/colorize", [*fields[:2], ("face_remaster", "false")])
    assert same != request_fingerprint("POST /colorize", fields)
    assert request_fingerprint("r", [("ab", "c")]) != request_fingerprint("r", [("a", "bc")])
