"""Overload and soak harness: the shipped demo configuration (`make demo`'s, auth on, SQLite
ledger, tiny model), loopback only, every loop bounded in count and time.

    python -m bench.overload                    # ~3 min: capacity, 1x/2x/4x for 25 s each, 1,000 idle sockets
    python -m bench.overload --seconds 60       # the issue's 60 s per level
    python -m bench.overload --soak 480         # and an 8-minute soak at 2x, per minute
    python -m bench.overload --api http://127.0.0.1:8000 --key ck_live_...   # a service already running

1. capacity: 8 clients, closed loop (each sends when its last answer came);
2. offered load at 1x, 2x and 4x that capacity, open loop (Poisson arrivals, bench/load.py);
3. beside every phase a probe asks `/livez`, `/readyz` and `/health` once a second each (1 s limit);
4. optionally a soak at 2x, reported per minute, with the RSS of every service process;
5. idle connections: N sockets that send nothing (or half a request line), with probes beside them,
   and how many the server closed within 30 s;
6. ledger exactness: credits charged == 200 answers (every photo costs 1 credit).

Goodput counts 200 answers that arrived inside the phase's window; accepted p50/p99 are those
answers' latencies. The load generator shares the machine's cores: its CPU share is reported
beside the figures.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import resource
import socket
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import yaml
import numpy as np

from .load import RunResult, Sample, Target, colorize_target, poisson_arrivals

PROBES = ("/livez", "/readyz", "/health")
PROBE_TIMEOUT_S = 1.0
IDLE_CLOSE_BOUND_S = 30.0
MAX_IDLE_SOCKETS = 20_000
KEEPALIVE_EXPIRY_S = 5.0  # httpx's default: the server may close a connection idle longer (10 s here)


class RawClient:
    """A lean HTTP/1.1 client for the load itself: pre-built request bytes over keep-alive connections
    (a free list; a new connection when none is idle), answers read by Content-Length. httpx's pool
    with hundreds of connections queued requests in the load generator itself (5 s at 2x, while a
    lone client saw 1 s), which is the client's delay, not the service's."""

    def __init__(self, target: Target, timeout_s: float = 30.0):
        where = urlsplit(target.base_url)
        host, port = where.hostname, where.port or 80
        self.host, self.port, self.timeout_s = host, port, timeout_s
        path = urlsplit(target.url).path
        extra = "".join(f"{name}: {value}\r\n" for name, value in target.headers.items())
        self.requests = [f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}Content-Type: {content_type}\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body for body, content_type in target.bodies]
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.errors: Counter = Counter()

    async def send(self, index: int) -> int:
        connection = None
        while self._idle and connection is None:  # like httpx: a connection idle 5 s is not reused
            reader, writer, idle_since = self._idle.pop()
            if time.monotonic() - idle_since < KEEPALIVE_EXPIRY_S:
                connection = reader, writer
            else:
                writer.close()
        try:
            if connection is None:
                connection = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout_s)
            reader, writer = connection
            writer.write(self.requests[index % len(self.requests)])
            status, keep = await asyncio.wait_for(self._answer(reader), self.timeout_s)
            if keep:
                self._idle.append((reader, writer, time.monotonic()))
            else:
                writer.close()
            if status >= 400:
                self.errors[status] += 1
            return status
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            self.errors[type(exc).__name__] += 1
            if connection is not None:
                connection[1].close()
            return 0

    @staticmethod
    async def _answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        await reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers.get("connection", "").lower() != "close"

    def close(self) -> None:
        for _, writer, _ in self._idle:
            writer.close()
        self._idle.clear()


async def raw_closed_loop(target: Target, concurrency: int, seconds: float) -> RunResult:
    client, samples = RawClient(target), []
    started, cpu_started = time.perf_counter(), time.process_time()
    deadline = started + seconds

    async def worker(offset: int) -> None:
        index = offset
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            status = await client.send(index)
            samples.append(Sample(sent - started, time.perf_counter() - sent, status))
            index += concurrency

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    client.close()
    return RunResult(samples, time.perf_counter() - started, time.process_time() - cpu_started,
                     errors=Counter({str(k): v for k, v in client.errors.items()}), window_s=seconds)


async def raw_open_loop(target: Target, rate_per_s: float, seconds: float, *, seed: int = 0,
                        max_outstanding: int = 2000) -> RunResult:
    """Poisson arrivals at ``rate_per_s`` for ``seconds`` (bench/load.py's open loop, on RawClient)."""
    client, samples = RawClient(target), []
    rng = random.Random(seed)
    started, cpu_started = time.perf_counter(), time.process_time()

    async def one(index: int, scheduled: float) -> None:
        sent = time.perf_counter()
        status = await client.send(index)
        samples.append(Sample(scheduled - started, time.perf_counter() - sent, status, sent - scheduled))

    sent = await poisson_arrivals(one, rng, rate_per_s, seconds, started, samples,
                                  max_outstanding=max_outstanding, timeout_s=client.timeout_s)
    client.close()
    return RunResult(samples, time.perf_counter() - started, time.process_time() - cpu_started,
                     offered_rps=sent / seconds, errors=Counter({str(k): v for k, v in client.errors.items()}),
                     window_s=seconds)


class Prober:
    """Asks each probe path once a second until stopped; counts answers (200, within 1 s)."""

    def __init__(self, base_url: str, target: Target | None = None, live_url: str | None = None):
        self.base_url, self.target = base_url, target
        self.urls = {path: base_url + path for path in PROBES}
        if live_url:
            self.urls["/livez"] = live_url
        self.results: Counter = Counter()
        self.witness_ms: list[float] = []  # a lone client's accepted jobs, one a second: the server's own latency
        self.witness_statuses: Counter = Counter()
        self._stop = asyncio.Event()

    async def _witness(self, client: httpx.AsyncClient, index: int) -> None:
        body, content_type = self.target.bodies[index % len(self.target.bodies)]
        started = time.perf_counter()
        try:
            answer = await client.post(self.target.url, content=body, timeout=30,
                                       headers={**self.target.headers, "Content-Type": content_type})
            self.witness_statuses[answer.status_code] += 1
            if answer.status_code == 200:
                self.witness_ms.append((time.perf_counter() - started) * 1000)
        except httpx.HTTPError as exc:
            self.witness_statuses[type(exc).__name__] += 1

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S, trust_env=False) as client:
            index = 0
            while not self._stop.is_set():
                if self.target is not None:
                    index += 1
                    await self._witness(client, index)
                for path in PROBES:
                    started = time.perf_counter()
                    try:
                        answer = await client.get(self.urls[path])
                        ok = answer.status_code == 200 and time.perf_counter() - started <= PROBE_TIMEOUT_S
                    except httpx.HTTPError:
                        ok = False
                    self.results[(path, ok)] += 1
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=1.0)
                except asyncio.TimeoutError:
                    pass

    def stop(self) -> None:
        self._stop.set()

    def summary(self) -> dict:
        return {path: f"{self.results[(path, True)]}/{self.results[(path, True)] + self.results[(path, False)]}"
                for path in PROBES}

    def all_answered(self) -> bool:
        return not any(count for (path, ok), count in self.results.items() if not ok)


async def with_probes(base_url: str, load, target: Target | None = None, live_url: str | None = None):
    prober = Prober(base_url, target, live_url)
    probing = asyncio.create_task(prober.run())
    try:
        result = await load
    finally:
        prober.stop()
        await probing
    return result, prober


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0 once it is gone), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class CpuWatch:
    """Machine-wide CPU busy share, the load generator's and the service's, over a phase."""

    def __init__(self, service_pids: list[int]):
        self.service = list(service_pids)

    def __enter__(self) -> CpuWatch:
        self._each = {pid: _proc_cpu_s(pid) for pid in self.service}
        self._start = (time.perf_counter(), time.process_time(), sum(self._each.values()), _machine_cpu())
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._start[0]
        cores = os.cpu_count() or 1
        busy, total = _machine_cpu()
        self.machine_busy = (busy - self._start[3][0]) / max(1, total - self._start[3][1])
        self.client_share = (time.process_time() - self._start[1]) / wall / cores
        self.service_share = (sum(map(_proc_cpu_s, self.service)) - self._start[2]) / wall / cores
        # The busiest service processes, in cores (the profile of where the CPU goes).
        each = {_process_name(pid): (_proc_cpu_s(pid) - before) / wall for pid, before in self._each.items()}
        self.top = {name: round(cores_used, 2) for name, cores_used in
                    sorted(each.items(), key=lambda item: -item[1])[:5] if cores_used >= 0.01}


def _process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            parts = cmdline.read().split(b"\0")
        name = parts[0].decode(errors="replace").strip()
        if not name.startswith("ray::"):
            name = " ".join(part.decode(errors="replace") for part in parts[:3])[-50:]
        return f"{name[:50]} ({pid})"
    except OSError:
        return str(pid)


def rss_mb(pids: list[int]) -> dict[str, float]:
    sizes = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                name = " ".join(part.decode(errors="replace") for part in cmdline.read().split(b"\0")[:3])
            with open(f"/proc/{pid}/status") as status:
                rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
            sizes[f"{pid} {name[-60:]}"] = round(rss_kb / 1024, 1)
        except (OSError, StopIteration, ValueError):
            continue
    return sizes


def phase_row(name: str, result, prober: Prober, cpu: CpuWatch, capacity: float | None) -> dict:
    summary = result.summary()
    statuses = Counter(s.status for s in result.samples)
    return {"phase": name, "offered_rps": round(result.offered_rps, 1) if result.offered_rps else None,
            "goodput_rps": round(result.throughput(), 1),
            "goodput_of_capacity": round(result.throughput() / capacity, 2) if capacity else None,
            "p50_ms": round(summary["p50_ms"]), "p99_ms": round(summary["p99_ms"]),
            "ok": statuses.get(200, 0), "shed": statuses.get(429, 0) + statuses.get(503, 0),
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "errors": dict(result.errors.most_common(4)),
            "probes": prober.summary(), "probes_all_answered": prober.all_answered(),
            "witness_p50_ms": round(float(np.percentile(prober.witness_ms, 50))) if prober.witness_ms else None,
            "witness_max_ms": round(max(prober.witness_ms)) if prober.witness_ms else None,
            "witness_statuses": {str(k): v for k, v in prober.witness_statuses.items()},
            "client_cpu": round(cpu.client_share, 2), "service_cpu": round(cpu.service_share, 2),
            "machine_busy": round(cpu.machine_busy, 2), "busiest_processes_cores": cpu.top}


IDLE_PARTIALS = (b"", b"GET /hea", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
SOCKETS_PER_HOLDER = 8_000  # a process's file limit here is 20,000: several processes hold the sockets


def hold_idle_sockets(host: str, port: int, count: int, first: int, conn) -> None:
    """In a child process: open ``count`` sockets (each sends ``IDLE_PARTIALS[index % 3]``), report how
    many opened, and when asked, how many the server has not closed (nothing to read, not at EOF)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 64), hard))
    sockets = []
    try:
        for index in range(first, first + count):
            try:
                sock = socket.create_connection((host, port), timeout=5)
            except OSError:
                break
            sock.sendall(IDLE_PARTIALS[index % 3])
            sock.setblocking(False)
            sockets.append(sock)
        conn.send(len(sockets))
        conn.recv()  # the hold is over
        still_open = 0
        for sock in sockets:
            try:
                sock.recv(65536)  # b"": closed by the server; bytes: it answered (a 400 or 408) and closes
            except BlockingIOError:
                still_open += 1  # nothing to read and not closed
            except OSError:
                pass
        conn.send(still_open)
    finally:
        for sock in sockets:
            sock.close()


async def idle_connections(base_url: str, count: int, hold_s: float) -> dict:
    """``count`` sockets: a third send nothing, a third half a request line, a third unfinished headers,
    held by child processes (one process's file limit is below 20,000). Probes run beside them; after
    ``hold_s`` (≥ 30 s to see the close bound) count those still open."""
    import multiprocessing

    host, port = base_url.removeprefix("http://").split(":")
    count = min(count, MAX_IDLE_SOCKETS)
    context = multiprocessing.get_context("spawn")
    holders = []
    for first in range(0, count, SOCKETS_PER_HOLDER):
        ours, theirs = context.Pipe()
        process = context.Process(target=hold_idle_sockets, daemon=True,
                                  args=(host, int(port), min(SOCKETS_PER_HOLDER, count - first), first, theirs))
        process.start()
        holders.append((process, ours))
    loop = asyncio.get_running_loop()
    try:
        opened = sum([await loop.run_in_executor(None, ours.recv) for _, ours in holders])
        _, prober = await with_probes(base_url, asyncio.sleep(hold_s))
        for _, ours in holders:
            ours.send("check")
        still_open = sum([await loop.run_in_executor(None, ours.recv) for _, ours in holders])
        return {"opened": opened, "held_s": hold_s, "still_open": still_open,
                "closed_within_hold": opened - still_open, "probes": prober.summary(),
                "probes_all_answered": prober.all_answered()}
    finally:
        for process, _ in holders:
            process.join(10)
            if process.is_alive():
                process.kill()


def ledger_exact(ledger_url: str, key: str, credits_at_start: int, oks: int) -> dict:
    from auth.accounts import Accounts
    from auth.db import make_engine
    from auth.keys import parse_key

    engine = make_engine(ledger_url)
    try:
        spent = credits_at_start - Accounts(engine).get(parse_key(key).key_id).balance
    finally:
        engine.dispose()
    return {"charged": spent, "answered_200": oks, "exact": spent == oks}


async def run(target: Target, *, seconds: float, soak_s: float, idle: int, idle_hold_s: float,
              service_pids: list[int], levels: tuple[float, ...] = (1, 2, 4)) -> dict:
    results: dict = {"phases": []}
    oks = 0
    with CpuWatch(service_pids) as cpu:
        capacity_run, prober = await with_probes(target.base_url,
                                                 raw_closed_loop(target, 8, seconds), target)
    oks += Counter(s.status for s in capacity_run.samples).get(200, 0) + prober.witness_statuses[200]
    capacity = capacity_run.throughput()
    results["capacity_rps"] = round(capacity, 1)
    results["phases"].append(phase_row("capacity c=8", capacity_run, prober, cpu, capacity))
    results["rss_mb_after_capacity"] = rss_mb(service_pids)
    print(json.dumps(results["phases"][-1]), flush=True)
    for multiple in levels:
        with CpuWatch(service_pids) as cpu:
            result, prober = await with_probes(target.base_url, raw_open_loop(target, multiple * capacity, seconds,
                                                                          seed=multiple), target)
        oks += Counter(s.status for s in result.samples).get(200, 0) + prober.witness_statuses[200]
        results["phases"].append(phase_row(f"{multiple}x offered", result, prober, cpu, capacity))
        print(json.dumps(results["phases"][-1]), flush=True)
    if soak_s > 0:
        results["soak"] = []
        minutes = max(1, round(soak_s / 60))
        for minute in range(minutes):
            with CpuWatch(service_pids) as cpu:
                result, prober = await with_probes(target.base_url,
                                                   raw_open_loop(target, 2 * capacity, 60, seed=100 + minute), target)
            oks += Counter(s.status for s in result.samples).get(200, 0) + prober.witness_statuses[200]
            row = phase_row(f"soak 2x, minute {minute + 1}", result, prober, cpu, capacity)
            row["rss_mb"] = rss_mb(service_pids)
            results["soak"].append(row)
            print(json.dumps(row), flush=True)
    if idle > 0:
        results["idle"] = await idle_connections(target.base_url, idle, idle_hold_s)
        print(json.dumps(results["idle"]), flush=True)
    results["rss_mb_at_end"] = rss_mb(service_pids)
    results["oks"] = oks
    return results


def table(results: dict) -> str:
    lines = [f"capacity (c=8, closed loop): {results['capacity_rps']} req/s",
             "| phase | offered req/s | goodput req/s | of capacity | accepted p50 / p99 ms | shed | other | "
             "probes answered (livez, readyz, health) | CPU: client / service / machine |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in results["phases"] + results.get("soak", []):
        other = {k: v for k, v in row["statuses"].items() if k not in ("200", "429", "503")}
        lines.append(f"| {row['phase']} | {row['offered_rps'] or '—'} | {row['goodput_rps']} | "
                     f"{row['goodput_of_capacity']:.0%} | {row['p50_ms']} / {row['p99_ms']} | {row['shed']} | "
                     f"{other or '—'} | {', '.join(row['probes'].values())} | "
                     f"{row['client_cpu']:.0%} / {row['service_cpu']:.0%} / {row['machine_busy']:.0%} |")
    if "idle" in results:
        idle = results["idle"]
        lines.append(f"idle connections: {idle['opened']} opened, {idle['still_open']} still open after "
                     f"{idle['held_s']:.0f} s; probes beside them: {idle['probes']}")
    if "ledger" in results:
        ledger = results["ledger"]
        lines.append(f"ledger: {ledger['charged']} credits charged, {ledger['answered_200']} answers 200: "
                     f"{'exact' if ledger['exact'] else 'NOT EXACT'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=25, help="each phase's length (the issue's: 60)")
    parser.add_argument("--soak", type=float, default=0, help="seconds of soak at 2x (480: the issue's 8 minutes)")
    parser.add_argument("--idle", type=int, default=1000, help="idle sockets held open beside probes (0: none)")
    parser.add_argument("--idle-hold", type=float, default=IDLE_CLOSE_BOUND_S + 5)
    parser.add_argument("--levels", type=float, nargs="+", default=[1, 2, 4], help="offered load, x capacity")
    parser.add_argument("--size", type=int, default=256, help="photo side in px (tiny model)")
    parser.add_argument("--api", help="a running service (loopback); default: start the demo config here")
    parser.add_argument("--key", help="with --api: an API key with enough credits")
    parser.add_argument("--workdir", type=Path, default=Path(".run/bench-overload"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--admission", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override admission settings of the demo config, e.g. latency_tolerance=1.2")
    parser.add_argument("--before", action="store_true",
                        help="the demo config as shipped before adaptive admission (admission off, Ingress 64 + 64)")
    args = parser.parse_args(argv)
    seconds = min(max(args.seconds, 5), 120)
    soak = min(max(args.soak, 0), 1800)
    started = datetime.datetime.now(datetime.timezone.utc)
    if args.api:
        target = colorize_target(args.api, api_key=args.key, size=args.size, timeout_s=30)
        results = asyncio.run(run(target, seconds=seconds, soak_s=soak, idle=args.idle,
                                  idle_hold_s=args.idle_hold, service_pids=[], levels=tuple(args.levels)))
    else:
        from tools.build_demo import build

        from .demo_process import DemoService
        from .serve_graph import free_port

        args.workdir = args.workdir.resolve()
        args.workdir.mkdir(parents=True, exist_ok=True)
        build(args.workdir / "models")
        demo = DemoService(args.workdir / "service", args.workdir / "models", free_port())
        if args.admission:
            config = yaml.safe_load(demo.config.read_text())
            overrides = dict(item.split("=", 1) for item in args.admission)
            config["applications"][0]["args"]["admission"] = {k: yaml.safe_load(v) for k, v in overrides.items()}
            demo.config.write_text(yaml.safe_dump(config, sort_keys=False))
        if args.before:
            config = yaml.safe_load(demo.config.read_text())
            config["applications"][0]["args"]["admission"] = {"enabled": False}
            config["applications"][0]["deployments"][0]["max_ongoing_requests"] = 64
            demo.config.write_text(yaml.safe_dump(config, sort_keys=False))
        print(f"demo service (serve_config.demo.yaml) ready in {demo.start():.0f} s", flush=True)
        try:
            credits = 10_000_000
            key = demo.create_key(credits=credits, rate_per_s=100_000, burst=100_000)
            target = colorize_target(demo.url, api_key=key, size=args.size, timeout_s=30)
            results = asyncio.run(run(target, seconds=seconds, soak_s=soak, idle=args.idle,
                                      idle_hold_s=args.idle_hold, service_pids=demo.service_pids(),
                                      levels=tuple(args.levels)))
            time.sleep(2)  # charges settle after their answers
            results["ledger"] = ledger_exact(demo.ledger_url, key, credits, results["oks"])
        finally:
            demo.stop()
    results["run"] = {"date": started.isoformat(timespec="seconds"), "machine": platform.node(),
                      "cpus": os.cpu_count(), "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
                      "seconds_per_phase": seconds, "photo_px": args.size,
                      "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
                      "config": "before: admission off, Ingress 64 + 64" if args.before else "serve_config.demo.yaml",
                      "admission_overrides": args.admission}
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
