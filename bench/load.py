"""Async HTTP load generator for the colorize API, loopback only.

    python -m bench.load http://127.0.0.1:8000 --concurrency 16 --requests 200
    python -m bench.load http://127.0.0.1:8000 --rate 120 --seconds 20      # open loop

Closed loop: C clients, each sends its next request when the last one answered (what a
batch job does). Open loop: requests start at a fixed offered rate (Poisson arrivals,
seeded) whatever the server does (what the internet does): each is its own task, so a slow
answer never delays the next send (no coordinated omission). On shared cores the client
itself can fall behind its schedule; that lag is reported apart. Bodies are pre-encoded
multipart POSTs to /api/v1/colorize with model=tiny.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import numpy as np

from .photos import load_photos, multipart_body

ROUTE = "/api/v1/colorize"
MAX_SECONDS = 600        # every run stops by itself
MAX_REQUESTS = 100_000
NOT_SENT = -1            # open loop: dropped by the client because too many were outstanding
TRANSPORT_ERROR = 0      # no HTTP status: connection refused/reset, client timeout


@dataclass(frozen=True)
class Target:
    base_url: str
    bodies: tuple[tuple[bytes, str], ...]   # (multipart body, content type), sent round-robin
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 60.0

    def __post_init__(self):
        host = urlsplit(self.base_url).hostname or ""
        loopback = host == "localhost" or _is_loopback_ip(host)
        if not loopback:
            raise ValueError(f"load is only sent to loopback servers, not {host!r}")

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + ROUTE


def colorize_target(base_url: str, *, api_key: str | None = None, size: int = 512, **options) -> Target:
    bodies = tuple(multipart_body(photo, {"model": "tiny"}) for photo in load_photos(size))
    return Target(base_url, bodies, {"X-Api-Key": api_key} if api_key else {}, **options)


@dataclass(frozen=True)
class Sample:
    sent_at: float      # s since the run started (open loop: the scheduled time)
    latency_s: float    # from the moment the client sent it
    status: int         # HTTP status, TRANSPORT_ERROR or NOT_SENT
    lag_s: float = 0.0  # open loop: how late the client sent it (its own CPU starvation on shared cores)


@dataclass
class RunResult:
    samples: list[Sample]
    wall_s: float
    client_cpu_s: float                 # this process's CPU while the run lasted (the client shares the cores)
    offered_rps: float | None = None    # open loop only
    errors: Counter = field(default_factory=Counter)
    window_s: float | None = None       # time-bounded run: throughput counts answers inside the window only

    def ok_in_window(self) -> int:
        # Requests still in flight at the deadline would stretch the wall time (drain), so they don't count.
        return sum(1 for s in self.samples if 200 <= s.status < 300 and s.sent_at + s.latency_s <= self.window_s)

    def throughput(self) -> float:
        if self.window_s:
            return self.ok_in_window() / self.window_s
        return len(self.ok_latencies()) / self.wall_s if self.wall_s else 0.0

    def ok_latencies(self) -> np.ndarray:
        return np.array([s.latency_s for s in self.samples if 200 <= s.status < 300])

    def summary(self) -> dict:
        ok = self.ok_latencies()
        pct = (lambda q: float(np.percentile(ok, q)) * 1000) if len(ok) else (lambda q: float("nan"))
        return {"requests": len(self.samples), "ok": int(len(ok)), "wall_s": round(self.wall_s, 2),
                "throughput_rps": self.throughput(),
                "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
                "statuses": dict(sorted(Counter(s.status for s in self.samples).items())),
                "client_cpu_ms_per_request": 1000 * self.client_cpu_s / max(len(self.samples), 1),
                **(self._open_loop_stats() if self.offered_rps is not None and len(ok) else {}),
                **({"errors": dict(self.errors)} if self.errors else {})}


    def _open_loop_stats(self) -> dict:
        ok = [s for s in self.samples if 200 <= s.status < 300]
        return {"offered_rps": self.offered_rps,
                "client_lag_p99_ms": float(np.percentile([s.lag_s for s in self.samples], 99)) * 1000,
                # From the scheduled start, as an outside client would see it; the client's lag is our
                # own load generator starving for CPU on the shared cores, so targets use p99_ms.
                "p99_from_schedule_ms": float(np.percentile([s.latency_s + s.lag_s for s in ok], 99)) * 1000}


@dataclass
class CombinedResult(RunResult):
    """Several time-bounded runs of the same load as one (rounds interleaved with other measurements)."""
    in_window: int = 0

    def ok_in_window(self) -> int:
        return self.in_window


def combine(results: list[RunResult]) -> RunResult:
    if len(results) == 1:
        return results[0]
    errors: Counter = Counter()
    for result in results:
        errors.update(result.errors)
    windowed = all(r.window_s for r in results)
    return CombinedResult([s for r in results for s in r.samples], sum(r.wall_s for r in results),
                          sum(r.client_cpu_s for r in results), errors=errors,
                          window_s=sum(r.window_s for r in results) if windowed else None,
                          in_window=sum(r.ok_in_window() for r in results) if windowed else 0)


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", ""))[:100]
    except ValueError:
        return response.text[:100]


def _is_loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _client(target: Target, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(timeout=httpx.Timeout(target.timeout_s, connect=10), limits=limits, trust_env=False)


async def _send(client: httpx.AsyncClient, target: Target, index: int, errors: Counter,
                waits: list[float] | None = None) -> int:
    """One request; its status (TRANSPORT_ERROR when none came). A shed answer's Retry-After (seconds)
    is appended to ``waits`` when given."""
    body, content_type = target.bodies[index % len(target.bodies)]
    try:
        response = await client.post(target.url, content=body,
                                     headers={**target.headers, "Content-Type": content_type})
        await response.aread()
        if response.status_code >= 400:  # why, in the service's words ({"detail"} on both seeds)
            retry = response.headers.get("retry-after")
            shed = f" [Retry-After: {retry}]" if retry else " [no Retry-After]" if response.status_code in (429, 503) else ""
            errors[f"{response.status_code}: {_detail(response)}{shed}"] += 1
            if waits is not None and retry and retry.isdigit():
                waits.append(float(retry))
        return response.status_code
    except httpx.HTTPError as exc:
        errors[type(exc).__name__] += 1
        return TRANSPORT_ERROR


async def closed_loop(target: Target, concurrency: int, *, requests: int | None = None,
                      seconds: float | None = None, warmup: int = 0, honor_retry_after: bool = True) -> RunResult:
    """``concurrency`` clients back to back until ``requests`` are done or ``seconds`` have passed.

    A client whose request was shed (429/503 with ``Retry-After``) waits as told before its next one,
    as both contracts ask and ``colorize_client`` does; ``honor_retry_after=False`` resends at once
    (a client that ignores it: every shed answer then costs the service CPU the others needed)."""
    requests = min(requests or MAX_REQUESTS, MAX_REQUESTS)
    seconds = min(seconds or MAX_SECONDS, MAX_SECONDS)
    errors: Counter = Counter()
    async with _client(target, concurrency) as client:
        await asyncio.gather(*(_send(client, target, i, errors) for i in range(warmup)))  # connections, caches
        errors.clear()
        samples: list[Sample] = []
        issued = 0
        started, cpu_started = time.perf_counter(), time.process_time()
        deadline = started + seconds

        async def worker() -> None:
            nonlocal issued
            while issued < requests and time.perf_counter() < deadline:
                index, issued = issued, issued + 1
                sent = time.perf_counter()
                waits: list[float] = []
                status = await _send(client, target, index, errors, waits if honor_retry_after else None)
                samples.append(Sample(sent - started, time.perf_counter() - sent, status))
                if waits:
                    await asyncio.sleep(max(0.0, min(waits[0], deadline - time.perf_counter())))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    timed_out = issued < requests
    return RunResult(samples, wall, time.process_time() - cpu_started, errors=errors,
                     window_s=seconds if timed_out else None)


async def open_loop(target: Target, rate_per_s: float, seconds: float, *, max_outstanding: int = 512,
                    seed: int = 0) -> RunResult:
    """Poisson arrivals at ``rate_per_s`` for ``seconds``; at most ``max_outstanding`` in flight."""
    seconds = min(seconds, MAX_SECONDS)
    rng = random.Random(seed)
    errors: Counter = Counter()
    samples: list[Sample] = []
    async with _client(target, max_outstanding) as client:

        async def one(index: int, scheduled: float) -> None:
            sent = time.perf_counter()
            status = await _send(client, target, index, errors)
            samples.append(Sample(scheduled - started, time.perf_counter() - sent, status, sent - scheduled))

        started, cpu_started = time.perf_counter(), time.process_time()
        sent = await poisson_arrivals(one, rng, rate_per_s, seconds, started, samples,
                                      max_outstanding=max_outstanding, timeout_s=target.timeout_s)
        wall = time.perf_counter() - started
    return RunResult(samples, wall, time.process_time() - cpu_started, offered_rps=sent / seconds, errors=errors,
                     window_s=seconds)


async def poisson_arrivals(one: Callable[[int, float], Awaitable[None]], rng: random.Random, rate_per_s: float,
                           seconds: float, started: float, samples: list[Sample], *, max_outstanding: int,
                           timeout_s: float) -> int:
    """Call ``one(index, scheduled_time)`` at Poisson arrivals for ``seconds`` from ``started``, never
    waiting for answers (open loop); an arrival with ``max_outstanding`` in flight is recorded as not
    sent. Waits for the stragglers (``timeout_s`` + 5 s at most); returns the number of arrivals."""
    tasks: set[asyncio.Task] = set()
    scheduled, index = started, 0
    while True:
        scheduled += rng.expovariate(rate_per_s)
        if scheduled - started >= seconds:
            break
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= max_outstanding:
            samples.append(Sample(scheduled - started, 0.0, NOT_SENT))
        else:
            task = asyncio.create_task(one(index, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        index += 1
    if tasks:
        await asyncio.wait(set(tasks), timeout=timeout_s + 5)
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url", help="e.g. http://127.0.0.1:8000 (loopback only)")
    parser.add_argument("--api-key", help="X-Api-Key header, when auth is on")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seconds", type=float, help="closed loop: stop after this long; open loop: duration")
    parser.add_argument("--rate", type=float, help="open loop at this many requests/s")
    parser.add_argument("--warmup", type=int, default=16)
    args = parser.parse_args(argv)
    target = colorize_target(args.base_url, api_key=args.api_key)
    if args.rate:
        result = asyncio.run(open_loop(target, args.rate, args.seconds or 10))
    else:
        result = asyncio.run(closed_loop(target, args.concurrency, requests=args.requests, seconds=args.seconds,
                                         warmup=args.warmup))
    print(json.dumps(result.summary(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
