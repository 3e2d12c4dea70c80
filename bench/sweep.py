"""Tuning sweep for the graph's knobs, one cluster, one run: batch wait vs latency/throughput,
and which Ingress queue bounds keep accepted latency low under 4x overload.

    python -m bench.sweep --batch-waits 0.005 0.02 --overload 2:0 3:1 4:1

Not the issue-5 report (that is ``bench.run``); this picks the values it uses.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

from . import graph as parts
from .load import closed_loop, colorize_target, open_loop
from .serve_graph import ServeGraph, free_port, graph_options, quiet_ray_env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-waits", type=float, nargs="*", default=[0.005, 0.01, 0.02])
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--colorizer-max-ongoing", type=int, default=64)
    parser.add_argument("--ingress-replicas", type=int, nargs="*", default=[1])
    parser.add_argument("--levels", type=int, nargs="*", default=[1, 16])
    parser.add_argument("--overload", nargs="*", default=["2:0", "2:1", "3:1", "4:1"],
                        metavar="MAX_ONGOING:MAX_QUEUED")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--ray-env", nargs="*", default=[], metavar="NAME=VALUE", help="env of every Ray process")
    parser.add_argument("--client-nice", type=int, default=0, help="niceness of the load generator while overloading")
    args = parser.parse_args(argv)
    quiet_ray_env()
    from tools.build_demo import build

    with tempfile.TemporaryDirectory(prefix="colorize-sweep-") as workdir:
        models = Path(workdir) / "models"
        build(models)
        with ServeGraph(models, Path(workdir) / "graph", free_port(),
                        dict(item.split("=", 1) for item in args.ray_env)) as service:
            target = colorize_target(service.url)
            capacity = 0.0
            for wait, ingresses in [(w, n) for w in args.batch_waits for n in args.ingress_replicas]:
                options = {"max_batch_size": args.max_batch_size, "batch_wait_timeout_s": wait,
                           "colorizer_max_ongoing": args.colorizer_max_ongoing, "ingress_replicas": ingresses}
                service.deploy(graph_options(**options))
                for level in args.levels:
                    before = service.batch_sizes()
                    summary = parts.drive(target, level, args.seconds)
                    batch = parts.mean_batch(parts.batch_delta(before, service.batch_sizes()))
                    if level == 16:
                        capacity = max(capacity, summary["throughput_rps"])
                    print(f"wait {wait:g}, {ingresses} ingress c={level}: {summary['throughput_rps']:.1f} req/s, p50 "
                          f"{summary['p50_ms']:.0f} p99 {summary['p99_ms']:.0f} ms, mean batch {batch:.2f} "
                          f"{summary['statuses']}", flush=True)
            os.nice(args.client_nice)  # after Ray started: only this process (the load generator) is niced
            for bounds in args.overload:
                ongoing, queued = (int(x) for x in bounds.split(":"))
                service.deploy(graph_options(max_batch_size=args.max_batch_size,
                                             batch_wait_timeout_s=args.batch_waits[0],
                                             ingress_max_ongoing=ongoing, ingress_max_queued=queued))
                asyncio.run(closed_loop(target, ongoing, requests=16))
                baseline = parts.drive(target, ongoing, args.seconds / 2)
                print(f"ingress {ongoing}:{queued}, closed loop c={ongoing} (no shed traffic): p50 "
                      f"{baseline['p50_ms']:.0f} p99 {baseline['p99_ms']:.0f} ms", flush=True)
                result = asyncio.run(open_loop(target, 4 * capacity, args.seconds))
                summary = result.summary()
                print(f"overload 4x{capacity:.1f}/s, ingress {ongoing}:{queued}: accepted {summary['ok']} "
                      f"p50 {summary['p50_ms']:.0f} p99 {summary['p99_ms']:.0f} ms {summary['statuses']}; "
                      f"client {1000 * result.client_cpu_s / len(result.samples):.2f} CPU ms/request, sent "
                      f"{len(result.samples) / args.seconds:.0f}/s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
