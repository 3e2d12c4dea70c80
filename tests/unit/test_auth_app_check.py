"""Firebase App Check through firebase_admin, against tokens signed by a local RSA key whose
JWKS is served on loopback. Every rejection must be a 401 with one generic message.

The real consume call (replay protection) asks Google over the network; here it is either
injected (``consume=``) or the library's network step is replaced, and that is all that
is claimed about it."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from firebase_admin import app_check

from auth import AccessDenied, AppCheckSettings, AuthSettings, JobRequest, PolicyAccess
from auth.app_check import APP_CHECK_DENIED, AppCheckRejected, AppCheckVerifier
from tests.auth_fixtures import APP_ID, ISSUER, PROJECT_ID, SigningKeys, signing_keys  # noqa: F401
from tests.helpers import free_port

pytestmark = pytest.mark.timeout(60)


def _settings(keys: SigningKeys, **options) -> AppCheckSettings:
    return AppCheckSettings(project_id=PROJECT_ID, jwks_url=keys.jwks_url, **options)


@pytest.fixture
def verifier(signing_keys: SigningKeys) -> Iterator[AppCheckVerifier]:  # noqa: F811
    verifier = AppCheckVerifier(_settings(signing_keys))
    yield verifier
    verifier.close()


def _admit(access: PolicyAccess, token: str | None, route: str = "POST /colorize") -> str:
    async def go() -> str:
        headers = {} if token is None else {"X-Firebase-AppCheck": token}
        async with access.admit(JobRequest(route), headers) as admission:
            return admission.principal
    return asyncio.run(go())


def test_a_valid_token_is_accepted_and_names_the_app(verifier: AppCheckVerifier,
                                                    signing_keys: SigningKeys):  # noqa: F811
    claims = verifier.verify(signing_keys.token())
    assert claims["app_id"] == APP_ID and claims["iss"] == ISSUER


def _bad_tokens(keys: SigningKeys) -> dict[str, str | None]:
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    return {
        "missing": None,
        "empty": "",
        "malformed": "not-a-jwt",
        "three garbage parts": "abc.def.ghi",
        "bad signature": keys.token(key=other_key),
        "unknown kid": keys.token(headers={"kid": "rotated-away"}),
        "expired": keys.token(exp=now - 60, iat=now - 3700),
        "no exp": keys.token(drop=("exp",)),
        "wrong aud": keys.token(aud=["projects/someone-else"]),
        "aud as a string": keys.token(aud=f"projects/{PROJECT_ID}"),
        "wrong iss": keys.token(iss="https://evil.example.com/123"),
        "missing iss": keys.token(drop=("iss",)),
        "missing sub": keys.token(drop=("sub",)),
        "typ not JWT": keys.token(headers={"typ": "at+jwt"}),
        "alg HS256": keys.token(key="a-shared-secret-that-is-long-enough-for-hs256", algorithm="HS256"),
        "too long": keys.token(padding="x" * 5000),
    }


BAD_CASES = ["missing", "empty", "malformed", "three garbage parts", "bad signature", "unknown kid", "expired",
             "no exp", "wrong aud", "aud as a string", "wrong iss", "missing iss", "missing sub", "typ not JWT",
             "alg HS256", "too long"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_every_bad_token_is_a_generic_401(case: str, signing_keys: SigningKeys):  # noqa: F811
    access = PolicyAccess(AuthSettings(database_url=None, app_check=_settings(signing_keys)), environ={})
    try:
        with pytest.raises(AccessDenied) as caught:
            _admit(access, _bad_tokens(signing_keys)[case])
        assert (caught.value.status, caught.value.detail) == (401, APP_CHECK_DENIED)
        assert _admit(access, signing_keys.token()) == f"app:{APP_ID}"  # the same access still admits good ones
    finally:
        access.close()


def test_unreachable_key_server_is_a_401_not_a_500(signing_keys: SigningKeys):  # noqa: F811
    settings = AppCheckSettings(project_id=PROJECT_ID, jwks_url=f"http://127.0.0.1:{free_port()}/jwks")
    access = PolicyAccess(AuthSettings(database_url=None, app_check=settings), environ={})
    try:
        with pytest.raises(AccessDenied) as caught:
            _admit(access, signing_keys.token())
        assert caught.value.status == 401
    finally:
        access.close()


def test_replay_protection_rejects_consumed_tokens(signing_keys: SigningKeys):  # noqa: F811
    used: set[str] = set()

    def consume(token: str) -> bool:  # stands in for Google's verifyAppCheckToken
        already = token in used
        used.add(token)
        return already

    verifier = AppCheckVerifier(_settings(signing_keys, replay_protection=True), consume=consume)
    try:
        token = signing_keys.token()
        assert verifier.verify(token)["app_id"] == APP_ID
        with pytest.raises(AppCheckRejected, match="already consumed"):
            verifier.verify(token)
    finally:
        verifier.close()

    def broken(token: str) -> bool:
        raise ConnectionError("Google unreachable")

    verifier = AppCheckVerifier(_settings(signing_keys, replay_protection=True), consume=broken)
    try:
        with pytest.raises(AppCheckRejected, match="consuming the token failed"):
            verifier.verify(signing_keys.token())
    finally:
        verifier.close()


def test_library_consume_path_reads_already_consumed(signing_keys: SigningKeys, monkeypatch):  # noqa: F811
    # Without an injected consume, verify_token(consume=True) is used: its network step (and the
    # Google credential it needs) are replaced here; the flag handling is what is tested.
    import auth.app_check as module
    monkeypatch.setattr(module.credentials, "ApplicationDefault", module._OfflineCredential)
    answers = iter([False, True])
    monkeypatch.setattr(app_check._AppCheckService, "_verify_replay_protection", lambda self, token: next(answers))
    verifier = AppCheckVerifier(_settings(signing_keys, replay_protection=True))
    try:
        token = signing_keys.token()
        assert verifier.verify(token)["already_consumed"] is False
        with pytest.raises(AppCheckRejected, match="already consumed"):
            verifier.verify(token)
    finally:
        verifier.close()


def test_several_verifiers_coexist_and_the_library_default_url_is_untouched(signing_keys: SigningKeys):  # noqa: F811
    default_url = app_check._AppCheckService._JWKS_URL
    first, second = AppCheckVerifier(_settings(signing_keys)), AppCheckVerifier(_settings(signing_keys))
    try:
        token = signing_keys.token()
        assert first.verify(token)["sub"] == second.verify(token)["sub"] == APP_ID
        assert app_check._AppCheckService._JWKS_URL == default_url
    finally:
        first.close()
        second.close()


def test_a_verifier_needs_a_project_id():
    with pytest.raises(ValueError, match="project_id"):
        AppCheckVerifier(AppCheckSettings())
