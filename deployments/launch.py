"""Validate a serve config, adapt it to this machine, and hand it to ``serve run``.

    python -m deployments.launch serve_config.yaml [--port 8000] [--host 127.0.0.1] [--check] [--needs-gpu]

``serve run`` has no --port and Serve's schema ignores unknown keys, so this checks the
file strictly first (actionable messages, nothing started) and writes the effective config
to .run/. Without a visible GPU, fractional ``num_gpus`` would leave replicas unscheduled
forever, so they are set to 0 with a notice, and the Ray cluster that ``serve run`` starts gets
``CPU_RAY_ENV`` (unless the environment already sets those variables).
"""
from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from .app import DEPLOYMENT_NAMES
from .proxy_hooks import ADMISSION_ENV, CALLBACK, CALLBACK_ENV
from service.settings import PUBLIC_BASE_URL_ENV, ConfigError, batch_settings, load_settings

# On CPU-only boxes every thread hop and object-store round trip competes with the models for few
# cores: run user code and routers on each process's main event loop, and pass images between
# deployments inline (a 1024 px RGB array is 3 MiB; Ray's default inlines only up to 100 KiB).
# Measured with bench/ on 2 cores: +14% req/s and -16% p99 at concurrency 16. GPU boxes keep Ray's
# defaults, where a model load in a replica's constructor must not block its main loop for minutes.
CPU_RAY_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_max_direct_call_object_size": str(16 * 2**20),
}


def check_config(config: dict[str, Any], *, base_dir: Path) -> list[str]:
    """Return the problems in a serve config (empty when it is good)."""
    problems: list[str] = []
    apps = config.get("applications")
    if not isinstance(apps, list) or not apps:
        return ["`applications:` must list at least one application"]
    for app in apps:
        name = app.get("name", "?")
        if app.get("import_path") != "deployments.app:build_app":
            problems.append(f"app {name}: import_path must be deployments.app:build_app")
        try:
            load_settings(app.get("args"), base_dir=base_dir)
        except ConfigError as exc:
            problems.append(f"app {name}: {exc}")
        for deployment in app.get("deployments", []):
            dname = deployment.get("name")
            if dname not in DEPLOYMENT_NAMES:
                problems.append(f"app {name}: unknown deployment {dname!r}; known: {', '.join(DEPLOYMENT_NAMES)}")
            if "user_config" in deployment:
                if dname == "Ingress":
                    problems.append(f"app {name}: Ingress takes no user_config")
                    continue
                try:
                    batch_settings(deployment["user_config"])
                except ConfigError as exc:
                    problems.append(f"app {name}, deployment {dname}: {exc}")
    return problems


def public_links_problem(config: dict[str, Any]) -> str | None:
    """Serving other machines without ``public_base_url`` would build links from their Host header;
    the app then answers only loopback host names, so say so now rather than 400 every request."""
    host = (config.get("http_options") or {}).get("host", "127.0.0.1")
    if host in ("127.0.0.1", "localhost", "::1"):
        return None
    for app in config["applications"]:
        if load_settings(app.get("args"), base_dir=Path.cwd()).links_from_request_host:
            return (f"HOST={host} serves other machines, but app {app.get('name')!r} has no public_base_url: "
                    f"set {PUBLIC_BASE_URL_ENV}=https://your.host (the address clients use; links in answers "
                    "start with it), or public_base_url / allowed_hosts in the config")
    return None


def print_demo_keys(config: dict[str, Any]) -> None:
    from auth import ensure_demo_key

    for app in config["applications"]:
        settings = load_settings(app.get("args"), base_dir=Path.cwd())
        if settings.auth is not None:
            key = ensure_demo_key(settings.auth)
            print(f"demo API key (app {app.get('name')}): {key}\n"
                  f"  curl -H 'X-Api-Key: {key}' -F image=@photo.jpg http://HOST:PORT/api/v1/colorize", flush=True)


def gpu_count() -> int:
    if shutil.which("nvidia-smi") is None and not os.environ.get("CUDA_VISIBLE_DEVICES"):
        return 0
    try:
        import torch
        return torch.cuda.device_count()
    except Exception:
        return 0


NO_GPU_ADVICE = """\
no GPU is visible on this machine, and {config} is the GPU profile: its `large` model is SDXL +
ControlNet + BLIP-large (about 10 GB to download, minutes per photo on a CPU). Instead:
  make serve PROFILE=cpu   real colors on CPU: DDColor-L/-T, GFPGAN v1.4 (about 1.5 GB once,
                           seconds per photo; docs/cpu-profile.md)
  make demo                offline, untrained tiny models (noise colors), to try the service
  make serve PROFILE=gpu   start {config} on this machine anyway"""


def gpu_profile_problem(config_path: Path, gpus: int) -> str | None:
    """``--needs-gpu`` (``make serve``): refuse a GPU profile on a machine without one, naming the one that fits."""
    return NO_GPU_ADVICE.format(config=config_path.name) if gpus == 0 else None


def effective_config(config: dict[str, Any], *, host: str | None, port: int | None, gpus: int) -> dict[str, Any]:
    config = copy.deepcopy(config)
    http = config.setdefault("http_options", {})
    if host:
        http["host"] = host
    if port:
        http["port"] = port
    if gpus == 0:
        for app in config["applications"]:
            for deployment in app.get("deployments", []):
                options = deployment.get("ray_actor_options") or {}
                if options.get("num_gpus"):
                    print(f"note: no GPU visible; running {deployment['name']} on CPU (num_gpus 0)")
                    options["num_gpus"] = 0
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--check", action="store_true", help="only validate the config")
    parser.add_argument("--needs-gpu", action="store_true",
                        help="refuse to start without a visible GPU, saying which profile fits (make serve)")
    parser.add_argument("--demo-key", action="store_true",
                        help="create (once) and print an API key with demo credits ($DEMO_API_KEY fixes it)")
    args = parser.parse_args(argv)
    try:
        config = yaml.safe_load(args.config.read_text())
    except (OSError, yaml.YAMLError) as exc:
        print(f"error: cannot read {args.config}: {exc}", file=sys.stderr)
        return 2
    problems = check_config(config or {}, base_dir=Path.cwd())
    if problems:
        print(f"error: {args.config} is not valid:\n" + "\n".join(problems), file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.config}: ok")
        return 0
    gpus = gpu_count()
    if args.needs_gpu and (problem := gpu_profile_problem(args.config, gpus)):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.demo_key:
        print_demo_keys(config)
    effective = effective_config(config, host=args.host, port=args.port, gpus=gpus)
    exposure = public_links_problem(effective)
    if exposure:
        print(f"error: {exposure}", file=sys.stderr)
        return 2
    run_dir = Path(".run")
    run_dir.mkdir(exist_ok=True)
    target = run_dir / args.config.name
    target.write_text(yaml.safe_dump(effective, sort_keys=False))
    print(f"starting: serve run {target} (http://{effective['http_options'].get('host')}:"
          f"{effective['http_options'].get('port')})", flush=True)
    os.environ.setdefault("COLORIZE_BASE_DIR", str(Path.cwd()))
    os.environ.setdefault(CALLBACK_ENV, CALLBACK)  # Serve's proxy bounds clients' X-Request-Id
    # The proxy admits jobs as the Ingress does (deployments/proxy_hooks.py), with the first app's settings.
    admission = load_settings(effective["applications"][0].get("args"), base_dir=Path.cwd()).admission
    os.environ.setdefault(ADMISSION_ENV, admission.model_dump_json())
    if gpus == 0 and not os.environ.get("RAY_ADDRESS"):  # only a cluster that serve run starts here
        print("note: CPU only; Ray runs with " + " ".join(f"{k}={v}" for k, v in CPU_RAY_ENV.items()))
        for name, value in CPU_RAY_ENV.items():
            os.environ.setdefault(name, value)
    return serve_run(target)


def serve_run(target: Path) -> int:
    """``serve run TARGET`` in this process. Without RAY_ADDRESS it starts a Ray of its own first, with
    every Ray server bound to loopback: on one box only Serve's HTTP proxy listens where
    ``http_options.host`` says (HOST=0.0.0.0 exposes the API, never Ray's ports)."""
    import ray
    from ray.serve.scripts import run

    if not os.environ.get("RAY_ADDRESS"):
        ray.init(_node_ip_address="127.0.0.1", namespace="serve")
        print_metrics_addresses()
    run.main([str(target)], prog_name="serve run", standalone_mode=False)
    return 0


def print_metrics_addresses() -> None:
    """Where Prometheus scrapes the service's metrics (docs/operate.md): each node's metrics export
    port, and the file listing them all that Ray keeps for Prometheus' ``file_sd_configs``."""
    import ray

    for node in ray.nodes():
        if node.get("Alive"):
            print(f"metrics: http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics", flush=True)
    discovery = Path(ray._private.worker._global_node.get_session_dir_path()) / "prom_metrics_service_discovery.json"
    print(f"  every node, for Prometheus (deploy/prometheus.yml): {discovery}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
