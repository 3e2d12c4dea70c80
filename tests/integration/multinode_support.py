"""Building blocks of the multi-node scenario: the loopback Ray cluster, moto, the HTTP client,
replica placement and the report. Kept apart so multinode_scenario.py reads as the story."""
from __future__ import annotations
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

APP = "colorize"
BUCKET = "multinode"
WORKERS = ("worker_a", "worker_b", "worker_c")
PRICE = 2  # model=tiny (1) + clean_scratches=true (+1)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STAGES = ("ScratchRepair", "ColorizerLarge", "ColorizerTiny", "FaceRemaster")

# Faster node-death detection than Ray's defaults (3 s x 5 checks): the GCS health-checks each
# raylet every second and declares it dead after 5 missed checks. Each check still has Ray's
# default 10 s reply timeout, so a busy (not dead) raylet on 2 cores is not declared dead.
SYSTEM_CONFIG = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
                 "health_check_failure_threshold": 5}


class ScenarioFailed(AssertionError):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ScenarioFailed(message)


_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[multinode {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def wait_until(predicate, *, timeout_s: float, every_s: float = 0.5, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ScenarioFailed(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


# -- moto (S3-compatible server) ------------------------------------------------------------

def start_moto() -> tuple[subprocess.Popen, str]:
    from tests.helpers import free_port

    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
            return process, f"127.0.0.1:{port}"
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise ScenarioFailed(f"moto_server did not start on port {port}")
            time.sleep(0.1)


def stop_process(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


# -- requests -------------------------------------------------------------------------------

@dataclass
class Outcome:
    phase: str
    started: float          # monotonic seconds
    finished: float
    status: int             # HTTP status; -1: no HTTP answer (client-side error)
    output_url: str | None = None
    detail: str | None = None
    readable: bool | None = None  # the output fetched from MinIO and is a PNG

    @property
    def filename(self) -> str:
        return urlsplit(self.output_url).path.rsplit("/", 1)[-1]


class Client:
    """Posts key API jobs (model=tiny, clean_scratches=true) and records every outcome."""

    def __init__(self, url: str, key: str, image: bytes):
        import httpx

        self.url, self.key, self.image = url, key, image
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._httpx = httpx

    def post(self, phase: str) -> Outcome:
        started = time.monotonic()
        try:
            response = self._httpx.post(f"{self.url}/api/v1/colorize", files={"image": ("old.jpg", self.image)},
                                        data={"model": "tiny", "clean_scratches": "true"},
                                        headers={"X-Api-Key": self.key}, timeout=120)
            body = response.json()
            outcome = Outcome(phase, started, time.monotonic(), response.status_code,
                              output_url=body.get("outputUrl"), detail=body.get("detail"))
        except Exception as exc:  # recorded, and fails the scenario: every request must get an answer
            outcome = Outcome(phase, started, time.monotonic(), -1, detail=f"{type(exc).__name__}: {exc}")
        with self._lock:
            self.outcomes.append(outcome)
        return outcome

    def load(self, phase: str, stop: threading.Event, threads: int = 4) -> list[threading.Thread]:
        """Keep `threads` requests in flight until `stop` is set."""
        def loop():
            while not stop.is_set():
                self.post(phase)

        workers = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
        for worker in workers:
            worker.start()
        return workers

    def successes(self, phase: str | None = None) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.status == 200 and (phase is None or o.phase == phase)]


def fetch_output(outcome: Outcome) -> None:
    """The presigned MinIO URL answers with the PNG the job produced."""
    with urllib.request.urlopen(outcome.output_url, timeout=30) as fetched:
        outcome.readable = fetched.status == 200 and fetched.read(8) == PNG_MAGIC


# -- the cluster ----------------------------------------------------------------------------

class Cluster:
    def __init__(self):
        from ray.cluster_utils import Cluster as RayCluster

        self.cluster = RayCluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "resources": {"head": 1}, "node_ip_address": "127.0.0.1",
            "include_dashboard": False, "_system_config": SYSTEM_CONFIG})
        self.labels = {self.cluster.head_node.node_id: "head"}
        self.nodes = {}
        for name in WORKERS:
            node = self.cluster.add_node(num_cpus=1, resources={"worker": 1, name: 1}, node_ip_address="127.0.0.1")
            self.labels[node.node_id] = name
            self.nodes[name] = node
        self.cluster.wait_for_nodes(timeout=60)

    def label(self, node_id: str | None) -> str:
        return self.labels.get(node_id, f"unknown node {node_id}")

    def alive_nodes(self) -> set[str]:
        import ray

        return {node["NodeID"] for node in ray.nodes() if node["Alive"]}

    def replicas(self) -> dict[str, list[str]]:
        """Alive Serve replica actors of the app, per deployment: their node ids (from the GCS)."""
        from ray._private import state

        placed: dict[str, list[str]] = {}
        for actor in state.actors().values():
            name = actor.get("Name") or ""
            if actor.get("State") != "ALIVE" or not name.startswith(f"SERVE_REPLICA::{APP}#"):
                continue
            deployment = name.split("#")[1]
            placed.setdefault(deployment, []).append(actor["Address"]["NodeID"])
        return placed

    def remove(self, name: str) -> None:
        self.cluster.remove_node(self.nodes.pop(name), allow_graceful=False)

    def shutdown(self) -> None:
        self.cluster.shutdown()


def replica_states(deployment: str) -> dict[str, int]:
    from ray import serve

    app = serve.status().applications.get(APP)
    if app is None or deployment not in app.deployments:
        return {}
    return {str(getattr(state, "value", state)): n for state, n in app.deployments[deployment].replica_states.items()}


def stage_statuses(deployment: str, replicas: int, *, attempts: int = 40) -> dict[str, dict]:
    """`status()` of each replica of a stage, by node id (the handle picks a replica per call)."""
    from ray import serve

    handle = serve.get_deployment_handle(deployment, app_name=APP)
    seen: dict[str, dict] = {}
    for _ in range(attempts):
        status = handle.status.remote().result(timeout_s=30)
        seen[status["node_id"]] = status
        if len(seen) >= replicas:
            break
    return seen


def batches(status: dict) -> int:
    return sum(status.get("batch_sizes", {}).values())


# -- the scenario ---------------------------------------------------------------------------

@dataclass
class Report:
    timings_s: dict = field(default_factory=dict)
    placement: dict = field(default_factory=dict)
    tiny_batches_before: dict = field(default_factory=dict)
    scratch_batches_before: dict = field(default_factory=dict)
    victim: dict = field(default_factory=dict)
    failover: dict = field(default_factory=dict)
    placement_after: dict = field(default_factory=dict)
    tiny_batches_after: dict = field(default_factory=dict)
    requests: dict = field(default_factory=dict)
    credits: dict = field(default_factory=dict)
