"""A stand-in for the key API behind httpx.MockTransport, for the client's unit tests.

It keeps the rules the client relies on: X-Api-Key checked, the price taken once per
Idempotency-Key (a repeat with the same content is replayed, other content is a 409), 403 when
the balance is short, X-Request-Id and X-Credits-Remaining on answers, and result PNGs served at
the output URLs (on another host, as a CDN would). ``script`` queues canned failures per path.
"""
from __future__ import annotations

import hashlib
import io
import json
import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field

import httpx
import numpy as np
from PIL import Image

KEY = "ck_live_0123456789ab_" + "s" * 43
RESULTS_HOST = "http://results.test"


def png_bytes(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class StandIn:
    credits: int = 100
    account_route: bool = True        # False: a service from before /api/v1/account (404)
    pricing_route: bool = True
    rate: dict = field(default_factory=lambda: {"perSecond": 1000.0, "burst": 1000})
    prices: dict = field(default_factory=lambda: {"large": 1, "tiny": 1})
    script: dict = field(default_factory=lambda: defaultdict(deque))  # path -> canned answers/exceptions, in order
    requests: list = field(default_factory=list)
    charged: dict = field(default_factory=dict)   # idempotency key -> (fingerprint, output URL)
    results: dict = field(default_factory=dict)   # output URL -> PNG bytes

    def __post_init__(self):
        self._lock = threading.Lock()
        self._ids = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def colorize_posts(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "POST"]

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.requests.append(request)
            self._ids += 1
            request_id = f"req-{self._ids}"
            canned = self.script[request.url.path]
            if canned:
                answer = canned.popleft()
                if isinstance(answer, Exception):
                    raise answer
                if isinstance(answer, httpx.Response):
                    return answer
                if callable(answer):  # runs the real thing, then fails (e.g. the answer is lost)
                    real = self._route(request, request_id)
                    return answer(real)
                status, body, headers = answer
                return httpx.Response(status, json=body, headers={"X-Request-Id": request_id, **headers})
            return self._route(request, request_id)

    def _route(self, request: httpx.Request, request_id: str) -> httpx.Response:
        headers = {"X-Request-Id": request_id}
        path = request.url.path
        if request.url.host == "results.test":
            data = self.results.get(str(request.url))
            return httpx.Response(200, content=data, headers=headers) if data else httpx.Response(404, headers=headers)
        if path == "/api/v1/pricing" and self.pricing_route:
            return httpx.Response(200, json={"unit": "credits", "models": self.prices,
                                             "addOns": {"clean_scratches": 1, "face_remaster": 2}}, headers=headers)
        if path == "/api/v1/account" and self.account_route:
            if request.headers.get("x-api-key") != KEY:
                return httpx.Response(401, json={"detail": "missing or invalid API key"}, headers=headers)
            return httpx.Response(200, json={"keyId": KEY.split("_")[2], "name": None, "credits": self.credits,
                                             "rateLimit": self.rate}, headers=headers)
        if path == "/api/v1/colorize" and request.method == "POST":
            return self._colorize(request, headers)
        return httpx.Response(404, json={"detail": "Not Found"}, headers=headers)

    def _colorize(self, request: httpx.Request, headers: dict) -> httpx.Response:
        if request.headers.get("x-api-key") != KEY:
            return httpx.Response(401, json={"detail": "missing or invalid API key"}, headers=headers)
        body = request.read()
        boundary = request.headers["content-type"].split("boundary=")[1].encode()
        # The parts in any order, without the per-request boundary: what the service fingerprints.
        fingerprint = hashlib.sha256(b"".join(sorted(body.split(boundary)[1:-1]))).hexdigest()
        key = request.headers.get("idempotency-key")
        price = self.prices.get("tiny" if b'name="model"\r\n\r\ntiny' in body else "large", 1)
        if key in self.charged:
            earlier_fingerprint, url = self.charged[key]
            if earlier_fingerprint != fingerprint:
                return httpx.Response(409, json={"detail": "Idempotency-Key used with a different request"},
                                      headers=headers)
            return httpx.Response(200, json={"outputUrl": url}, headers={**headers,
                                                                          "X-Credits-Remaining": str(self.credits)})
        if b"not-an-image" in body:
            return httpx.Response(400, json={"detail": "image data is not a supported image"}, headers=headers)
        if self.credits < price:
            return httpx.Response(403, json={"detail": f"not enough credits: this job costs {price}"},
                                  headers=headers)
        self.credits -= price
        url = f"{RESULTS_HOST}/{len(self.results)}.png"
        self.results[url] = png_bytes(len(self.results))
        if key:
            self.charged[key] = (fingerprint, url)
        return httpx.Response(200, json={"outputUrl": url},
                              headers={**headers, "X-Credits-Remaining": str(self.credits)})


def detail_of(response: httpx.Response) -> str:
    return json.loads(response.content)["detail"]
