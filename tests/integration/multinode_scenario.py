"""A real multi-node Ray cluster on one machine: the graph spread over nodes, one
worker node killed under load, the service answering again with credits exact.

Run by ``tests/integration/test_multinode.py`` in its own process (the integration suite's
pytest process already runs ``ray.init`` for its single-node cluster), or by hand:

    .venv/bin/python tests/integration/multinode_scenario.py

Four Ray nodes on 127.0.0.1 (``ray.cluster_utils.Cluster``): a head (``head`` resource) that
hosts the Serve controller, the HTTP proxy and the Ingress, and three workers (``worker`` and
``worker_a``/``worker_b``/``worker_c``) for the model stages; ``ColorizerTiny`` has two
replicas, at most one per node, so one worker is spare. Storage is MinIO (``moto_server`` on
loopback, started here), the ledger one SQLite file that every node opens.

Prints one line ``MULTINODE_RESULT {json}`` and exits 0 when every check passed; exits 1 with
``MULTINODE_FAILED: <why>`` on stderr otherwise. Ray, Serve and moto are shut down either way.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: make `tests.*` importable
    sys.path.insert(0, str(REPO))

from tests.integration.multinode_support import (  # noqa: E402 (after the sys.path fix)
    APP, BUCKET, PRICE, STAGES, ScenarioFailed,
    check, log, wait_until, start_moto, stop_process, Client, fetch_output,
    Cluster, replica_states, stage_statuses, batches, Report,
)


def scenario_args(root: Path, models: Path, moto_endpoint: str) -> dict:
    from tests.integration.conftest import demo_args

    args = demo_args(root, models, jwks_url=None, storage={
        "backend": "minio", "endpoint": moto_endpoint, "secure": False, "bucket": BUCKET,
        "url_expiry_seconds": 600})
    # Only what this scenario exercises is loaded: the tiny colorizer and OpenCV scratch repair.
    # `large` and face remaster stay deployed (on workers) and report themselves not loaded.
    args["colorizers"]["large"]["source"] = str(root / "no-large")
    args["scratch_repair"] = {}
    args["face_remaster"] = {}
    return args


def deployment_options() -> dict:
    def stage(**extra) -> dict:
        return {"ray_actor_options": {"num_cpus": 0.1, "resources": {"worker": 0.01}},
                "health_check_period_s": 1, **extra}

    return {
        "Ingress": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1, "resources": {"head": 0.01}}},
        "ScratchRepair": stage(),
        "ColorizerLarge": stage(),
        # Jobs wait up to 0.25 s in a replica for a batch to fill, so under load some are usually
        # on their way to (or queued in) the replica whose node is killed: failures during the
        # failover are likely, not guaranteed; either way the checks below hold.
        "ColorizerTiny": stage(num_replicas=2, max_replicas_per_node=1,
                               user_config={"max_batch_size": 8, "batch_wait_timeout_s": 0.25}),
        "FaceRemaster": stage(),
    }


def run(report: Report, workdir: Path, deadline_s: float) -> None:
    import ray
    from minio import Minio
    from ray import serve

    from auth.accounts import Accounts
    from auth.db import make_engine
    from auth.keys import parse_key
    from deployments.app import build_graph
    from service.settings import load_settings
    from tools.build_demo import DEMO_MODELS
    from tests.helpers import encode, free_port, photo
    from tests.integration.conftest import balance, create_key

    started = time.monotonic()
    moto = cluster = None
    try:
        moto, endpoint = start_moto()
        models = workdir / "models"
        DEMO_MODELS["tiny"](models / "tiny", 0)  # only the tiny colorizer is needed
        log(f"moto on {endpoint}; tiny model built")

        cluster = Cluster()
        ray.init(address=cluster.cluster.address, log_to_driver=False, configure_logging=False)
        check(len(cluster.alive_nodes()) == 4, f"expected 4 alive nodes, got {ray.nodes()}")
        driver_node = ray.get_runtime_context().get_node_id()
        port = free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        report.timings_s["cluster_up"] = round(time.monotonic() - started, 1)
        log(f"4 nodes up, driver on {cluster.label(driver_node)}; Serve on 127.0.0.1:{port}")

        args = scenario_args(workdir, models, endpoint)
        serve.run(build_graph(load_settings(args), deployment_options()), name=APP, route_prefix="/",
                  blocking=False)
        wait_until(lambda: getattr(serve.status().applications.get(APP), "status", None) == "RUNNING",
                   timeout_s=240, every_s=1,
                   what=f"the app to be RUNNING ({serve.status().applications.get(APP)})")
        report.timings_s["deployed"] = round(time.monotonic() - started, 1)
        log("app RUNNING")

        # -- 1. where everything runs -----------------------------------------------------------
        head = cluster.cluster.head_node.node_id
        placed = cluster.replicas()
        report.placement = {name: sorted(cluster.label(n) for n in nodes) for name, nodes in placed.items()}
        log(f"placement: {report.placement}")
        check(placed.get("Ingress") == [head], f"Ingress is not (only) on the head: {report.placement}")
        tiny_nodes = placed.get("ColorizerTiny", [])
        check(len(tiny_nodes) == 2 and len(set(tiny_nodes)) == 2,
              f"the two ColorizerTiny replicas are not on two different nodes: {report.placement}")
        for name in STAGES:
            check(placed.get(name) and all(n != head and n in cluster.labels for n in placed[name]),
                  f"{name} is not on worker nodes: {report.placement}")

        # -- 2. requests flow: Ingress (head) -> ScratchRepair -> ColorizerTiny (two workers) -----
        key = create_key(args, credits=10_000, rate_per_s=1000, burst=1000)
        start_balance = balance(args, key)
        client = Client(f"http://127.0.0.1:{port}", key, encode(photo(96, 64)))
        for _ in range(30):  # until both tiny replicas have processed jobs (the router picks replicas)
            outcomes = [client.post("steady"), client.post("steady")]
            check(all(o.status == 200 for o in outcomes),
                  f"steady-state request failed: {[asdict(o) for o in outcomes if o.status != 200]}")
            tiny = stage_statuses("ColorizerTiny", 2)
            if len(tiny) == 2 and all(batches(s) > 0 for s in tiny.values()):
                break
        check(len(tiny) == 2 and all(batches(s) > 0 for s in tiny.values()),
              f"jobs did not reach both ColorizerTiny replicas: {tiny}")
        check(set(tiny) == set(tiny_nodes), f"status() node ids {set(tiny)} != actor table {set(tiny_nodes)}")
        report.tiny_batches_before = {cluster.label(n): s["batch_sizes"] for n, s in tiny.items()}
        scratch = stage_statuses("ScratchRepair", 1)
        report.scratch_batches_before = {cluster.label(n): s["batch_sizes"] for n, s in scratch.items()}
        check(all(batches(s) > 0 for s in scratch.values()), f"ScratchRepair processed nothing: {scratch}")
        log(f"steady: {len(client.successes())} jobs; tiny batches {report.tiny_batches_before}, "
            f"scratch batches {report.scratch_batches_before}")

        # -- 3. kill a worker that hosts a tiny replica, under load -----------------------------
        # Prefer one that hosts nothing else, so the surviving replica keeps the service answering.
        def others_on(node_id: str) -> list[str]:
            return [name for name, nodes in placed.items() if name != "ColorizerTiny" and node_id in nodes]

        candidates = [n for n in tiny_nodes if n != driver_node]
        check(candidates, "every tiny replica shares the driver's node")
        victim = sorted(candidates, key=lambda n: (len(others_on(n)), cluster.label(n)))[0]
        victim_name = cluster.label(victim)
        survivor = next(n for n in tiny_nodes if n != victim)
        spare = next(n for n in cluster.labels if n not in tiny_nodes and n != head)
        report.victim = {"node": victim_name, "also_hosted": others_on(victim),
                         "surviving_tiny": cluster.label(survivor), "spare": cluster.label(spare)}
        stop = threading.Event()
        threads = client.load("failover", stop)
        time.sleep(0.5)  # let the load reach the graph before the kill
        log(f"killing {victim_name} (tiny replica + {others_on(victim) or 'nothing else'})")
        t_kill = time.monotonic()
        cluster.remove(victim_name)
        report.timings_s["remove_node_call"] = round(time.monotonic() - t_kill, 1)

        def recovered():
            alive = cluster.alive_nodes()
            now = cluster.replicas()
            tiny_now = now.get("ColorizerTiny", [])
            return (victim not in alive and replica_states("ColorizerTiny") == {"RUNNING": 2}
                    and len(tiny_now) == 2 and len(set(tiny_now)) == 2 and set(tiny_now) <= alive
                    and all(now.get(name) and set(now[name]) <= alive for name in ("Ingress", *STAGES)))

        try:
            wait_until(recovered, timeout_s=120, every_s=0.5, what="two RUNNING ColorizerTiny replicas on live nodes")
            t_recovered = time.monotonic()
            log(f"recovered {t_recovered - t_kill:.1f} s after the kill")
            # Keep the load on until jobs started after the recovery have succeeded too.
            wait_until(lambda: sum(1 for o in client.successes("failover") if o.started > t_recovered) >= 4,
                       timeout_s=60, what="4 successes started after recovery")
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=150)
        check(not any(thread.is_alive() for thread in threads), "a load thread did not finish")

        # -- 4. the new replica serves too ------------------------------------------------------
        placed_after = cluster.replicas()
        report.placement_after = {name: sorted(cluster.label(n) for n in nodes) for name, nodes in placed_after.items()}
        new_tiny = [n for n in placed_after["ColorizerTiny"] if n != survivor]
        check(len(new_tiny) == 1 and new_tiny[0] == spare,
              f"the replacement tiny replica is not on the spare worker {cluster.label(spare)}: "
              f"{report.placement_after}")
        for _ in range(30):
            outcomes = [client.post("after"), client.post("after")]
            check(all(o.status == 200 for o in outcomes),
                  f"request after recovery failed: {[asdict(o) for o in outcomes if o.status != 200]}")
            tiny = stage_statuses("ColorizerTiny", 2)
            if spare in tiny and batches(tiny[spare]) > 0:
                break
        check(spare in tiny and batches(tiny[spare]) > 0, f"the replacement replica processed nothing: {tiny}")
        report.tiny_batches_after = {cluster.label(n): s["batch_sizes"] for n, s in tiny.items()}
        check(victim not in tiny, "a status() answer came from the killed node")

        # -- 5. every answer accounted for ------------------------------------------------------
        outcomes = sorted(client.outcomes, key=lambda o: o.started)
        check(all(o.status != -1 for o in outcomes),
              f"requests got no HTTP answer: {[asdict(o) for o in outcomes if o.status == -1]}")
        failed = [o for o in outcomes if o.status != 200]
        ok = [o for o in outcomes if o.status == 200]
        for outcome in ok:
            fetch_output(outcome)
        check(all(o.readable for o in ok), "some outputs of 200 responses are not readable PNGs in MinIO")
        during = [o for o in outcomes if o.phase == "failover"]
        after_kill_ok = [o for o in during if o.status == 200 and o.started >= t_kill]
        check(after_kill_ok, "no request started after the kill succeeded")
        first_ok = after_kill_ok[0].finished - t_kill
        last_failure = max((o.finished - t_kill for o in failed), default=None)
        report.failover = {
            "kill_to_recovered_s": round(t_recovered - t_kill, 1),
            "kill_to_first_success_s": round(first_ok, 1),
            "last_failure_after_kill_s": None if last_failure is None else round(last_failure, 1),
            "requests_during": len(during), "ok_during": sum(o.status == 200 for o in during),
            "in_flight_at_kill": [{"status": o.status, "took_s": round(o.finished - o.started, 2)}
                                  for o in during if o.started < t_kill < o.finished],
            "slowest_during_s": round(max((o.finished - o.started for o in during), default=0), 2),
            "failed": [{"status": o.status, "at_s": round(o.finished - t_kill, 1), "detail": o.detail}
                       for o in failed],
        }
        log(f"failover: {report.failover}")
        check(first_ok <= 60, f"first success came {first_ok:.1f} s after the kill (limit 60 s)")
        check(t_recovered - t_kill <= 120, "recovery took over 120 s")
        check(last_failure is None or last_failure <= 60,
              f"a request still failed {last_failure} s after the kill (limit 60 s)")
        check(all(o.phase == "failover" for o in failed), "requests outside the failover window failed")

        # Credits: exactly the successes were charged; failures cost nothing; results match the ledger.
        engine = make_engine(args["auth"]["database_url"])
        try:
            totals = Accounts(engine).usage_totals(parse_key(key).key_id)
            results = {row["result_id"] for row in Accounts(engine).usage(parse_key(key).key_id, limit=100_000)
                       if row["status"] == "succeeded"}
        finally:
            engine.dispose()
        final_balance = balance(args, key)
        store = Minio(endpoint, access_key=os.environ["MINIO_ACCESS_KEY"], secret_key=os.environ["MINIO_SECRET_KEY"],
                      secure=False, region="us-east-1")
        stored = {obj.object_name.rsplit("/", 1)[-1] for obj in store.list_objects(BUCKET, prefix="results/")}
        answered = {o.filename for o in ok}
        report.credits = {"start": start_balance, "final": final_balance, "successes": len(ok),
                          "price_each": PRICE, "usage_totals": totals, "stored_results": len(stored)}
        report.requests = {"total": len(outcomes), "ok": len(ok), "failed": len(failed),
                           "by_phase": {p: sum(o.phase == p for o in outcomes) for p in ("steady", "failover", "after")}}
        log(f"credits: {report.credits}")
        check(final_balance == start_balance - PRICE * len(ok),
              f"balance {final_balance} != {start_balance} - {PRICE} x {len(ok)} successes")
        check(totals.get("succeeded", {}) == {"jobs": len(ok), "credits": PRICE * len(ok)},
              f"ledger's succeeded jobs {totals.get('succeeded')} != {len(ok)} answered 200")
        check("reserved" not in totals, f"reservations left open: {totals}")
        check(sum(v["jobs"] for k, v in totals.items() if k != "succeeded") == len(failed),
              f"ledger's unsuccessful jobs {totals} != {len(failed)} failed answers")
        check(len(answered) == len(ok), "two 200 responses share an output")
        check(results == answered, f"charged results != answered results: {results ^ answered}")
        check(stored == answered, f"stored results != answered results: {stored ^ answered}")
        check(time.monotonic() - started < deadline_s, "scenario ran past its own deadline")
    finally:
        t_down = time.monotonic()
        for step, action in (("serve.shutdown", serve.shutdown), ("ray.shutdown", ray.shutdown),
                             ("cluster.shutdown", cluster.shutdown if cluster else None),
                             ("moto", lambda: stop_process(moto))):
            if action is None:
                continue
            try:
                action()
            except Exception as exc:  # keep shutting the rest down
                log(f"{step} failed: {type(exc).__name__}: {exc}")
        report.timings_s["shutdown"] = round(time.monotonic() - t_down, 1)
        report.timings_s["total"] = round(time.monotonic() - started, 1)


def _terminate(signum, frame):
    raise ScenarioFailed(f"terminated by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deadline-s", type=float, default=300, help="fail when the checks take longer")
    options = parser.parse_args(argv)
    # A private Ray temp dir: this cluster's sockets, logs and address file stay out of /tmp/ray,
    # so a `ray.init()` elsewhere on the machine never finds (or is found by) this cluster.
    # Short, for Unix socket path limits.
    workdir = Path(tempfile.mkdtemp(prefix="mn-", dir="/tmp"))
    os.environ["RAY_TMPDIR"] = str(workdir)
    os.environ.pop("RAY_ADDRESS", None)
    # Loopback only: without this, `ray.init(address="127.0.0.1:port")` rewrites the loopback
    # address to the host's outward IP (Ray's "single machine" mode keeps 127.0.0.1). Read when
    # Ray is imported, so set before that.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # Replicas read MinIO credentials from their environment; nodes started from here inherit it.
    os.environ.setdefault("MINIO_ACCESS_KEY", "test-access-key")
    os.environ.setdefault("MINIO_SECRET_KEY", "test-secret-key")
    # SIGTERM (the test's timeout) unwinds through the `finally:` blocks that shut everything down.
    signal.signal(signal.SIGTERM, _terminate)
    report = Report()
    try:
        run(report, workdir, options.deadline_s)
    except Exception as exc:
        kind = "" if isinstance(exc, ScenarioFailed) else f"{type(exc).__name__}: "
        traceback.print_exc(file=sys.stderr)
        print(f"MULTINODE_FAILED: {kind}{exc}", file=sys.stderr, flush=True)
        print("MULTINODE_REPORT " + json.dumps(asdict(report)), file=sys.stderr, flush=True)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("MULTINODE_RESULT " + json.dumps(asdict(report)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
