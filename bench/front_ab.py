"""The HTTP front, side by side: Serve's Python proxy (what we ship) against Serve 2.60's HAProxy
mode (`RAY_SERVE_ENABLE_HA_PROXY=1`: HAProxy in front, the Ingress replica serving HTTP itself, no
proxy actor hop), with the single-process FastAPI peer as the yardstick.

    python -m bench.front_ab [--seconds 15] [--rounds 2]

Each round starts a fresh cluster per front (the demo's tiny model, 512 px photos, auth off,
`CPU_RAY_ENV`), drives it closed-loop at c = 1, 4 and 16, then the peer; rounds alternate so a
shared machine's drift weighs on all three alike. Loopback only, every phase bounded in time.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from deployments.launch import CPU_RAY_ENV

from . import graph as parts
from .load import colorize_target
from .peer_fastapi import PeerProcess
from .serve_graph import ServeGraph, free_port, graph_options, quiet_ray_env

FRONTS = {"Serve proxy": dict(CPU_RAY_ENV), "HAProxy": {**CPU_RAY_ENV, "RAY_SERVE_ENABLE_HA_PROXY": "1"}}
LEVELS = (1, 4, 16)


def drive_levels(url: str, seconds: float) -> dict[int, dict]:
    target = colorize_target(url)
    parts.drive(target, 4, 3)  # warm-up: first batches, connections
    return {c: parts.drive(target, c, seconds) for c in LEVELS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15, help="each level's length")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    quiet_ray_env()
    print(f"# front A/B {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.2f}")
    rows: list[tuple[int, str, int, dict]] = []
    with tempfile.TemporaryDirectory(prefix="colorize-front-") as workdir:
        from tools.build_demo import build

        models = Path(workdir) / "models"
        build(models)
        for rnd in range(args.rounds):
            for name, env in FRONTS.items():
                with ServeGraph(models, Path(workdir) / f"graph-{rnd}-{name.split()[0].lower()}", free_port(), env) as graph:
                    graph.deploy(graph_options())
                    rows += [(rnd, name, c, s) for c, s in drive_levels(graph.url, args.seconds).items()]
            with PeerProcess(models, Path(workdir) / f"peer-{rnd}", free_port()) as peer:
                rows += [(rnd, "FastAPI peer", c, s) for c, s in drive_levels(peer.url, args.seconds).items()]
    print("\n| round | front | c | req/s | p50 ms | p99 ms | statuses | vs Serve proxy | vs peer |")
    print("|---|---|---|---|---|---|---|---|---|")
    by_key = {(rnd, name, c): s for rnd, name, c, s in rows}
    for rnd, name, c, s in rows:
        proxy, peer = by_key[(rnd, "Serve proxy", c)], by_key[(rnd, "FastAPI peer", c)]
        rps = s["throughput_rps"]
        print(f"| {rnd} | {name} | {c} | {rps:.1f} | {s['p50_ms']:.0f} | {s['p99_ms']:.0f} | {s['statuses']} "
              f"| {rps / proxy['throughput_rps']:.2f} | {rps / peer['throughput_rps']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
