"""One real Ray Serve app on loopback for the whole integration suite."""
from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port


def demo_args(root: Path, models: Path, **overrides) -> dict:
    args = {
        "storage": {"backend": "local", "root": str(root / "storage"), "retention_seconds": 3600},
        "colorizers": {
            "large": {"architecture": "controlnet-diffusion", "source": str(models / "large" / "base"),
                      "diffusion": {"controlnet": {"source": str(models / "large" / "controlnet")},
                                    "captioner": {"source": str(models / "captioner")},
                                    "steps": 2, "resolution": 64}},
            "tiny": {"architecture": "ddcolor", "source": str(models / "tiny")},
        },
        "face_remaster": {"restorer": {"architecture": "gfpgan", "source": str(models / "face")}},
        "scratch_repair": {"inpainter": {"architecture": "lama", "source": str(models / "lama")}},
        "limits": {"max_upload_mb": 2, "max_pixels": 4_000_000, "request_timeout_s": 60},
        "url_fetch": {"timeout_s": 5, "allow_hosts": ["127.0.0.1"]},
    }
    args.update(overrides)
    return args


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    from pipeline.build_demo import build

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
    ray.init(_node_ip_address="127.0.0.1", num_cpus=8, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def service(serve_cluster, models_dir, tmp_path_factory) -> dict:
    from ray import serve

    from deployments.app import build_app

    root = tmp_path_factory.mktemp("service")
    serve.run(build_app(demo_args(root, models_dir)), name="colorize", route_prefix="/")
    return {"url": serve_cluster, "storage": root / "storage", "models": models_dir}


@pytest.fixture()
def client(service) -> httpx.Client:
    with httpx.Client(base_url=service["url"], timeout=120) as http:
        yield http
