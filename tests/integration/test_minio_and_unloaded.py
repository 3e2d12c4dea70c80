"""A second app on MinIO storage (moto on loopback) with one colorizer missing, and a third
with no colorizer at all: presigned output URLs, 503s for unloaded models, /health 503."""
from __future__ import annotations

import os
import urllib.request
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from minio import Minio

from tests.helpers import encode, photo
from tests.integration.conftest import balance, create_key, demo_args

pytestmark = pytest.mark.integration

BUCKET = "colorize-it"


@pytest.fixture(scope="module")
def minio_service(serve_cluster, models_dir, moto_endpoint, signing_keys, tmp_path_factory):
    """The app's client (a paying key, an App Check token), its args and its key."""
    from ray import serve

    from deployments.app import build_app

    # Replicas read MinIO credentials from their environment, set before Ray started workers.
    assert os.environ["MINIO_ACCESS_KEY"] and os.environ["MINIO_SECRET_KEY"]
    root = tmp_path_factory.mktemp("minio-app")
    args = demo_args(root, models_dir, jwks_url=signing_keys.jwks_url, storage={
        "backend": "minio", "endpoint": moto_endpoint, "secure": False, "bucket": BUCKET,
        "url_expiry_seconds": 600})
    args["colorizers"]["large"]["source"] = str(root / "no-such-model")
    # The tiny colorizer's weights come from a model bucket, as on a cluster.
    store = Minio(moto_endpoint, access_key=os.environ["MODEL_STORE_ACCESS_KEY"],
                  secret_key=os.environ["MODEL_STORE_SECRET_KEY"], secure=False, region="us-east-1")
    if not store.bucket_exists("models"):
        store.make_bucket("models")
    for path in (models_dir / "tiny").iterdir():
        store.fput_object("models", f"ddcolor-tiny/{path.name}", str(path))
    args["colorizers"]["tiny"] = {"architecture": "ddcolor", "source": "s3://models/ddcolor-tiny"}
    args["model_store"] = {"endpoint": moto_endpoint, "secure": False}
    serve.run(build_app(args), name="minio", route_prefix="/minio")
    key = create_key(args, credits=100)
    headers = {"X-Api-Key": key, "X-Firebase-AppCheck": signing_keys.token()}
    with httpx.Client(base_url=f"{serve_cluster}/minio", timeout=120, headers=headers) as client:
        yield {"client": client, "args": args, "key": key}


@pytest.fixture(scope="module")
def minio_app(minio_service) -> httpx.Client:
    return minio_service["client"]


@pytest.fixture(scope="module")
def empty_app(serve_cluster, models_dir, signing_keys, tmp_path_factory):
    from ray import serve

    from deployments.app import build_app

    root = tmp_path_factory.mktemp("empty-app")
    args = demo_args(root, models_dir, jwks_url=signing_keys.jwks_url)
    for name in ("large", "tiny"):
        args["colorizers"][name]["source"] = str(root / "missing" / name)
    serve.run(build_app(args), name="empty", route_prefix="/empty")
    headers = {"X-Firebase-AppCheck": signing_keys.token()}
    with httpx.Client(base_url=f"{serve_cluster}/empty", timeout=120, headers=headers) as client:
        yield client


def test_output_url_is_presigned_minio(minio_app, moto_endpoint):
    response = minio_app.post("/api/v1/colorize", files={"image": ("a.jpg", encode(photo(100, 60)))},
                              data={"model": "tiny"})
    assert response.status_code == 200, response.text
    url = urlsplit(response.json()["outputUrl"])
    assert url.netloc == moto_endpoint and url.path.startswith(f"/{BUCKET}/results/")
    assert parse_qs(url.query)["X-Amz-Expires"] == ["600"]
    with urllib.request.urlopen(response.json()["outputUrl"], timeout=10) as fetched:
        assert fetched.headers["Content-Type"] == "image/png" and fetched.read(8) == b"\x89PNG\r\n\x1a\n"


def test_app_check_api_routes_read_through_minio(minio_app, moto_endpoint):
    original = encode(photo(50, 40))
    body = minio_app.post("/upload", files={"file": ("a.jpg", original)}).json()
    assert body["image_url"].endswith(f"/minio/uploads/{body['filename']}")
    assert minio_app.get(f"/uploads/{body['filename']}").content == original
    stored = Minio(moto_endpoint, access_key=os.environ["MINIO_ACCESS_KEY"],
                   secret_key=os.environ["MINIO_SECRET_KEY"], secure=False, region="us-east-1")
    assert stored.get_object(BUCKET, f"uploads/{body['filename']}").read() == original
    colorized = minio_app.post("/colorize", files={"file": ("a.jpg", original)}, data={"model": "tiny"}).json()
    assert minio_app.get(f"/download/{colorized['result_id']}").headers["content-type"] == "image/jpeg"


def test_unloaded_model_is_503_and_charges_nothing(minio_service):
    minio_app, before = minio_service["client"], balance(minio_service["args"], minio_service["key"])
    health = minio_app.get("/health")
    assert health.status_code == 200 and health.json()["model_loaded"] is True
    assert health.json()["models"] == {"large": {"loaded": False}, "tiny": {"loaded": True}}  # nothing internal
    status = minio_app.get("/admin/status", headers={"Authorization": f"Bearer {os.environ['COLORIZE_ADMIN_TOKEN']}"})
    assert status.status_code == 200, status.text
    assert status.json()["stages"]["tiny"]["source"] == "s3://models/ddcolor-tiny"
    assert "does not exist" in status.json()["stages"]["large"]["error"]
    assert minio_app.get("/admin/status").status_code == 401
    for route, field in (("/api/v1/colorize", "image"), ("/colorize", "file")):
        response = minio_app.post(route, files={field: ("a.jpg", encode(photo(40, 30)))})
        assert response.status_code == 503
        assert response.json() == {"detail": "the 'large' colorization model is not loaded"}
    assert balance(minio_service["args"], minio_service["key"]) == before


def test_health_503_without_any_colorizer(empty_app):
    response = empty_app.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["model_loaded"] is False and body["status"] == "unhealthy" and body["detail"]
    refused = empty_app.post("/colorize", files={"file": ("a.jpg", encode(photo(40, 30)))})
    assert refused.status_code == 503 and refused.json() == {"detail": "the 'large' colorization model is not loaded"}
