"""The parts of the benchmark that drive running services: concurrency levels, the c=16
head-to-head, batching on/off, overload with shedding, replica memory, a Serve-flags
variant, and profiles. Each returns plain dicts."""
from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from . import profile
from .load import RunResult, Target, closed_loop, colorize_target, combine, open_loop
from .serve_graph import ServeGraph, free_port, graph_options, process_groups, rss_mib

# The graph runs as `make demo` starts it on a CPU-only box (deployments.launch.CPU_RAY_ENV); the
# variant is the same graph with Ray's defaults for those variables (user code and routers on loops
# in threads of their own, objects over 100 KiB through the object store). On these 2 cores the
# bundle RAY_SERVE_THROUGHPUT_OPTIMIZED=1, which also switches to gRPC, measured 34% slower.
RAY_DEFAULTS = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "1", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
                "RAY_max_direct_call_object_size": str(100 * 1024)}


@dataclass(frozen=True)
class Plan:
    """How long each part runs; ``quick()`` is a smoke run."""
    levels: tuple[int, ...] = (1, 4, 16, 64)
    level_seconds: float = 20.0
    bare_images: int = 48
    rss_requests: int = 2000
    overload_factor: float = 4.0
    overload_seconds: float = 30.0
    profile_seconds: float = 10.0
    # Overload config: two requests in flight at the ingress and one waiting at the proxy, so an
    # accepted request never waits behind more than 2 others; the rest are shed at once (503).
    # Picked with `python -m bench.sweep`: 1:1 to 8:1 all shed; 1:1 and 2:1 had the lowest accepted
    # p99 (~280 ms), and 2:1 accepts about twice as many.
    overload_max_ongoing: int = 2
    overload_max_queued: int = 1

    @classmethod
    def quick(cls) -> Plan:
        return replace(cls(), level_seconds=4.0, bare_images=8, rss_requests=200, overload_seconds=6.0,
                       profile_seconds=3.0)


@dataclass
class Measured:
    result: RunResult
    cpu_s: dict[str, float]   # CPU seconds per process group while it ran


def measure(target: Target, concurrency: int, seconds: float, groups: dict[str, list[int]] | None = None,
            requests: int | None = None) -> Measured:
    """One closed-loop run, metering the CPU of ``groups`` (and of the whole machine)."""
    meter = profile.CpuMeter(groups or {}).start()
    result = asyncio.run(closed_loop(target, concurrency, seconds=seconds, requests=requests,
                                     warmup=min(concurrency, 16)))
    return Measured(result, meter.stop())


def summarize(runs: list[Measured]) -> dict:
    """One summary of one or more runs, with CPU ms per successful request of each process group."""
    summary = combine([run.result for run in runs]).summary()
    cpu: Counter = Counter()
    for run in runs:
        cpu.update(run.cpu_s)
    summary["cpu_ms_per_request"] = {name: 1000 * used / max(summary["ok"], 1) for name, used in cpu.items()}
    return summary


def drive(target: Target, concurrency: int, seconds: float, groups: dict[str, list[int]] | None = None,
          requests: int | None = None) -> dict:
    return summarize([measure(target, concurrency, seconds, groups, requests)])


def batch_delta(before: dict[int, int], after: dict[int, int]) -> dict[int, int]:
    return {size: after[size] - before.get(size, 0) for size in sorted(after) if after[size] > before.get(size, 0)}


def mean_batch(sizes: dict[int, int]) -> float:
    batches = sum(sizes.values())
    return sum(size * n for size, n in sizes.items()) / batches if batches else float("nan")


def graph_levels(graph: ServeGraph, target: Target, plan: Plan, levels: tuple[int, ...],
                 groups: dict[str, list[int]]) -> dict[int, dict]:
    results = {}
    for concurrency in levels:
        before = graph.batch_sizes()
        summary = drive(target, concurrency, plan.level_seconds, groups)
        summary["batch_sizes"] = batch_delta(before, graph.batch_sizes())
        results[concurrency] = summary
    return results


def head_to_head(graph: ServeGraph, graph_target: Target, peer_target: Target, groups: dict[str, dict[str, list[int]]],
                 bare: Callable[[], dict], plan: Plan, concurrency: int = 16, rounds: int = 2) -> dict:
    """Graph, peer and bare in turns (graph, peer, bare, graph, peer, bare), so that the background
    load of a shared machine, which drifts over minutes, weighs on all three alike."""
    graph_runs, peer_runs, bare_runs = [], [], []
    before = graph.batch_sizes()
    for _ in range(rounds):
        graph_runs.append(measure(graph_target, concurrency, plan.level_seconds / rounds, groups["graph"]))
        peer_runs.append(measure(peer_target, concurrency, plan.level_seconds / rounds, groups["peer"]))
        bare_runs.append(bare())
    graph_summary = summarize(graph_runs)
    graph_summary["batch_sizes"] = batch_delta(before, graph.batch_sizes())
    rounds_rps = [run["rps"] for run in bare_runs]
    return {"graph": graph_summary, "peer": summarize(peer_runs),
            "bare": {"rps": sum(rounds_rps) / rounds, "rounds": rounds_rps,
                     "foreign_cores": sum(run["foreign_cores"] for run in bare_runs) / rounds}}


def batching_ab(graph: ServeGraph, target: Target, plan: Plan, options: dict, groups: dict[str, list[int]],
                concurrency: int = 16, rounds: int = 2) -> list[dict]:
    """Batching on vs off (max_batch_size 1, a live user_config change), interleaved on, off, on, off
    so drifting background load on a shared machine hits both alike."""
    runs = []
    for _ in range(rounds):
        for batching in (True, False):
            graph.deploy(graph_options(**{**options, **({} if batching else {"max_batch_size": 1})}))
            before = graph.batch_sizes()
            summary = drive(target, concurrency, plan.level_seconds / rounds, groups)
            summary.update(batching=batching, batch_sizes=batch_delta(before, graph.batch_sizes()))
            runs.append(summary)
    graph.deploy(graph_options(**options))
    return runs


def overload(graph: ServeGraph, target: Target, plan: Plan, options: dict, groups: dict[str, list[int]],
             capacity_rps: float) -> dict:
    """Open loop at ``overload_factor`` x capacity, with the ingress's proxy queue bounded so it sheds."""
    shedding = {**options, "ingress_max_ongoing": plan.overload_max_ongoing,
                "ingress_max_queued": plan.overload_max_queued}
    graph.deploy(graph_options(**shedding))
    rate = plan.overload_factor * capacity_rps
    asyncio.run(closed_loop(target, plan.overload_max_ongoing, requests=16))  # warm the new config
    # The same admission bound without the excess traffic: what queueing alone costs an accepted request.
    bound_only = drive(target, plan.overload_max_ongoing, plan.overload_seconds / 3)
    meter = profile.CpuMeter(groups).start()
    result = asyncio.run(open_loop(target, rate, plan.overload_seconds))
    summary = result.summary()
    summary["cpu_ms_per_sent_request"] = {name: 1000 * used / max(len(result.samples), 1)
                                          for name, used in meter.stop().items()}
    statuses = summary["statuses"]
    sent = sum(n for status, n in statuses.items() if status != -1)
    # Deliberate shedding is Serve's own 503 for a full queue; any other 503 (e.g. a stage reported
    # as not loaded) is a failure, not shedding.
    shed = sum(n for what, n in result.errors.items() if what.startswith("503:") and "backpressure" in what)
    summary.update(
        offered_factor=plan.overload_factor, capacity_rps=capacity_rps, shed_fraction=shed / max(sent, 1),
        shed_without_retry_after=sum(n for what, n in result.errors.items() if what.endswith("[no Retry-After]")),
        unexpected=sum(n for status, n in statuses.items() if status not in (200, 503)) + statuses.get(503, 0) - shed,
        bound_only={key: bound_only[key] for key in ("throughput_rps", "p50_ms", "p99_ms")},
        config={"Ingress.max_ongoing_requests": plan.overload_max_ongoing,
                "Ingress.max_queued_requests": plan.overload_max_queued})
    graph.deploy(graph_options(**options))
    return summary


def serve_variant(models: Path, workdir: Path, plan: Plan, options: dict, ray_env: dict[str, str],
                  concurrency: int = 16) -> dict:
    """The same graph and load in a fresh cluster whose processes run with ``ray_env``."""
    with ServeGraph(models, workdir, free_port(), ray_env) as service:
        service.deploy(graph_options(**options))
        target = colorize_target(service.url)
        before = service.batch_sizes()
        summary = drive(target, concurrency, plan.level_seconds, process_groups(service))
        summary["batch_sizes"] = batch_delta(before, service.batch_sizes())
    summary["ray_env"] = ray_env
    summary["label"] = "Ray defaults" if ray_env == RAY_DEFAULTS else " ".join(f"{k}={v}" for k, v in ray_env.items())
    return summary


def replica_memory(graph: ServeGraph, target: Target, plan: Plan, concurrency: int = 16) -> dict:
    """RSS of every Serve process before and after ``rss_requests`` requests (after a warm-up)."""
    asyncio.run(closed_loop(target, concurrency, requests=64, warmup=concurrency))
    processes = graph.processes()
    before = {name: rss_mib(pid) for name, pid in processes.items()}
    summary = drive(target, concurrency, 600, requests=plan.rss_requests)
    after = {name: rss_mib(pid) for name, pid in processes.items()}
    rows = {name.split("#")[0]: {"before_mib": before[name], "after_mib": after[name],
                                 "growth": after[name] / before[name] - 1} for name in processes}
    return {"requests": summary["requests"], "ok": summary["ok"], "statuses": summary["statuses"], "rss": rows}


def profile_graph(graph: ServeGraph, target: Target, plan: Plan, out_dir: Path, concurrency: int = 16) -> dict:
    """py-spy (on-CPU samples) of the proxy, the ingress and the tiny colorizer under load."""
    processes = graph.processes()
    chosen = {name: pid for name, pid in processes.items()
              if name.split("#")[0] in ("proxy", "Ingress", "ColorizerTiny")}
    runs = profile.start_recording(chosen, plan.profile_seconds, out_dir)
    if not runs:
        return {"error": "py-spy is not installed (pip install -e '.[bench]')"}
    asyncio.run(closed_loop(target, concurrency, seconds=plan.profile_seconds + 2))
    stacks = profile.finish_recording(runs)
    return {name: {"samples": sum(s.values()), "categories": profile.categorize(s),
                   "top_self": profile.top_leaves(s)} for name, s in stacks.items()}


def meter_groups(graph: ServeGraph, peer_pid: int) -> dict[str, dict[str, list[int]]]:
    """What to meter while the graph, or the peer, is under load (the other one idles beside it)."""
    graph_groups = process_groups(graph, exclude=(peer_pid,))
    ray_pids = [pid for name, pids in graph_groups.items() if not name.startswith("client") for pid in pids]
    return {"graph": {**graph_groups, "idle peer (not under test)": [peer_pid]},
            "peer": {"server process": [peer_pid], "client (load generator + driver)": [os.getpid()],
                     "idle Ray cluster (not under test)": ray_pids}}
