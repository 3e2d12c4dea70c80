"""What one call between two replicas costs on this machine with nothing else in it: the floor under
the graph's Ingress <-> stage hop (``bench/trace.py`` splits a lone request; this says how much of
its hop is Ray Serve's own, whatever our code does).

One replica calls another in a loop, one call at a time, with the Ray settings ``make demo`` uses on
a CPU-only box (``deployments.launch.CPU_RAY_ENV``): through a Serve ``DeploymentHandle`` (router,
``max_ongoing_requests`` handshake) and through a plain Ray actor handle, carrying nothing, a 512 px
RGB photo one way, or the photo both ways (as a stage returns its result).

And the other hop, client -> Ingress: one HTTP client posts a small (1 KB) or photo-sized (200 KB)
body to a Starlette app that answers its length, served by Serve's proxy and a replica, and by uvicorn in one process.

    python -m bench.hop_cost [--calls 300]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

WARMUP = 50
PAYLOADS = (("nothing", 0, False), ("512 px photo there, its shape back", 512, False),
            ("512 px photo there and back", 512, True))


HTTP_BODIES = (bytes(1024), bytes(200 * 1024))


def starlette_echo():
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def length(request):
        return JSONResponse({"length": len(await request.body())})

    return Starlette(routes=[Route("/", length, methods=["POST"])])


def time_posts(url: str, calls: int, body: bytes) -> tuple[float, float]:
    import httpx

    times = []
    with httpx.Client(trust_env=False, timeout=10) as client:
        for _ in range(WARMUP + calls):
            started = time.perf_counter()
            client.post(url, content=body).raise_for_status()
            times.append(time.perf_counter() - started)
    times = times[WARMUP:]
    return statistics.median(times) * 1e3, statistics.quantiles(times, n=10)[-1] * 1e3


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def plain_uvicorn(calls: int) -> list[tuple[float, float]]:
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(starlette_echo(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        return [time_posts(f"http://127.0.0.1:{port}/", calls, body) for body in HTTP_BODIES]
    finally:
        server.should_exit = True
        thread.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    from deployments.launch import CPU_RAY_ENV

    for name, value in CPU_RAY_ENV.items():
        os.environ.setdefault(name, value)
    import ray
    from ray import serve

    @ray.remote(num_cpus=0)
    class RawEcho:
        async def echo(self, photo, back: bool):
            return photo if back else getattr(photo, "shape", None)

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
    class Echo:
        async def echo(self, photo, back: bool):
            return photo if back else getattr(photo, "shape", None)

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Caller:
        def __init__(self, serve_echo, raw_echo):
            self.serve_echo, self.raw_echo = serve_echo, raw_echo

        async def measure(self, via: str, side: int, back: bool, calls: int) -> list[float]:
            photo = np.zeros((side, side, 3), np.uint8) if side else None
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                if via == "serve":
                    await self.serve_echo.echo.remote(photo, back)
                else:
                    await self.raw_echo.echo.remote(photo, back)
                times.append(time.perf_counter() - started)
            return times

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    @serve.ingress(starlette_echo())
    class HttpEcho:
        pass

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    http_port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": http_port})
    try:
        raw = RawEcho.remote()
        caller = serve.run(Caller.bind(Echo.bind(), raw), name="hop-cost", route_prefix=None)
        print(f"one call at a time, {args.calls} calls after {WARMUP} warm-up; ms")
        print("| carrying | Serve handle p50 / p90 | Ray actor p50 / p90 | Serve's own |")
        print("|---|---|---|---|")
        for label, side, back in PAYLOADS:
            row = {}
            for via in ("serve", "ray"):
                times = caller.measure.remote(via, side, back, WARMUP + args.calls).result()[WARMUP:]
                row[via] = (statistics.median(times) * 1e3, statistics.quantiles(times, n=10)[-1] * 1e3)
            print(f"| {label} | {row['serve'][0]:.2f} / {row['serve'][1]:.2f} | {row['ray'][0]:.2f} / "
                  f"{row['ray'][1]:.2f} | {row['serve'][0] - row['ray'][0]:+.2f} |")
        serve.run(HttpEcho.bind(), name="http-echo", route_prefix="/")
        served = [time_posts(f"http://127.0.0.1:{http_port}/", args.calls, body) for body in HTTP_BODIES]
        alone = plain_uvicorn(args.calls)
        print("\nPOST a body, answer its length, one at a time; ms")
        print("| body | Serve's proxy + a replica p50 / p90 | uvicorn, one process p50 / p90 | Serve's own |")
        print("|---|---|---|---|")
        for body, (ours, theirs) in zip(HTTP_BODIES, zip(served, alone)):
            print(f"| {len(body) // 1024} KB | {ours[0]:.2f} / {ours[1]:.2f} | {theirs[0]:.2f} / {theirs[1]:.2f} | "
                  f"{ours[0] - theirs[0]:+.2f} |")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
