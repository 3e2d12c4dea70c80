"""Behaviour of the storage package: name validation, both backends, settings.

The MinIO backend runs against moto's S3 server on loopback. moto does not verify presigned
signatures or expiry and never applies lifecycle expiry, so those are not claimed as tested here.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from minio import Minio
from pydantic import TypeAdapter, ValidationError

from tests.helpers import free_port
from storage import (
    InvalidObjectName,
    LocalStore,
    LocalStoreSettings,
    MinioStore,
    MinioStoreSettings,
    ObjectStore,
    StorageError,
    StorageSettings,
    StoredObject,
    make_store,
    new_object_name,
    validate_object_name,
)

pytestmark = pytest.mark.timeout(60)

ACCESS_KEY, SECRET_KEY = "test-access", "test-secret"
GOOD_UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"
def _unique_bucket() -> str:
    return f"test-{uuid.uuid4().hex[:16]}"


def _minio_store(endpoint: str, bucket: str | None = None, **options) -> MinioStore:
    return MinioStore(
        endpoint=endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
        bucket=bucket or _unique_bucket(), secure=False, region="us-east-1", **options,
    )


def _raw_client(endpoint: str) -> Minio:
    return Minio(endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False, region="us-east-1")


@pytest.fixture(params=["local", "minio"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        built: ObjectStore = LocalStore(tmp_path / "storage")
    else:
        built = _minio_store(request.getfixturevalue("moto_endpoint"))
    built.check()
    return built


# --- names -------------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", ["jpg", "png", "webp", "tif", "bmp", "gif"])
def test_new_object_names_are_valid_and_unique(ext: str) -> None:
    first, second = new_object_name(ext), new_object_name(ext)
    assert validate_object_name(first) == first
    assert first != second and first.endswith(f".{ext}")


def test_new_object_name_normalises_pillow_spellings_and_rejects_others() -> None:
    assert new_object_name("JPEG").endswith(".jpg")
    assert new_object_name(".tiff").endswith(".tif")
    with pytest.raises(InvalidObjectName, match="not allowed"):
        new_object_name("exe")


HOSTILE_NAMES = [
    "", "x.png", ".png", GOOD_UUID, f"{GOOD_UUID}.",
    "../x.png", f"../{GOOD_UUID}.png", f"a/{GOOD_UUID}.png", "a/b.png", f"{GOOD_UUID}.png/..",
    f"..\\{GOOD_UUID}.png", f"./{GOOD_UUID}.png", f"/{GOOD_UUID}.png",
    f"%2e%2e%2f{GOOD_UUID}.png", "%2e%2e", f"{GOOD_UUID}%2fpng",
    GOOD_UUID.upper() + ".png", f"{GOOD_UUID}.PNG", f"{GOOD_UUID}.exe", f"{GOOD_UUID}.jpeg",
    f"{GOOD_UUID}.png.exe", f"{GOOD_UUID}.png\n", f"{GOOD_UUID}.png\x00", f"{GOOD_UUID}\x00.png",
    f" {GOOD_UUID}.png", "0f8fad5b-d9cb-169f-a165-70867728950e.png",  # uuid1, not uuid4
    "0f8fad5b-d9cb-469f-c165-70867728950e.png",  # wrong variant
    "0f8fad5bd9cb469fa16570867728950e.png",  # not canonical (no dashes)
    "\u0660f8fad5b-d9cb-469f-a165-70867728950e.png",  # Arabic-Indic digit zero
    "０f8fad5b-d9cb-469f-a165-70867728950e.png",  # full-width zero
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_rejected(name: str) -> None:
    with pytest.raises(InvalidObjectName, match="invalid object name"):
        validate_object_name(name)


@pytest.mark.parametrize("value", [None, b"0f8fad5b-d9cb-469f-a165-70867728950e.png", 7])
def test_non_string_names_are_rejected(value: object) -> None:
    with pytest.raises(InvalidObjectName):
        validate_object_name(value)  # type: ignore[arg-type]


# --- behaviour shared by both backends ----------------------------------------------------------

def test_put_get_round_trip_keeps_bytes_and_content_type(store: ObjectStore) -> None:
    name = new_object_name("png")
    payload = bytes(range(256)) * 64
    store.put("uploads", name, payload, "image/png")
    assert store.get("uploads", name) == StoredObject(payload, "image/png")
    assert store.get("results", name) is None  # kinds are separate namespaces


def test_put_overwrites(store: ObjectStore) -> None:
    name = new_object_name("jpg")
    store.put("results", name, b"first", "image/jpeg")
    store.put("results", name, b"second", "image/jpeg")
    stored = store.get("results", name)
    assert stored is not None and stored.data == b"second" and stored.content_type == "image/jpeg"


def test_missing_object_is_none(store: ObjectStore) -> None:
    assert store.get("uploads", new_object_name("webp")) is None


def test_delete_is_idempotent(store: ObjectStore) -> None:
    name = new_object_name("gif")
    store.put("results", name, b"GIF89a", "image/gif")
    store.delete("results", name)
    assert store.get("results", name) is None
    store.delete("results", name)  # second delete: no error
    store.delete("uploads", new_object_name("gif"))  # never existed: no error


def test_content_type_must_match_extension(store: ObjectStore) -> None:
    name = new_object_name("png")
    with pytest.raises(ValueError, match="does not match"):
        store.put("uploads", name, b"<script>", "text/html")
    assert store.get("uploads", name) is None


@pytest.mark.parametrize("call", ["put", "get", "delete", "public_url"])
def test_every_method_validates_kind_and_name(store: ObjectStore, call: str) -> None:
    def invoke(kind: str, name: str) -> object:
        args = {"put": (b"x", "image/png"), "public_url": ("http://svc",)}.get(call, ())
        return getattr(store, call)(kind, name, *args)

    with pytest.raises(InvalidObjectName):
        invoke("uploads", f"../{GOOD_UUID}.png")
    with pytest.raises(ValueError, match="invalid object kind"):
        invoke("../uploads", f"{GOOD_UUID}.png")


# --- LocalStore ---------------------------------------------------------------------------------

def test_local_public_url_is_service_route(tmp_path: Path) -> None:
    local = LocalStore(tmp_path)
    name = new_object_name("png")
    assert local.public_url("results", name, "https://svc.example.com/api/") == (
        f"https://svc.example.com/api/results/{name}"
    )
    assert (tmp_path / "uploads").is_dir() and (tmp_path / "results").is_dir()


def _age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_local_expired_objects_are_hidden_then_swept(tmp_path: Path) -> None:
    local = LocalStore(tmp_path, retention_seconds=60)
    old, fresh = new_object_name("png"), new_object_name("png")
    local.put("uploads", old, b"old", "image/png")
    local.put("uploads", fresh, b"fresh", "image/png")
    _age(tmp_path / "uploads" / old, 120)
    stale_temp = tmp_path / "results" / ".tmp-crashed.part"
    recent_temp = tmp_path / "results" / ".tmp-inflight.part"
    stale_temp.write_bytes(b"partial")
    recent_temp.write_bytes(b"partial")
    _age(stale_temp, 2 * 3600)
    stranger = tmp_path / "uploads" / "README"
    stranger.write_text("not ours")
    _age(stranger, 10 * 24 * 3600)

    assert local.get("uploads", old) is None
    assert local.sweep_expired() == 2
    assert not (tmp_path / "uploads" / old).exists() and not stale_temp.exists()
    assert recent_temp.exists() and stranger.exists()
    assert local.get("uploads", fresh) is not None
    assert local.sweep_expired() == 0


@pytest.mark.parametrize("failing", ["os.replace", "os.fsync"])
def test_local_failed_put_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    local = LocalStore(tmp_path)
    name, kept = new_object_name("png"), new_object_name("png")
    local.put("results", kept, b"original", "image/png")

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(failing, fail)
    for target in (name, kept):
        with pytest.raises(StorageError, match="cannot write"):
            local.put("results", target, b"new bytes", "image/png")
    monkeypatch.undo()

    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [kept]
    assert local.get("results", name) is None
    assert local.get("results", kept).data == b"original"  # type: ignore[union-attr]


def test_local_symlink_cannot_escape_root(tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"outside the store")
    local = LocalStore(tmp_path / "store")
    name = f"{GOOD_UUID}.png"
    (tmp_path / "store" / "uploads" / name).symlink_to(secret)
    with pytest.raises(StorageError, match="outside"):
        local.get("uploads", name)


def test_local_check_fails_when_root_is_unusable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StorageError, match="cannot create"):
        LocalStore(blocker / "storage")


# --- MinioStore ---------------------------------------------------------------------------------

def test_minio_check_creates_missing_bucket_and_applies_lifecycle(moto_endpoint: str) -> None:
    bucket = _unique_bucket()
    raw = _raw_client(moto_endpoint)
    store = _minio_store(moto_endpoint, bucket, lifecycle_days=3)
    assert not raw.bucket_exists(bucket)  # the constructor does no I/O
    store.check()
    assert raw.bucket_exists(bucket)
    rules = raw.get_bucket_lifecycle(bucket).rules
    assert sorted((r.rule_filter.prefix, r.expiration.days) for r in rules) == [
        ("results/", 3), ("uploads/", 3),
    ]
    store.check()  # idempotent on an existing bucket


def test_minio_objects_live_under_kind_prefix(moto_endpoint: str) -> None:
    store = _minio_store(moto_endpoint)
    store.check()
    name = new_object_name("webp")
    store.put("results", name, b"RIFF", "image/webp")
    stat = _raw_client(moto_endpoint).stat_object(store.bucket, f"results/{name}")
    assert stat.content_type == "image/webp" and stat.size == 4


def test_minio_without_create_bucket_reports_missing_bucket(moto_endpoint: str) -> None:
    store = _minio_store(moto_endpoint, create_bucket=False)
    with pytest.raises(StorageError, match="does not exist"):
        store.check()


def test_minio_recreates_a_bucket_that_went_away(moto_endpoint: str) -> None:
    """S3 back but the bucket gone (deleted, or a fresh server): the next put re-creates it with
    its lifecycle rule, instead of every request failing until someone creates it by hand."""
    store = _minio_store(moto_endpoint, lifecycle_days=2)
    store.check()
    raw = _raw_client(moto_endpoint)
    raw.delete_bucket_lifecycle(store.bucket)
    raw.remove_bucket(store.bucket)
    missing = new_object_name("png")
    assert store.get("results", missing) is None  # a read of a gone bucket is "not found", not an outage
    name = new_object_name("png")
    store.put("results", name, b"\x89PNG", "image/png")
    assert raw.bucket_exists(store.bucket) and store.get("results", name).data == b"\x89PNG"  # type: ignore[union-attr]
    assert raw.get_bucket_lifecycle(store.bucket) is not None


def test_minio_without_create_bucket_says_why_a_put_fails(moto_endpoint: str) -> None:
    store = _minio_store(moto_endpoint)
    store.check()
    raw = _raw_client(moto_endpoint)
    raw.remove_bucket(store.bucket)
    store.create_bucket = False
    with pytest.raises(StorageError, match="does not exist"):
        store.put("results", new_object_name("png"), b"x", "image/png")


def test_minio_public_url_is_presigned_for_public_endpoint(moto_endpoint: str) -> None:
    store = _minio_store(
        moto_endpoint, public_endpoint="cdn.example.com", public_secure=True, url_expiry_seconds=900
    )
    name = new_object_name("png")
    url = urlsplit(store.public_url("results", name, "http://ignored"))
    query = parse_qs(url.query)
    assert (url.scheme, url.netloc) == ("https", "cdn.example.com")
    assert url.path == f"/{store.bucket}/results/{name}"
    assert query["X-Amz-Expires"] == ["900"]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and query["X-Amz-Signature"]


def test_minio_presigned_url_serves_the_bytes(moto_endpoint: str) -> None:
    store = _minio_store(moto_endpoint)
    store.check()
    name = new_object_name("jpg")
    store.put("results", name, b"\xff\xd8 colorized", "image/jpeg")
    url = store.public_url("results", name, "http://ignored")
    assert urlsplit(url).netloc == moto_endpoint
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.read() == b"\xff\xd8 colorized"
        assert response.headers["Content-Type"] == "image/jpeg"


def test_minio_unreachable_endpoint_fails_fast() -> None:
    store = _minio_store(f"127.0.0.1:{free_port()}", timeout_seconds=1)  # nothing listens there
    name = new_object_name("png")
    started = time.monotonic()
    for action in (store.check, lambda: store.get("uploads", name),
                   lambda: store.put("uploads", name, b"x", "image/png")):
        with pytest.raises(StorageError, match="127.0.0.1"):
            action()
    assert time.monotonic() - started < 5


def test_minio_silent_server_times_out() -> None:
    """A server that accepts connections but never answers must not hang the caller."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept_forever() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept_forever, daemon=True)
    thread.start()
    try:
        store = _minio_store(f"127.0.0.1:{listener.getsockname()[1]}", timeout_seconds=0.5)
        started = time.monotonic()
        with pytest.raises(StorageError):
            store.get("uploads", new_object_name("png"))
        assert time.monotonic() - started < 5
    finally:
        stop.set()
        thread.join(timeout=2)
        for conn in accepted:
            conn.close()
        listener.close()


# --- settings and make_store --------------------------------------------------------------------

STORAGE_SETTINGS = TypeAdapter(StorageSettings)
MINIO_CONFIG = {"backend": "minio", "endpoint": "minio:9000", "secure": False, "bucket": "colorize"}


def test_settings_select_backend_by_discriminator(tmp_path: Path) -> None:
    local = STORAGE_SETTINGS.validate_python({"backend": "local", "root": str(tmp_path)})
    assert isinstance(local, LocalStoreSettings) and local.retention_seconds == 24 * 3600
    assert isinstance(make_store(local), LocalStore)
    remote = STORAGE_SETTINGS.validate_python(MINIO_CONFIG)
    assert isinstance(remote, MinioStoreSettings)
    assert (remote.url_expiry_seconds, remote.lifecycle_days, remote.region) == (3600, 0, "us-east-1")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"url_expiry_seconds": 0}, "url_expiry_seconds"),
        ({"url_expiry_seconds": 604801}, "url_expiry_seconds"),
        ({"surprise": 1}, "Extra inputs are not permitted"),
        ({"access_key": "AKIA..."}, "Extra inputs are not permitted"),
        ({"bucket": "Bad_Bucket"}, "invalid S3 bucket name"),
        ({"bucket": "192.168.1.1"}, "IP address"),
        ({"endpoint": "http://minio:9000"}, "without scheme"),
        ({"public_endpoint": "https://cdn.example.com/x"}, "without scheme"),
        ({"access_key_env": "my secret key"}, "not an environment variable name"),
        ({"lifecycle_days": -1}, "lifecycle_days"),
        ({"backend": "s3"}, "backend"),
    ],
)
def test_invalid_settings_are_rejected_clearly(override: dict, expected: str) -> None:
    with pytest.raises(ValidationError, match=expected):
        STORAGE_SETTINGS.validate_python({**MINIO_CONFIG, **override})


def test_local_settings_reject_non_positive_retention() -> None:
    with pytest.raises(ValidationError, match="retention_seconds"):
        LocalStoreSettings(retention_seconds=0)


def test_make_store_names_missing_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = MinioStoreSettings(**{**MINIO_CONFIG, "secret_key_env": "COLORIZE_TEST_SECRET"})
    monkeypatch.setenv("MINIO_ACCESS_KEY", "someone")
    monkeypatch.delenv("COLORIZE_TEST_SECRET", raising=False)
    with pytest.raises(StorageError, match="COLORIZE_TEST_SECRET") as error:
        make_store(settings)
    assert "MINIO_ACCESS_KEY" not in str(error.value)


def test_make_store_builds_minio_store_from_env(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINIO_ACCESS_KEY", ACCESS_KEY)
    monkeypatch.setenv("MINIO_SECRET_KEY", SECRET_KEY)
    settings = MinioStoreSettings(**{**MINIO_CONFIG, "endpoint": moto_endpoint, "bucket": _unique_bucket()})
    store = make_store(settings)
    store.check()
    name = new_object_name("bmp")
    store.put("uploads", name, b"BM", "image/bmp")
    assert store.get("uploads", name) == StoredObject(b"BM", "image/bmp")
