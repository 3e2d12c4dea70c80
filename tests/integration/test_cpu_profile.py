"""serve_config.cpu.yaml, started on Ray Serve from a model cache pre-filled as a first run leaves it.

The profile's own settings and deployment options are used as written, except where the files are
local test builds: storage, the ledger and the model cache point into a scratch directory, and the
GFPGAN entry gets the test build's sha256 pin and constructor. The cache holds tiny, locally built
weights under the published names and layouts: Hugging Face snapshots of ``piddnad/ddcolor_paper``
and ``piddnad/ddcolor_paper_tiny`` (config.json + a flat pytorch_model.bin) and the pinned-URL
entry of ``GFPGANv1.4.pth`` (a ``params_ema`` checkpoint). A renamed repository, file or URL in the
profile misses that cache and leaves its stage unloaded, which fails here, not on a laptop.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.helpers import encode
from tests.integration.conftest import create_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROOT = Path(__file__).parents[2]
COMMIT = "0" * 40
GFPGAN_RELEASE = "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth"
GFPGAN_SHA256 = "e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad"
ADMIN = {"Authorization": f"Bearer {os.environ.get('COLORIZE_ADMIN_TOKEN', 'test-admin-token')}"}


def hub_snapshot(cache: Path, source: str, files: dict[str, bytes]) -> None:
    """The hub's cache layout for ``hf://org/name``, as `hf download --cache-dir` leaves it."""
    repo = cache / "hf" / f"models--{source.removeprefix('hf://').replace('/', '--')}"
    for name, data in files.items():
        (repo / "snapshots" / COMMIT / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / COMMIT / name).write_bytes(data)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)


def published_ddcolor(seed: int) -> dict[str, bytes]:
    """config.json + a flat pytorch_model.bin (PyTorchModelHubMixin's layout) of a tiny DDColor."""
    from pipeline.models import ddcolor

    buffer = io.BytesIO()
    torch.save(ddcolor.build_tiny_model(seed=seed).state_dict(), buffer)
    return {"config.json": json.dumps(ddcolor.tiny_config()).encode(), "pytorch_model.bin": buffer.getvalue()}


def published_gfpgan() -> bytes:
    """The release file's form: the generator's state dict under ``params_ema``."""
    from pipeline.models import gfpgan, model_class

    torch.manual_seed(5)
    buffer = io.BytesIO()
    torch.save({"params_ema": model_class("gfpgan")(**gfpgan.tiny_config()).state_dict()}, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def cpu_profile(serve_cluster, tmp_path_factory):
    from ray import serve

    from deployments.app import build_graph
    from pipeline.models import gfpgan
    from service.settings import load_settings

    root = tmp_path_factory.mktemp("cpu-profile")
    config = yaml.safe_load((ROOT / "serve_config.cpu.yaml").read_text())
    app = config["applications"][0]
    args = app["args"]
    cache = root / "model-cache"
    colorizers = args["colorizers"]
    # The published names, written here, not read from the profile: a typo there misses this cache.
    hub_snapshot(cache, "hf://piddnad/ddcolor_paper", published_ddcolor(seed=1))
    hub_snapshot(cache, "hf://piddnad/ddcolor_paper_tiny", published_ddcolor(seed=2))
    restorer = args["face_remaster"]["restorer"]
    assert restorer["source"] == GFPGAN_RELEASE and restorer["sha256"] == GFPGAN_SHA256  # the real pin
    weights = published_gfpgan()
    digest = hashlib.sha256(weights).hexdigest()
    (cache / "url" / digest[:16]).mkdir(parents=True)
    (cache / "url" / digest[:16] / "GFPGANv1.4.pth").write_bytes(weights)  # where a verified download lands
    restorer.update(sha256=digest, config=gfpgan.tiny_config())
    args.update(model_cache_dir=str(cache), storage={**args["storage"], "root": str(root / "storage")},
                auth={**args["auth"], "database_url": f"sqlite:///{root / 'ledger.sqlite3'}",
                      "database_url_env": None})
    options = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in app["deployments"]}
    for name, option in options.items():
        if name != "Ingress":  # the stages read the cache only: no network, as on an offline laptop
            option["ray_actor_options"] = {**option["ray_actor_options"],
                                           "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1"}}}
    serve.run(build_graph(load_settings(args), options), name="cpu-profile", route_prefix="/cpu-profile")
    key = create_key(args, credits=100, rate_per_s=100, burst=100)
    with httpx.Client(base_url=f"{serve_cluster}/cpu-profile", timeout=120, headers={"X-Api-Key": key}) as client:
        yield client
    serve.delete("cpu-profile")


def face_photo() -> bytes:
    from skimage import data

    grey = Image.fromarray(data.astronaut()[:, 100:420]).convert("L").resize((240, 384))
    return encode(np.asarray(grey.convert("RGB")), "JPEG", quality=92)


def colorize(client: httpx.Client, **fields: str) -> np.ndarray:
    answer = client.post("/api/v1/colorize", files={"image": ("astronaut.jpg", face_photo())}, data=fields)
    assert answer.status_code == 200, answer.text
    image = client.get(answer.json()["outputUrl"])
    assert image.status_code == 200
    return np.asarray(Image.open(io.BytesIO(image.content)).convert("RGB"))


def test_cpu_profile_serves_large_tiny_faces_and_scratches_from_the_published_layouts(cpu_profile):
    health = cpu_profile.get("/health")
    assert health.status_code == 200, health.text
    assert health.json()["models"] == {"large": {"loaded": True}, "tiny": {"loaded": True}}
    assert health.json()["stages"] == {"scratch_repair": {"loaded": True}, "face_remaster": {"loaded": True}}

    large = colorize(cpu_profile, model="large")
    tiny = colorize(cpu_profile, model="tiny")
    assert large.shape == tiny.shape == (384, 240, 3)
    assert not np.array_equal(large, tiny)  # two snapshots, two models
    faces = colorize(cpu_profile, model="tiny", face_remaster="true")
    assert not np.array_equal(faces, tiny)  # MTCNN found the face and GFPGAN's output was pasted back
    repaired = colorize(cpu_profile, model="large", clean_scratches="true", face_remaster="true")
    assert repaired.shape == large.shape

    deadline = time.monotonic() + 15
    while True:  # the stage view is cached for 2 s (deployments/graph.py): wait for one taken after the jobs
        stages = cpu_profile.get("/admin/status", headers=ADMIN).json()["stages"]
        if all(stages[name]["batch_sizes"] for name in stages) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for name in ("large", "tiny", "face_remaster", "scratch_repair"):
        assert stages[name]["loaded"], stages[name]
        assert stages[name]["batch_sizes"], name  # each ran
    for name in ("large", "tiny", "face_remaster"):  # the profile's user_config reached the replicas
        assert stages[name]["torch_threads"] == 2
