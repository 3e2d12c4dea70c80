"""`colorize-models pull` against a real S3-compatible server (moto on loopback), with no network:
local folders, a hand-built Hugging Face cache (offline) and a sha256-pinned URL on loopback."""
from __future__ import annotations

import fnmatch
import hashlib
import io
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from minio import Minio

from pipeline.weights.settings import ModelRuntime, ModelStoreSettings, SourceRef
from service.models_cli import main, model_refs
from service.settings import load_settings
from tests.helpers import FileServer

pytestmark = pytest.mark.timeout(120)

ACCESS_KEY, SECRET_KEY = "model-writer", "model-writer-secret"
COMMIT = "c" * 40
GFPGAN = b"gfpgan weights " * 2000
GFPGAN_SHA = hashlib.sha256(GFPGAN).hexdigest()


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def hub_snapshot(cache: Path, repo_id: str, files: dict[str, bytes]) -> None:
    """The hub's cache layout, so hf:// resolves offline (HF_HUB_OFFLINE=1) as on a prefetched node."""
    repo = cache / "hf" / f"models--{repo_id.replace('/', '--')}"
    write_tree(repo / "snapshots" / COMMIT, files)
    write_tree(repo / "refs", {"main": COMMIT.encode()})


def model_files(path: Path, patterns: list[str] | None) -> dict[str, bytes]:
    """What a loader can see at `path`: a file, or the non-hidden files a `files` selection picks."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    found = {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*")
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)}
    return {k: v for k, v in found.items() if patterns is None or any(fnmatch.fnmatchcase(k, p) for p in patterns)}


@pytest.fixture
def store(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Minio, str]:
    monkeypatch.setenv("MODEL_STORE_ACCESS_KEY", ACCESS_KEY)
    monkeypatch.setenv("MODEL_STORE_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    client = Minio(moto_endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False, region="us-east-1")
    return client, f"models-{uuid.uuid4().hex[:12]}"  # created by the pull itself


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Any]:
    cache = tmp_path / "cache"
    hub_snapshot(cache, "org/tiny", {"config.json": b'{"encoder": "convnext-t"}', "pytorch_model.bin": b"t" * 5000,
                                     "README.md": b"not selected by files"})
    hub_snapshot(cache, "org/lightning", {"unet_8step.safetensors": b"u" * 7000})
    return {
        "cache": cache,
        "base": write_tree(tmp_path / "src" / "base", {"model_index.json": b"{}", "unet/config.json": b'{"a": 1}',
                                                       ".cache/huggingface/download.lock": b"not a model file"}),
        "controlnet": write_tree(tmp_path / "src" / "controlnet", {"checkpoint-30000/controlnet/config.json": b"{}",
                                                                   "checkpoint-30000/controlnet/w.safetensors": b"c" * 900,
                                                                   "checkpoint-100/optimizer.pt": b"o" * 50}),
        "lama": write_tree(tmp_path / "src" / "big-lama", {"model.safetensors": b"l" * 3000}),
        "www": write_tree(tmp_path / "www", {"GFPGANv1.4.pth": GFPGAN}),
    }


def serve_config(sources: dict[str, Any], url_base: str) -> dict[str, Any]:
    args = {
        "colorizers": {
            "large": {"architecture": "controlnet-diffusion", "source": str(sources["base"]),
                      "diffusion": {
                          "controlnet": {"source": str(sources["controlnet"]), "files": ["checkpoint-30000/controlnet/*"],
                                         "subpath": "checkpoint-30000/controlnet"},
                          "unet": {"source": "hf://org/lightning", "files": ["unet_8step.safetensors"],
                                   "subpath": "unet_8step.safetensors"},
                          "vae": {"source": "s3://shared-models/vae"}}},  # already in a bucket: left alone
            "tiny": {"architecture": "ddcolor", "source": "hf://org/tiny", "files": ["config.json", "pytorch_model.bin"]},
        },
        "scratch_repair": {"inpainter": {"architecture": "lama", "source": str(sources["lama"])}},
        "face_remaster": {"restorer": {"architecture": "gfpgan", "source": f"{url_base}/GFPGANv1.4.pth",
                                       "sha256": GFPGAN_SHA, "weights": "GFPGANv1.4.pth", "config": "GFPGANv1.4"}},
    }
    return {"http_options": {"host": "127.0.0.1", "port": 8000},
            "applications": [{"name": "colorize", "import_path": "deployments.app:build_app", "args": args}]}


def objects(client: Minio, bucket: str) -> dict[str, Any]:
    return {o.object_name: o for o in client.list_objects(bucket, recursive=True)}


def pull(config_path: Path, endpoint: str, bucket: str, cache: Path, *extra: str) -> int:
    return main(["pull", str(config_path), "--bucket", f"s3://{bucket}/colorize", "--endpoint", endpoint,
                 "--insecure", "--cache-dir", str(cache), *extra])


def test_pull_uploads_every_source_and_rewrites_the_config(tmp_path: Path, moto_endpoint: str, store, sources,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    client, bucket = store
    config_path, out = tmp_path / "serve_config.yaml", tmp_path / "serve_config.bucket.yaml"
    with FileServer(sources["www"]) as url_base:
        original = serve_config(sources, url_base)
        config_path.write_text(yaml.safe_dump(original))
        assert pull(config_path, moto_endpoint, bucket, sources["cache"], "--write-config", str(out)) == 0

    rewritten = yaml.safe_load(out.read_text())
    args = rewritten["applications"][0]["args"]
    settings = load_settings(args, base_dir=tmp_path)  # the rewritten config is a valid config
    assert args["model_store"] == {"endpoint": moto_endpoint, "secure": False, "region": "us-east-1"}
    new = dict(model_refs(args))
    assert new["colorizers.tiny"]["source"] == f"s3://{bucket}/colorize/hf/org/tiny/main"
    assert new["colorizers.large.diffusion.unet"]["source"] == f"s3://{bucket}/colorize/hf/org/lightning/main"
    assert new["colorizers.large.diffusion.vae"] == {"source": "s3://shared-models/vae"}
    restorer = new["face_remaster.restorer"]
    assert restorer["source"] == f"s3://{bucket}/colorize/url/{GFPGAN_SHA[:16]}" and "sha256" not in restorer
    assert restorer["weights"] == "GFPGANv1.4.pth" and settings.face_remaster.restorer.config == "GFPGANv1.4"
    assert re.fullmatch(rf"s3://{bucket}/colorize/local/big-lama/[0-9a-f]{{16}}",
                        new["scratch_repair.inpainter"]["source"])
    assert new["colorizers.large.diffusion.controlnet"]["subpath"] == "checkpoint-30000/controlnet"

    keys = set(objects(client, bucket))
    assert "colorize/hf/org/tiny/main/pytorch_model.bin" in keys
    assert not any(k.endswith(("README.md", "download.lock", "optimizer.pt")) for k in keys)  # unselected, hidden

    # A node that only knows the bucket gets the same files, at the same subpaths, as the original sources.
    runtime = ModelRuntime(cache_dir=sources["cache"])
    node = ModelRuntime(cache_dir=tmp_path / "node-cache", store=ModelStoreSettings(endpoint=moto_endpoint, secure=False))
    fields = ("source", "files", "sha256", "subpath")
    for where, ref in model_refs(original["applications"][0]["args"]):
        if ref["source"].startswith("s3://"):
            continue
        before = SourceRef(**{k: ref[k] for k in fields if k in ref}).resolve(runtime)
        after = SourceRef(**{k: new[where][k] for k in fields if k in new[where]}).resolve(node)
        patterns = ref.get("files")
        if ref.get("subpath"):
            patterns = None if after.is_file() else [p[len(ref["subpath"]) + 1:] for p in patterns]
        assert model_files(after, None) == model_files(before, patterns) != {}, where
        assert after.is_relative_to(tmp_path / "node-cache")


def test_pull_again_skips_what_is_there_and_repairs_what_differs(tmp_path: Path, moto_endpoint: str, store,
                                                                 sources, capsys: pytest.CaptureFixture[str]) -> None:
    client, bucket = store
    config_path = tmp_path / "serve_config.yaml"
    with FileServer(sources["www"]) as url_base:
        config_path.write_text(yaml.safe_dump(serve_config(sources, url_base)))
        assert pull(config_path, moto_endpoint, bucket, sources["cache"]) == 0
        first = capsys.readouterr()
        before = {k: o.etag for k, o in objects(client, bucket).items()}
        damaged = "colorize/hf/org/tiny/main/pytorch_model.bin"
        client.put_object(bucket, damaged, io.BytesIO(b"half"), length=4)

        assert pull(config_path, moto_endpoint, bucket, sources["cache"]) == 0
    second = capsys.readouterr()
    assert "0 already there" not in second.err
    assert second.err.count("1 uploaded") == 1 and " 0 uploaded" in second.err  # only the damaged object
    assert client.get_object(bucket, damaged).read() == b"t" * 5000
    assert {k: o.etag for k, o in objects(client, bucket).items()} == before
    assert yaml.safe_load(second.out) == yaml.safe_load(first.out)  # stdout: the same rewritten config


def test_missing_credentials_or_unmatched_files_fail_before_anything_is_uploaded(
        tmp_path: Path, moto_endpoint: str, store, sources, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    client, bucket = store
    config = serve_config(sources, "https://example.invalid")
    config["applications"][0]["args"]["face_remaster"] = {}
    config_path = tmp_path / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    monkeypatch.delenv("MODEL_STORE_SECRET_KEY")
    assert pull(config_path, moto_endpoint, bucket, sources["cache"]) == 1
    assert "MODEL_STORE_SECRET_KEY" in capsys.readouterr().err
    assert not client.bucket_exists(bucket)

    monkeypatch.setenv("MODEL_STORE_SECRET_KEY", SECRET_KEY)
    config["applications"][0]["args"]["scratch_repair"]["inpainter"]["files"] = ["*.ckpt"]
    config_path.write_text(yaml.safe_dump(config))
    assert pull(config_path, moto_endpoint, bucket, sources["cache"]) == 1
    err = capsys.readouterr().err
    assert "scratch_repair.inpainter" in err and "'*.ckpt' matches no file" in err
    assert not client.bucket_exists(bucket)  # everything is checked before the first upload


def test_every_model_source_of_the_production_config_is_found() -> None:
    config = yaml.safe_load((Path(__file__).parents[2] / "serve_config.yaml").read_text())
    found = {where: ref["source"] for where, ref in model_refs(config["applications"][0]["args"])}
    # The published recipe decodes with the base repository's own VAE: no separate vae source.
    assert set(found) == {"colorizers.large", "colorizers.tiny", "face_remaster.restorer",
                          *(f"colorizers.large.diffusion.{part}" for part in ("controlnet", "unet", "captioner"))}
    assert all(source.startswith(("hf://", "https://")) for source in found.values())
