"""One real Ray Serve app on loopback for the whole integration suite."""
from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from deployments.launch import CPU_RAY_ENV
from deployments.proxy_hooks import ADMISSION_ENV, ADMISSION_PREFIX_ENV, CALLBACK, CALLBACK_ENV
from tools.build_demo import model_args
from tests.auth_fixtures import PROJECT_ID, postgres_server, signing_keys  # noqa: F401 (fixtures)
from tests.helpers import free_port


# The one origin the services under test may fetch image URLs from (a loopback file server's).
URL_SERVER_PORT = free_port()
URL_SERVER = f"http://127.0.0.1:{URL_SERVER_PORT}"
ADMITTED_APP = "admitted"  # test_overload.py's app with the shipped admission, in the proxy too
ADMITTED_PREFIX = f"/{ADMITTED_APP}/"


def demo_args(root: Path, models: Path, *, jwks_url: str | None = None, **overrides) -> dict:
    args = {
        "auth": {"database_url": f"sqlite:///{root / 'ledger.sqlite3'}", "database_url_env": None,
                 "app_check": {"project_id": PROJECT_ID, "jwks_url": jwks_url}},
        "storage": {"backend": "local", "root": str(root / "storage"), "retention_seconds": 3600},
        **model_args(models),
        "limits": {"max_upload_mb": 2, "max_pixels": 4_000_000, "request_timeout_s": 60},
        "url_fetch": {"timeout_s": 5, "allow_hosts": [URL_SERVER]},
        # Tests that burst dozens of requests at once check metering and shapes, not admission: their
        # jobs may wait for a place as long as they like (test_overload.py runs the shipped defaults).
        "admission": {"max_queue_wait_s": 60},
    }
    args.update(overrides)
    return args


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    from tools.build_demo import build

    directory = tmp_path_factory.mktemp("models")
    build(directory)
    return directory


@pytest.fixture(scope="session")
def serve_cluster():
    import ray
    from ray import serve

    port = free_port()
    # Workers inherit this environment: the MinIO app's replicas read credentials from it.
    os.environ.setdefault("MINIO_ACCESS_KEY", "test-access-key")
    os.environ.setdefault("MINIO_SECRET_KEY", "test-secret-key")
    os.environ.setdefault("MODEL_STORE_ACCESS_KEY", "test-access-key")
    os.environ.setdefault("MODEL_STORE_SECRET_KEY", "test-secret-key")
    os.environ.setdefault("COLORIZE_ADMIN_TOKEN", "test-admin-token")  # GET /admin/status
    # The Ray settings `make demo` uses on CPU-only machines (the multi-node test covers Ray's defaults).
    for name, value in CPU_RAY_ENV.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault(CALLBACK_ENV, CALLBACK)  # the proxy hooks `make demo` uses
    # Admission in the proxy as `make demo` has it, with the default settings, but only for the app
    # of test_overload.py that measures it: the other apps' tests burst dozens of jobs at once.
    os.environ.setdefault(ADMISSION_ENV, "{}")
    os.environ.setdefault(ADMISSION_PREFIX_ENV, ADMITTED_PREFIX)
    os.environ.setdefault("RAY_metrics_report_interval_ms", "2000")  # test_metrics polls the export (default 10 s)
    ray.init(_node_ip_address="127.0.0.1", num_cpus=8, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def create_key(args: dict, credits: int, **limits) -> str:
    from auth.accounts import Accounts
    from auth.db import make_engine

    engine = make_engine(args["auth"]["database_url"])
    try:
        return Accounts(engine).create_key(credits=credits, **limits).key
    finally:
        engine.dispose()


def balance(args: dict, key: str) -> int:
    from auth.accounts import Accounts
    from auth.db import make_engine
    from auth.keys import parse_key

    engine = make_engine(args["auth"]["database_url"])
    try:
        return Accounts(engine).get(parse_key(key).key_id).balance
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def service(serve_cluster, models_dir, signing_keys, tmp_path_factory) -> dict:
    from ray import serve

    from deployments.app import build_app

    root = tmp_path_factory.mktemp("service")
    args = demo_args(root, models_dir, jwks_url=signing_keys.jwks_url)
    serve.run(build_app(args), name="colorize", route_prefix="/")
    key = create_key(args, credits=100_000, rate_per_s=1000, burst=1000)
    return {"url": serve_cluster, "storage": root / "storage", "models": models_dir, "args": args,
            "api_key": key, "app_check": signing_keys.token()}


@pytest.fixture()
def client(service) -> httpx.Client:
    """Speaks for a paying key holder and an App Check-verified app: the happy path's credentials."""
    headers = {"X-Api-Key": service["api_key"], "X-Firebase-AppCheck": service["app_check"]}
    with httpx.Client(base_url=service["url"], timeout=120, headers=headers) as http:
        yield http
