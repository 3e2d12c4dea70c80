"""``Client`` and its async twin ``AsyncClient`` for the key API (seed 000).

    with Client("http://127.0.0.1:8000", api_key=KEY) as client:
        result = client.colorize("old.jpg", model="tiny", download=True)
        Path("old.colorized.png").write_bytes(result.image)

Every colorize request carries an Idempotency-Key (by default derived from the image and the
options), so the built-in retries, and any later re-send of the same photo with the same
options, are replayed by the service from the first result and charged once.
"""
from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from . import protocol
from .errors import ColorizeError, NetworkError, RateLimited
from .protocol import Account, ColorizeResult, ImageInput, Options, Pricing, Upload
from .retry import RetryPolicy

DEFAULT_TIMEOUT_S = 300.0  # the large model on a busy CPU box takes a while; the service's own limit is 120 s
USER_AGENT = "colorize-client/0.1"
# Failures of the connection itself: the request may or may not have reached the service.
_TRANSPORT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError)

RetryHook = Callable[[ColorizeError, float], bool]
AsyncRetryHook = Callable[[ColorizeError, float], Awaitable[bool]]


class _Base:
    def __init__(self, base_url: str, api_key: str | None, app_check_token: str | None, timeout: float,
                 retry: RetryPolicy):
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self._credentials = {name: value for name, value in (("X-Api-Key", api_key),
                                                            ("X-Firebase-AppCheck", app_check_token)) if value}
        self._not_before = 0.0  # monotonic time before which no colorize request is sent (a 429's Retry-After)

    def __repr__(self) -> str:  # never shows the key
        return f"{type(self).__name__}({self.base_url!r})"

    def _prepare(self, image: ImageInput | Upload, options: dict[str, Any],
                 idempotency_key: str | None) -> tuple[Upload, Options, str]:
        upload = image if isinstance(image, Upload) else Upload.of(image)
        parsed = Options(**options)
        return upload, parsed, protocol.check_idempotency_key(idempotency_key or upload.derived_key(parsed))

    def _post_args(self, upload: Upload, options: Options, key: str) -> dict[str, Any]:
        body, content_type = upload.multipart(options)
        return {"url": protocol.COLORIZE_PATH, "content": body,
                "headers": {**self._credentials, "Idempotency-Key": key, "Content-Type": content_type}}

    def _note_failure(self, error: ColorizeError, delay: float) -> None:
        if isinstance(error, RateLimited):  # the whole key is limited: hold every request of this client back
            self._not_before = max(self._not_before, time.monotonic() + delay)

    def _gate_wait(self) -> float:
        return max(0.0, self._not_before - time.monotonic())


def _tls_context() -> ssl.SSLContext:
    # httpx's own defaults (its CA bundle, SSL_CERT_FILE); built once for the API and result clients.
    return httpx.create_ssl_context()


def _network_error(exc: Exception, what: str) -> NetworkError:
    return NetworkError(f"{what}: {type(exc).__name__}: {exc}".rstrip(": "))


class AsyncClient(_Base):
    """Async client; one instance can serve many concurrent ``colorize`` calls."""

    def __init__(self, base_url: str, api_key: str | None = None, app_check_token: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT_S, retry: RetryPolicy = RetryPolicy(), max_connections: int = 32,
                 transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(base_url, api_key, app_check_token, timeout, retry)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        common = {"timeout": self._timeout, "limits": limits, "transport": transport,
                  "headers": {"User-Agent": USER_AGENT}, "verify": _tls_context()}
        self._http = httpx.AsyncClient(base_url=self.base_url, **common)
        # Results are fetched without credentials: an output URL may point at another host (a CDN).
        self._downloads = httpx.AsyncClient(follow_redirects=True, **common)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._downloads.aclose()

    async def colorize(self, image: ImageInput | Upload, *, model: str = "large", clean_scratches: bool = False,
                       face_remaster: bool = False, prompt: str | None = None, seed: int | None = None,
                       idempotency_key: str | None = None, download: bool = False,
                       retry: RetryPolicy | None = None, on_retry: AsyncRetryHook | None = None) -> ColorizeResult:
        """Colorize one image (a path, bytes, or an http(s)/data URL) and return its output URL
        (and the PNG itself with ``download=True``). ``idempotency_key`` defaults to one derived from
        the image and options. ``on_retry(error, delay)`` replaces the wait before a retry: it waits
        as it likes and returns False to give up (raising ``error``)."""
        options = {"model": model, "clean_scratches": clean_scratches, "face_remaster": face_remaster,
                   "prompt": prompt, "seed": seed}
        if isinstance(image, (bytes, Upload)):
            upload, parsed, key = self._prepare(image, options, idempotency_key)
        else:  # maybe a path: read (and hash) it off the event loop
            upload, parsed, key = await asyncio.to_thread(self._prepare, image, options, idempotency_key)

        async def send() -> ColorizeResult:
            if wait := self._gate_wait():
                await asyncio.sleep(wait)
            try:
                response = await self._http.post(**self._post_args(upload, parsed, key))
            except _TRANSPORT_ERRORS as exc:
                raise _network_error(exc, "no answer from the service") from exc
            return protocol.colorize_result(response, key)

        result, attempts = await self._retrying(send, retry, on_retry)
        result.attempts = attempts
        if download:
            result.image = await self.download(result.output_url, retry=retry, on_retry=on_retry)
        return result

    async def download(self, url: str, *, retry: RetryPolicy | None = None,
                       on_retry: AsyncRetryHook | None = None) -> bytes:
        async def fetch() -> bytes:
            try:
                response = await self._downloads.get(url)
            except _TRANSPORT_ERRORS as exc:
                raise _network_error(exc, "downloading the result failed") from exc
            return protocol.downloaded(response)

        return (await self._retrying(fetch, retry, on_retry))[0]

    async def account(self) -> Account:
        """The key's balance and rate limit (GET /api/v1/account)."""
        return await self._read(protocol.ACCOUNT_PATH, protocol.account, self._credentials)

    async def pricing(self) -> Pricing:
        """The price table (GET /api/v1/pricing; the seed's table when the service has none)."""
        return await self._read(protocol.PRICING_PATH, protocol.pricing)

    async def _read(self, path: str, parse: Callable[[httpx.Response], Any],
                    headers: dict[str, str] | None = None) -> Any:
        """A GET that charges nothing, retried like a job."""
        async def fetch() -> Any:
            try:
                response = await self._http.get(path, headers=headers)
            except _TRANSPORT_ERRORS as exc:
                raise _network_error(exc, "no answer from the service") from exc
            return parse(response)

        return (await self._retrying(fetch, None, None))[0]

    async def _retrying(self, send: Callable[[], Awaitable[Any]], retry: RetryPolicy | None,
                        on_retry: AsyncRetryHook | None) -> tuple[Any, int]:
        policy, failures, attempts = retry or self.retry, 0, 0
        while True:
            attempts += 1
            try:
                return await send(), attempts
            except ColorizeError as error:
                failures += policy.counts(error)
                delay = policy.delay(error, failures)
                if delay is None:
                    raise
                self._note_failure(error, delay)
                if on_retry is None:
                    await asyncio.sleep(delay)
                elif not await on_retry(error, delay):
                    raise


class Client(_Base):
    """Blocking client with the same methods as ``AsyncClient``."""

    def __init__(self, base_url: str, api_key: str | None = None, app_check_token: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT_S, retry: RetryPolicy = RetryPolicy(),
                 transport: httpx.BaseTransport | None = None):
        super().__init__(base_url, api_key, app_check_token, timeout, retry)
        common = {"timeout": self._timeout, "transport": transport, "headers": {"User-Agent": USER_AGENT},
                  "verify": _tls_context()}
        self._http = httpx.Client(base_url=self.base_url, **common)
        self._downloads = httpx.Client(follow_redirects=True, **common)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()
        self._downloads.close()

    def colorize(self, image: ImageInput | Upload, *, model: str = "large", clean_scratches: bool = False,
                 face_remaster: bool = False, prompt: str | None = None, seed: int | None = None,
                 idempotency_key: str | None = None, download: bool = False,
                 retry: RetryPolicy | None = None, on_retry: RetryHook | None = None) -> ColorizeResult:
        """As ``AsyncClient.colorize``."""
        upload, parsed, key = self._prepare(image, {"model": model, "clean_scratches": clean_scratches,
                                                    "face_remaster": face_remaster, "prompt": prompt, "seed": seed},
                                            idempotency_key)

        def send() -> ColorizeResult:
            if wait := self._gate_wait():
                time.sleep(wait)
            try:
                response = self._http.post(**self._post_args(upload, parsed, key))
            except _TRANSPORT_ERRORS as exc:
                raise _network_error(exc, "no answer from the service") from exc
            return protocol.colorize_result(response, key)

        result, attempts = self._retrying(send, retry, on_retry)
        result.attempts = attempts
        if download:
            result.image = self.download(result.output_url, retry=retry, on_retry=on_retry)
        return result

    def download(self, url: str, *, retry: RetryPolicy | None = None, on_retry: RetryHook | None = None) -> bytes:
        def fetch() -> bytes:
            try:
                response = self._downloads.get(url)
            except _TRANSPORT_ERRORS as exc:
                raise _network_error(exc, "downloading the result failed") from exc
            return protocol.downloaded(response)

        return self._retrying(fetch, retry, on_retry)[0]

    def account(self) -> Account:
        return self._read(protocol.ACCOUNT_PATH, protocol.account, self._credentials)

    def pricing(self) -> Pricing:
        return self._read(protocol.PRICING_PATH, protocol.pricing)

    def _read(self, path: str, parse: Callable[[httpx.Response], Any], headers: dict[str, str] | None = None) -> Any:
        def fetch() -> Any:
            try:
                response = self._http.get(path, headers=headers)
            except _TRANSPORT_ERRORS as exc:
                raise _network_error(exc, "no answer from the service") from exc
            return parse(response)

        return self._retrying(fetch, None, None)[0]

    def _retrying(self, send: Callable[[], Any], retry: RetryPolicy | None,
                  on_retry: RetryHook | None) -> tuple[Any, int]:
        policy, failures, attempts = retry or self.retry, 0, 0
        while True:
            attempts += 1
            try:
                return send(), attempts
            except ColorizeError as error:
                failures += policy.counts(error)
                delay = policy.delay(error, failures)
                if delay is None:
                    raise
                self._note_failure(error, delay)
                if on_retry is None:
                    time.sleep(delay)
                elif not on_retry(error, delay):
                    raise
