"""Behaviour of resolve_model_source: local directories, hf://, s3:// (moto) and pinned URLs (loopback).

The real Hugging Face Hub is out of reach here: hf:// is covered by parsing, the offline error and
a hand-built hub cache resolved offline.
"""
from __future__ import annotations

import hashlib
import io
import multiprocessing
import random
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from minio import Minio

from pipeline.errors import ModelLoadError
from pipeline.weights.source import HfSource, S3Settings, parse_hf_source, resolve_model_source

pytestmark = pytest.mark.timeout(60)

ACCESS_KEY, SECRET_KEY = "model-reader", "model-secret"
WEIGHTS = random.Random(7).randbytes(300_000)
WEIGHTS_SHA = hashlib.sha256(WEIGHTS).hexdigest()


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- local directories -------------------------------------------------------------------------

def test_existing_local_directory_is_returned_as_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ddcolor").mkdir()
    assert resolve_model_source(str(tmp_path / "ddcolor"), cache_dir=tmp_path / "cache") == tmp_path / "ddcolor"
    monkeypatch.chdir(tmp_path)
    assert resolve_model_source("ddcolor", cache_dir=tmp_path / "cache") == Path("ddcolor")
    assert not (tmp_path / "cache").exists()  # nothing to download, nothing cached


def test_missing_local_directory_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match=str(missing)):
        resolve_model_source(str(missing), cache_dir=tmp_path / "cache")


def test_named_files_must_exist_in_the_directory(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_source(str(tmp_path), cache_dir=tmp_path, files=["config.json"]) == tmp_path
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        resolve_model_source(str(tmp_path), cache_dir=tmp_path, files=["config.json", "model.safetensors"])


def test_unknown_scheme_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="unsupported model source"):
        resolve_model_source("ftp://host/model", cache_dir=tmp_path)


# --- hf:// -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("source", "expected"), [
    ("hf://piddnad/ddcolor_paper", HfSource("piddnad/ddcolor_paper", None)),
    ("hf://org/name@v1.4", HfSource("org/name", "v1.4")),
    ("hf://org/name@refs/pr/3", HfSource("org/name", "refs/pr/3")),
    ("hf://org/name@0123456789abcdef0123456789abcdef01234567",
     HfSource("org/name", "0123456789abcdef0123456789abcdef01234567")),
])
def test_hf_sources_parse(source: str, expected: HfSource) -> None:
    assert parse_hf_source(source) == expected
    assert str(expected) == source


@pytest.mark.parametrize("source", [
    "hf://name-only", "hf://org/name/extra", "hf://org/", "hf:///name", "hf://org/na--me",
    "hf://org/na..me", "hf://org/name@", "hf://org/name@../main", "hf://org/-name", "hf://org/name@a b",
])
def test_bad_hf_sources_are_refused(source: str, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="hf://"):
        resolve_model_source(source, cache_dir=tmp_path)


def test_hf_offline_without_cache_says_how_to_prefetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as caught:
        resolve_model_source("hf://org/absent@v2", cache_dir=tmp_path)
    message = str(caught.value)
    assert "cannot download hf://org/absent@v2" in message and "HF_HUB_OFFLINE" in message
    assert f"hf download org/absent --revision v2 --cache-dir {tmp_path / 'hf'}" in message
    assert "point `source` at that directory" in message


def test_hf_snapshot_in_the_cache_resolves_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commit = "a" * 40
    repo = tmp_path / "hf" / "models--org--name"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"size": 1}')
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    resolved = resolve_model_source("hf://org/name", cache_dir=tmp_path, files=["config.json"])
    assert resolved == snapshot and (resolved / "config.json").read_text() == '{"size": 1}'
    assert resolve_model_source(f"hf://org/name@{commit}", cache_dir=tmp_path) == snapshot
    with pytest.raises(ModelLoadError, match="lacks model.safetensors"):
        resolve_model_source("hf://org/name", cache_dir=tmp_path, files=["model.safetensors"])


# --- s3:// -------------------------------------------------------------------------------------

@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3Settings:
    monkeypatch.setenv("MODEL_STORE_ACCESS_KEY", ACCESS_KEY)
    monkeypatch.setenv("MODEL_STORE_SECRET_KEY", SECRET_KEY)
    return S3Settings(endpoint=moto_endpoint, secure=False)


@pytest.fixture
def bucket(moto_endpoint: str) -> Iterator[tuple[Minio, str]]:
    client = Minio(moto_endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False, region="us-east-1")
    name = f"models-{uuid.uuid4().hex[:12]}"
    client.make_bucket(name)
    yield client, name


MODEL_FILES = {"config.json": b'{"arch": "ddcolor"}', "model.safetensors": WEIGHTS[:50_000],
               "tokenizer/vocab.txt": b"a\nb\n"}


def upload(client: Minio, bucket: str, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        client.put_object(bucket, key, io.BytesIO(data), length=len(data))


def test_s3_prefix_is_mirrored_byte_for_byte(tmp_path: Path, s3: S3Settings, bucket) -> None:
    client, name = bucket
    upload(client, name, {f"ddcolor/{k}": v for k, v in MODEL_FILES.items()})
    upload(client, name, {"ddcolor-large/model.safetensors": b"other model", "top.txt": b"outside"})

    resolved = resolve_model_source(f"s3://{name}/ddcolor", cache_dir=tmp_path, s3=s3)
    assert resolved == tmp_path / "s3" / name / "ddcolor"
    assert files_under(resolved) == MODEL_FILES


def test_s3_second_resolve_downloads_only_what_changed(tmp_path: Path, s3: S3Settings, bucket,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    client, name = bucket
    upload(client, name, {f"m/{k}": v for k, v in MODEL_FILES.items()})
    resolved = resolve_model_source(f"s3://{name}/m", cache_dir=tmp_path, s3=s3)
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in resolved.rglob("*") if p.is_file()}
    fetched: list[str] = []
    original_get = Minio.get_object

    def counting_get(self: Minio, bucket_name: str, key: str, **kwargs):
        fetched.append(key)
        return original_get(self, bucket_name, key, **kwargs)

    monkeypatch.setattr(Minio, "get_object", counting_get)

    assert resolve_model_source(f"s3://{name}/m/", cache_dir=tmp_path, s3=s3) == resolved
    assert fetched == []
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in before} == before

    upload(client, name, {"m/config.json": b'{"arch": "ddcolor", "v": 2}'})
    client.remove_object(name, "m/tokenizer/vocab.txt")
    resolve_model_source(f"s3://{name}/m", cache_dir=tmp_path, s3=s3)
    assert fetched == ["m/config.json"]
    assert files_under(resolved) == {"config.json": b'{"arch": "ddcolor", "v": 2}',
                                     "model.safetensors": MODEL_FILES["model.safetensors"]}
    assert not (resolved / "tokenizer").exists()  # deleted upstream, so gone from the mirror


def test_s3_files_filter_downloads_only_those(tmp_path: Path, s3: S3Settings, bucket) -> None:
    client, name = bucket
    upload(client, name, {f"m/{k}": v for k, v in MODEL_FILES.items()})
    resolved = resolve_model_source(f"s3://{name}/m", cache_dir=tmp_path, s3=s3, files=["config.json"])
    assert files_under(resolved) == {"config.json": MODEL_FILES["config.json"]}
    with pytest.raises(ModelLoadError, match="'weights.pth'"):
        resolve_model_source(f"s3://{name}/m", cache_dir=tmp_path, s3=s3, files=["config.json", "weights.pth"])


def test_s3_missing_bucket_or_prefix_is_a_model_load_error(tmp_path: Path, s3: S3Settings, bucket) -> None:
    client, name = bucket
    upload(client, name, {"m/config.json": b"{}"})
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model_source(f"s3://missing-{name}/m", cache_dir=tmp_path, s3=s3)
    with pytest.raises(ModelLoadError, match=f"no objects under s3://{name}/nothing-here"):
        resolve_model_source(f"s3://{name}/nothing-here", cache_dir=tmp_path, s3=s3)
    assert not (tmp_path / "s3" / name / "nothing-here").exists()


def test_s3_needs_settings_and_credentials(tmp_path: Path, s3: S3Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelLoadError, match="needs S3 settings"):
        resolve_model_source("s3://models/m", cache_dir=tmp_path)
    monkeypatch.delenv("MODEL_STORE_SECRET_KEY")
    with pytest.raises(ModelLoadError, match="MODEL_STORE_SECRET_KEY"):
        resolve_model_source("s3://models/m", cache_dir=tmp_path, s3=s3)
    with pytest.raises(ModelLoadError, match="not a plain relative path"):
        resolve_model_source("s3://models/a/../b", cache_dir=tmp_path, s3=s3)
    with pytest.raises(ValueError, match="without scheme"):
        S3Settings(endpoint="http://minio:9000")


# --- https:// (plain http on loopback) ---------------------------------------------------------

class BlobServer:
    """Serves in-memory files on 127.0.0.1, counting GETs; can trickle or cut bodies short."""

    def __init__(self, blobs: dict[str, bytes], *, cut_short: bool = False, trickle_s: float = 0.0) -> None:
        self.gets: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.gets.append(self.path)
                body = blobs.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if cut_short:
                    body = body[: len(body) // 2]  # then the connection closes (HTTP/1.0)
                for start in range(0, len(body), 64 * 1024):
                    self.wfile.write(body[start:start + 64 * 1024])
                    time.sleep(trickle_s)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_pinned_url_downloads_verifies_and_is_reused_offline(tmp_path: Path) -> None:
    with BlobServer({"/releases/GFPGANv1.4.pth": WEIGHTS}) as base:
        resolved = resolve_model_source(f"{base}/releases/GFPGANv1.4.pth", cache_dir=tmp_path, sha256=WEIGHTS_SHA)
    assert resolved == tmp_path / "url" / WEIGHTS_SHA[:16]
    assert files_under(resolved) == {"GFPGANv1.4.pth": WEIGHTS}
    # The server is gone: only the verified cached copy can satisfy these.
    assert resolve_model_source(f"{base}/releases/GFPGANv1.4.pth#sha256={WEIGHTS_SHA}",
                                cache_dir=tmp_path) == resolved


def test_damaged_cached_file_is_fetched_again(tmp_path: Path) -> None:
    with BlobServer({"/w.pth": WEIGHTS}) as base:
        resolved = resolve_model_source(f"{base}/w.pth", cache_dir=tmp_path, sha256=WEIGHTS_SHA)
        (resolved / "w.pth").write_bytes(b"bit rot")
        resolve_model_source(f"{base}/w.pth", cache_dir=tmp_path, sha256=WEIGHTS_SHA.upper())
    assert (resolved / "w.pth").read_bytes() == WEIGHTS


def test_wrong_hash_names_both_and_leaves_nothing(tmp_path: Path) -> None:
    wrong = "0" * 64
    with BlobServer({"/w.pth": WEIGHTS}) as base:
        with pytest.raises(ModelLoadError) as caught:
            resolve_model_source(f"{base}/w.pth", cache_dir=tmp_path, sha256=wrong)
    assert f"expected {wrong}" in str(caught.value) and f"got {WEIGHTS_SHA}" in str(caught.value)
    assert list((tmp_path / "url").rglob("*")) == []


def test_interrupted_download_leaves_nothing(tmp_path: Path) -> None:
    with BlobServer({"/w.pth": WEIGHTS}, cut_short=True) as base:
        with pytest.raises(ModelLoadError, match="interrupted"):
            resolve_model_source(f"{base}/w.pth", cache_dir=tmp_path, sha256=WEIGHTS_SHA)
    assert list((tmp_path / "url").rglob("*")) == []


@pytest.mark.parametrize(("source", "sha256", "message"), [
    ("https://example.com/w.pth", None, "refusing unpinned"),
    ("http://example.com/w.pth", WEIGHTS_SHA, "only https://"),
    ("https://example.com/w.pth#md5=abc", None, "#sha256="),
    ("https://example.com/w.pth", "abc", "64 hex digits"),
    (f"https://example.com/w.pth#sha256={'1' * 64}", WEIGHTS_SHA, "disagree"),
    ("https://example.com/releases/", WEIGHTS_SHA, "file name"),
])
def test_bad_urls_are_refused_before_any_network(source: str, sha256: str | None, message: str,
                                                 tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=message):
        resolve_model_source(source, cache_dir=tmp_path, sha256=sha256)


def test_missing_url_is_a_model_load_error(tmp_path: Path) -> None:
    with BlobServer({}) as base:
        with pytest.raises(ModelLoadError, match="HTTP 404"):
            resolve_model_source(f"{base}/w.pth", cache_dir=tmp_path, sha256=WEIGHTS_SHA)


def test_concurrent_threads_download_once(tmp_path: Path) -> None:
    results: list[Path | BaseException] = []

    def resolve(url: str) -> None:
        try:
            results.append(resolve_model_source(url, cache_dir=tmp_path, sha256=WEIGHTS_SHA))
        except BaseException as exc:  # surfaced by the assertion below
            results.append(exc)

    server = BlobServer({"/w.pth": WEIGHTS}, trickle_s=0.05)
    with server as base:
        threads = [threading.Thread(target=resolve, args=(f"{base}/w.pth",)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results == [tmp_path / "url" / WEIGHTS_SHA[:16]] * 4
    assert server.gets == ["/w.pth"]  # the others waited on the lock, then found the verified file
    assert files_under(tmp_path / "url") == {f"{WEIGHTS_SHA[:16]}/w.pth": WEIGHTS}


def _resolve_in_child(url: str, cache_dir: str, queue) -> None:
    try:
        queue.put(str(resolve_model_source(url, cache_dir=Path(cache_dir), sha256=WEIGHTS_SHA)))
    except BaseException as exc:
        queue.put(repr(exc))


def test_concurrent_processes_download_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    server = BlobServer({"/w.pth": WEIGHTS}, trickle_s=0.05)
    with server as base:
        children = [context.Process(target=_resolve_in_child, args=(f"{base}/w.pth", str(tmp_path), queue))
                    for _ in range(3)]
        for child in children:
            child.start()
        outcomes = [queue.get(timeout=30) for _ in children]
        for child in children:
            child.join(timeout=10)
    assert outcomes == [str(tmp_path / "url" / WEIGHTS_SHA[:16])] * 3
    assert server.gets == ["/w.pth"]
    assert files_under(tmp_path / "url") == {f"{WEIGHTS_SHA[:16]}/w.pth": WEIGHTS}
