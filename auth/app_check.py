"""Firebase App Check token verification (the App Check API's routes), via firebase_admin.

``verify`` is blocking (the first call fetches Google's signing keys, cached 6 hours): the
access layer runs it in a thread. Every failure is an ``AppCheckRejected`` whose message is
for the log only; clients get one generic 401 text.
"""
from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import firebase_admin
import google.auth.credentials
from firebase_admin import app_check, credentials

from .settings import AppCheckSettings

log = logging.getLogger(__name__)
APP_CHECK_DENIED = "Missing or invalid App Check token (send a valid X-Firebase-AppCheck header)"
# The JWKS URL is a class attribute firebase_admin reads when it creates an app's service;
# creations that override it (tests' loopback key server) are serialized by this lock.
_SERVICE_CREATION = threading.Lock()


class AppCheckRejected(Exception):
    """The token is missing or not acceptable. The message names the reason, for logs only."""


class _OfflineCredential(credentials.Base):
    """Verifying tokens needs no Google credential (only public keys); this one never calls out."""

    def get_credential(self) -> google.auth.credentials.Credentials:
        return google.auth.credentials.AnonymousCredentials()


class AppCheckVerifier:
    """Verifies tokens for one Firebase project. With ``replay_protection``, each token is also
    consumed (limited-use tokens): a token already consumed is rejected.

    ``consume(token) -> already_consumed`` replaces the library's consume call, which asks
    Google over the network (tests inject a fake; production leaves it None and needs
    Application Default Credentials)."""

    def __init__(self, settings: AppCheckSettings, *, consume: Callable[[str], bool] | None = None):
        if not settings.project_id:
            raise ValueError("App Check needs auth.app_check.project_id (the Firebase project id)")
        self.settings, self._consume = settings, consume
        self._library_consumes = settings.replay_protection and consume is None
        credential = credentials.ApplicationDefault() if self._library_consumes else _OfflineCredential()
        # A named app per verifier: several can coexist (tests, reconfiguration) without the default app.
        self.app = firebase_admin.initialize_app(credential, {"projectId": settings.project_id},
                                                 name=f"colorize-app-check-{uuid.uuid4().hex}")
        try:
            self._create_service()
        except Exception as exc:
            firebase_admin.delete_app(self.app)
            raise ValueError(f"App Check could not be set up: {exc} (replay protection needs Google "
                             "Application Default Credentials, e.g. GOOGLE_APPLICATION_CREDENTIALS)") from exc

    def _create_service(self) -> None:
        # Created now rather than on the first request: configuration errors surface at startup.
        with _SERVICE_CREATION:
            service_class = app_check._AppCheckService
            default_url = service_class._JWKS_URL
            if self.settings.jwks_url:
                service_class._JWKS_URL = self.settings.jwks_url
            try:
                app_check._get_app_check_service(self.app)
            finally:
                service_class._JWKS_URL = default_url

    def verify(self, token: str | None) -> dict[str, Any]:
        """The token's claims (``app_id`` names the calling app), or AppCheckRejected."""
        if not token:
            raise AppCheckRejected("no X-Firebase-AppCheck header")
        if len(token) > self.settings.max_token_chars:
            raise AppCheckRejected(f"token longer than {self.settings.max_token_chars} characters")
        try:
            claims = app_check.verify_token(token, app=self.app, consume=self._library_consumes)
        except Exception as exc:  # ValueError, PyJWKClientError, AttributeError (no iss), FirebaseError...
            raise AppCheckRejected(f"{type(exc).__name__}: {exc}") from None
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, (int, float)):
            raise AppCheckRejected("token has no expiry (exp claim)")  # the library accepts such tokens
        if self.settings.replay_protection and self._already_consumed(token, claims):
            raise AppCheckRejected("limited-use token already consumed")
        return claims

    def _already_consumed(self, token: str, claims: dict[str, Any]) -> bool:
        if self._library_consumes:
            return bool(claims.get("already_consumed", True))
        try:
            return bool(self._consume(token))
        except Exception as exc:
            raise AppCheckRejected(f"consuming the token failed: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        firebase_admin.delete_app(self.app)
