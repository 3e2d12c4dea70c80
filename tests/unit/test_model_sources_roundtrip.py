"""Every architecture, saved in its published file form, loads unchanged through every
source kind of the real resolver: a local directory, s3:// (moto on loopback), and a pinned
http(s) URL (a loopback server stands in for the release host)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from minio import Minio

from pipeline.weights.settings import ModelRuntime, ModelSettings, ModelStoreSettings
from tools.build_demo import DEMO_MODELS
from pipeline.models import architecture_module
from tests.helpers import FileServer, photo

ACCESS, SECRET = "models-access", "models-secret"
# Published file forms: GFPGAN nests under params_ema, LaMa is a Lightning checkpoint.
WRAPPERS = {
    "gfpgan": lambda state: {"params_ema": state},
    "lama": lambda state: {"state_dict": {f"generator.{k}": v for k, v in state.items()}},
}
ARCHITECTURES = {"siggraph17": None, "ddcolor": "tiny", "gfpgan": "face", "lama": "lama"}


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("demo")
    for name in ("tiny", "face", "lama", "large"):
        DEMO_MODELS[name](directory / name, 0)
    return directory


@pytest.fixture()
def store(moto_endpoint, monkeypatch) -> Minio:
    monkeypatch.setenv("MODEL_STORE_ACCESS_KEY", ACCESS)
    monkeypatch.setenv("MODEL_STORE_SECRET_KEY", SECRET)
    client = Minio(moto_endpoint, access_key=ACCESS, secret_key=SECRET, secure=False, region="us-east-1")
    if not client.bucket_exists("models"):
        client.make_bucket("models")
    return client


def tiny_state(architecture: str, demo_models: Path) -> tuple[dict, dict]:
    module = architecture_module(architecture)
    if ARCHITECTURES[architecture] is None:
        torch.manual_seed(0)
        model = module.SIGGRAPHGenerator(**module.tiny_config())
        return model.state_dict(), module.tiny_config()
    from safetensors.torch import load_file
    directory = demo_models / ARCHITECTURES[architecture]
    return load_file(directory / "model.safetensors"), module.tiny_config()


def upload(store: Minio, prefix: str, directory: Path) -> None:
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        store.fput_object("models", f"{prefix}/{path.relative_to(directory)}", str(path))


def assert_same_state(model: torch.nn.Module, state: dict) -> None:
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key].cpu(), value), key


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
@pytest.mark.parametrize("kind", ["local", "s3", "url"])
def test_published_form_loads_through_every_source(architecture, kind, demo_models, tmp_path, moto_endpoint,
                                                   request):
    state, constructor = tiny_state(architecture, demo_models)
    wrapped = WRAPPERS.get(architecture, lambda s: s)(state)
    published = tmp_path / "published"
    published.mkdir()
    torch.save(wrapped, published / "weights.pth")
    runtime = ModelRuntime(cache_dir=tmp_path / "cache")
    common = {"architecture": architecture, "weights": "weights.pth", "config": constructor, "device": "cpu"}
    if kind == "local":
        model = ModelSettings(source=str(published), **common).load_module(runtime)
    elif kind == "s3":
        store = request.getfixturevalue("store")
        upload(store, f"{architecture}-{tmp_path.name}", published)
        runtime = ModelRuntime(cache_dir=tmp_path / "cache", store=ModelStoreSettings(endpoint=moto_endpoint,
                                                                                      secure=False))
        model = ModelSettings(source=f"s3://models/{architecture}-{tmp_path.name}", **common).load_module(runtime)
    else:
        digest = hashlib.sha256((published / "weights.pth").read_bytes()).hexdigest()
        with FileServer(published) as base:
            model = ModelSettings(source=f"{base}/weights.pth", sha256=digest, **common).load_module(runtime)
    assert_same_state(model, state)


def test_text_guided_pipeline_folder_through_s3(demo_models, store, moto_endpoint, tmp_path):
    upload(store, "sdxl-tiny", demo_models / "large")
    runtime = ModelRuntime(cache_dir=tmp_path / "cache", store=ModelStoreSettings(endpoint=moto_endpoint,
                                                                                  secure=False))
    spec = ModelSettings(architecture="controlnet-diffusion", source="s3://models/sdxl-tiny", subpath="base",
                         device="cpu", diffusion={"controlnet": {"source": "s3://models/sdxl-tiny",
                                                                 "subpath": "controlnet"},
                                                  "steps": 2, "resolution": 64})
    colorizer = spec.load_colorizer(runtime)
    image = photo(50, 30)
    first = colorizer.run_batch([image], [{"seed": 3}])[0]
    assert first.shape == image.shape and first.dtype == np.uint8
    np.testing.assert_array_equal(first, colorizer.run_batch([image], [{"seed": 3}])[0])
