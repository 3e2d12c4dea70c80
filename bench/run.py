"""Issue-5 benchmark in one run: the Serve graph vs the bare model vs a FastAPI peer.

Also batching on/off, overload shedding, replica memory, a Serve-flags variant, and a
py-spy profile of where the graph's time goes.

    python -m bench.run            # full (make bench), ~8 min on 2 cores
    python -m bench.run --quick    # smoke run, ~2 min
    python -m bench.run --json results.json

Everything runs on 127.0.0.1 in temp dirs, with the tiny DDColor demo build and 512x512
photos. The machine is shared and small, so the target ratios come from a head-to-head at
c=16 where graph, peer and bare take turns (graph, peer, bare, graph, peer, bare), and
every CPU figure says how much of the machine other work was using meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from . import graph as parts
from deployments.launch import CPU_RAY_ENV

from .bare import bare_throughput
from .load import colorize_target
from .peer_fastapi import PeerProcess
from .photos import load_photos
from .report import report
from .serve_graph import ServeGraph, free_port, quiet_ray_env
from .trace import lone_requests


def run(plan: parts.Plan, options: dict, *, with_profile: bool, variant_env: dict[str, str], workdir: Path) -> dict:
    from tools.build_demo import build

    models = workdir / "models"
    build(models)
    photos = load_photos()
    results: dict = {"plan": plan.__dict__, "graph_options": options}
    results["bare_before"] = bare_throughput(models, workdir / "bare", photos, images_per_size=plan.bare_images)
    _progress("bare img/s by batch", {b: round(r["rps"], 1) for b, r in results["bare_before"].items()})
    best_batch = max(results["bare_before"], key=lambda b: results["bare_before"][b]["rps"])

    def bare_at_best_batch() -> dict:
        return bare_throughput(models, workdir / "bare", photos, (best_batch,), plan.bare_images)[best_batch]

    with ServeGraph(models, workdir / "graph", free_port(), CPU_RAY_ENV) as service, \
            PeerProcess(models, workdir / "peer", free_port()) as peer:
        results["graph_deploy_s"] = service.deploy(parts.graph_options(**options))
        target, peer_target = colorize_target(service.url), colorize_target(peer.url)
        results["lone_trace"] = lone_requests(target, service.logs_dir())
        _progress("a lone request, ms", round(results["lone_trace"]["client"], 1))
        groups = parts.meter_groups(service, peer.pid)
        others = tuple(c for c in plan.levels if c != 16)
        results["graph"] = parts.graph_levels(service, target, plan, others, groups["graph"])
        results["peer"] = {c: parts.drive(peer_target, c, plan.level_seconds, groups["peer"]) for c in others}
        duel = parts.head_to_head(service, target, peer_target, groups, bare_at_best_batch, plan)
        results["graph"][16], results["peer"][16] = duel["graph"], duel["peer"]
        results["bare_interleaved"] = {"batch": best_batch, **duel["bare"]}
        for name in ("graph", "peer"):
            results[name] = dict(sorted(results[name].items()))
            _progress(f"{name} req/s by concurrency", {c: round(s["throughput_rps"], 1)
                                                      for c, s in results[name].items()})
        if with_profile:
            results["profile"] = parts.profile_graph(service, target, plan, workdir / "profile")
        results["batching"] = parts.batching_ab(service, target, plan, options, groups["graph"])
        results["overload"] = parts.overload(service, target, plan, options, groups["graph"],
                                             duel["graph"]["throughput_rps"])
        _progress("overload", results["overload"]["statuses"])
        results["memory"] = parts.replica_memory(service, target, plan)

    if variant_env:
        results["variant"] = parts.serve_variant(models, workdir / "graph-variant", plan, options, variant_env)
        _progress(f"variant {variant_env} c=16", round(results["variant"]["throughput_rps"], 1))
    results["bare_after"] = bare_throughput(models, workdir / "bare", photos, images_per_size=plan.bare_images)
    return results


def _progress(what: str, value) -> None:
    print(f"# {time.strftime('%H:%M:%S')} {what}: {value}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--json", type=Path, help="also write all results here")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument("--variant-env", nargs="*", metavar="NAME=VALUE",
                        default=[f"{k}={v}" for k, v in parts.RAY_DEFAULTS.items()],
                        help="env of a second cluster measured at c=16 (Ray/Serve flags); none: skip it")
    # Defaults: the colorizer's user_config of serve_config.demo.yaml.
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-wait-s", type=float, default=0.1)
    parser.add_argument("--colorizer-threads", type=int, default=0, help="torch threads; 0: Ray's default (1)")
    parser.add_argument("--overload-max-ongoing", type=int, help="Ingress max_ongoing_requests while overloaded")
    parser.add_argument("--overload-max-queued", type=int, help="Ingress max_queued_requests while overloaded")
    args = parser.parse_args(argv)
    plan = parts.Plan.quick() if args.quick else parts.Plan()
    plan = replace(plan, overload_max_ongoing=args.overload_max_ongoing or plan.overload_max_ongoing,
                   overload_max_queued=args.overload_max_queued or plan.overload_max_queued)
    options = {"max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_s,
               "colorizer_threads": args.colorizer_threads}
    quiet_ray_env()
    print(f"# colorize bench {'(quick) ' if args.quick else ''}{time.strftime('%Y-%m-%d %H:%M')}, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, load avg {os.getloadavg()[0]:.2f}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="colorize-bench-") as workdir:
        results = run(plan, options, with_profile=not args.no_profile,
                      variant_env=dict(item.split("=", 1) for item in args.variant_env), workdir=Path(workdir))
    results["seconds"] = time.monotonic() - started
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    print(report(results), flush=True)
    print(f"\n# done in {results['seconds']:.0f} s, load avg {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
