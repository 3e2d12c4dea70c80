"""The real deployment graph on loopback for benchmarks: start, redeploy with options, inspect.

Same builder as production (``deployments.app.build_graph``), demo models, auth off (no
``auth`` in args), local storage in a temp dir, access logs off.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

APP = "colorize"
STAGES = ("Ingress", "ScratchRepair", "ColorizerLarge", "ColorizerTiny", "FaceRemaster")


def bench_args(models: Path, storage: Path) -> dict[str, Any]:
    """Application args: the demo profile's models, no auth (nothing charged, no ledger I/O)."""
    from tools.build_demo import model_args

    return {"storage": {"backend": "local", "root": str(storage), "retention_seconds": 3600},
            **model_args(models), "model_cache_dir": str(storage.parent / "model-cache")}


def graph_options(*, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.1, colorizer_threads: int = 0,
                  ingress_max_ongoing: int = 64, ingress_max_queued: int = -1,
                  colorizer_max_ongoing: int = 64, ingress_replicas: int = 1) -> dict[str, dict[str, Any]]:
    """Per-deployment options, as serve_config.yaml's `deployments:` would set them."""
    # A fixed code version makes a redeploy that only changes options a live update, as `serve deploy`
    # of a config file is; the Python API otherwise draws a new version and restarts every replica.
    quiet = {"logging_config": {"enable_access_log": False}, "version": "bench", "_internal": True}
    # Ray pins OMP_NUM_THREADS to floor(num_cpus) >= 1 in each replica, so a 0.25-CPU colorizer gets one
    # torch thread; measured on 2 shared cores, 2 threads lose ~15% (OpenMP spin-waits at batch sizes 1-2).
    threads = {"runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(colorizer_threads)}}} if colorizer_threads else {}
    options = {name: {"ray_actor_options": {"num_cpus": 0.25}, **quiet} for name in STAGES}
    # As serve_config.yaml: a full Ingress queue answers 503 with Retry-After (Serve's backpressure_config).
    options["Ingress"].update(num_replicas=ingress_replicas,
                              max_ongoing_requests=ingress_max_ongoing, max_queued_requests=ingress_max_queued,
                              backpressure_config={"status_code": 503, "retry_after_s": 2})
    options["ColorizerTiny"].update(
        max_ongoing_requests=max(colorizer_max_ongoing, max_batch_size),
        ray_actor_options={"num_cpus": 0.25, **threads},
        user_config={"max_batch_size": max_batch_size, "batch_wait_timeout_s": batch_wait_timeout_s})
    return options


class ServeGraph:
    """One Ray cluster + Serve on 127.0.0.1:``port``; ``deploy`` (re)deploys the app with options."""

    def __init__(self, models: Path, workdir: Path, port: int, ray_env: dict[str, str] | None = None):
        self.models, self.workdir, self.port = models, workdir, port
        self.ray_env = ray_env or {}  # e.g. Serve feature flags: every Ray process inherits them from here
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> ServeGraph:
        import ray
        from ray import serve

        self._saved_env = {name: os.environ.get(name) for name in self.ray_env}
        os.environ.update(self.ray_env)
        # Lying about CPUs only affects scheduling; replicas ask for fractions anyway.
        ray.init(_node_ip_address="127.0.0.1", num_cpus=4, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, namespace="bench")
        serve.start(http_options={"host": "127.0.0.1", "port": self.port, "request_timeout_s": 120},
                    logging_config={"enable_access_log": False})
        return self

    def __exit__(self, *exc) -> None:
        import ray

        try:
            ray.shutdown()  # takes every Serve actor with it in ~1 s; serve.shutdown() can wait 30 s on replicas
        finally:
            for name, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def deploy(self, options: dict[str, dict[str, Any]]) -> float:
        """Deploy (or update) the app and wait until it answers; returns seconds taken."""
        from ray import serve

        from deployments.app import build_graph
        from service.settings import load_settings

        started = time.perf_counter()
        settings = load_settings(bench_args(self.models, self.workdir / "storage"))
        serve.run(build_graph(settings, options), name=APP, route_prefix="/",
                  logging_config={"enable_access_log": False})
        return time.perf_counter() - started

    def logs_dir(self) -> Path:
        """This cluster's log folder (replicas' stderr: ``worker-*.err``)."""
        import ray

        return Path(ray._private.worker._global_node.get_logs_dir_path())

    def batch_sizes(self, model: str = "tiny") -> dict[int, int]:
        """Batch sizes the colorizer formed so far, from /health (the ingress caches stage statuses for
        STATUS_TTL_S, so wait that out). Over HTTP, since some Serve flags make driver-side handles unusable."""
        import httpx

        from deployments.graph import STATUS_TTL_S

        time.sleep(STATUS_TTL_S + 0.1)
        health = httpx.get(f"{self.url}/health", timeout=30, trust_env=False).json()
        return {int(size): n for size, n in health["models"][model].get("batch_sizes", {}).items()}

    def processes(self) -> dict[str, int]:
        """{"Ingress#abc": pid, ..., "proxy": pid, "controller": pid} for this cluster's Serve actors."""
        from ray._private import state  # the GCS actor table; the public state API needs the dashboard

        found = {}
        for actor in state.actors().values():
            if actor["State"] != "ALIVE" or not actor["Pid"]:
                continue
            name, cls = actor["Name"], actor["ActorClassName"]
            if name.startswith("SERVE_REPLICA::"):
                found[name.split("#", 1)[1]] = actor["Pid"]
            elif "Proxy" in cls:
                found["proxy"] = actor["Pid"]
            elif "Controller" in cls:
                found["controller"] = actor["Pid"]
        return found


def rss_mib(pid: int) -> float:
    """Resident set size from /proc (Linux), in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise ProcessLookupError(pid)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def quiet_ray_env() -> None:
    # No usage-stats reporting attempts and no dashboard from a benchmark.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def process_groups(graph: ServeGraph, exclude: tuple[int, ...] = ()) -> dict[str, list[int]]:
    """Processes to meter: each Serve actor, the other (idle) stages, Ray's daemons, this client.
    ``exclude``: other children of this process (the peer) and their descendants."""
    from .profile import descendants

    actors = graph.processes()
    others = {pid for root in exclude for pid in (root, *descendants(root))}
    groups: dict[str, list[int]] = {"client (load generator + driver)": [os.getpid()]}
    for name, pid in actors.items():
        stage = name.split("#")[0]
        key = stage if stage in ("Ingress", "ColorizerTiny", "proxy", "controller") else "idle stages"
        groups.setdefault(key, []).append(pid)
    groups["Ray daemons (raylet, GCS, ...)"] = [pid for pid in descendants(os.getpid())
                                                if pid not in set(actors.values()) | others]
    return groups
