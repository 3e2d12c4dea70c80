"""The CPU profile end to end: seconds per photo over HTTP, full-size models, this machine.

    python -m bench.cpu_profile [--photos 3] [--size 512]

Starts ``serve_config.cpu.yaml`` as written (its settings and deployment options: CPU shares,
torch_threads, batch sizes) on Serve on loopback, from a model cache filled here with the full-size
architectures in the published file layouts (DDColor-L and DDColor-T hub snapshots, the
``GFPGANv1.4.pth`` release file) and random weights: nothing is downloaded, the computation (and
so the time) is that of the published models, the colors are not. Auth is left out (no ledger
I/O). Sends one photo at a time (a grey portrait with one face, ``--size`` px square, JPEG) and
prints the client's seconds per photo for ``tiny``, ``large`` and ``tiny`` + ``face_remaster``.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0" * 40
MODES = {"tiny": {"model": "tiny"}, "large": {"model": "large"},
         "tiny + face_remaster": {"model": "tiny", "face_remaster": "true"}}


def hub_snapshot(cache: Path, repo_id: str, files: dict[str, bytes]) -> None:
    repo = cache / "hf" / f"models--{repo_id.replace('/', '--')}"
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    for name, data in files.items():
        (repo / "snapshots" / COMMIT / name).write_bytes(data)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


def full_size_cache(cache: Path) -> str:
    """Fill ``cache`` as a first run of the profile would; returns the GFPGAN file's sha256."""
    import torch

    from pipeline.models import architecture_module, model_class
    from pipeline.models.ddcolor_unet import converge_spectral_norms_

    torch.manual_seed(0)
    ddcolor = architecture_module("ddcolor")
    for repo, config in (("piddnad/ddcolor_paper", "ddcolor_paper"), ("piddnad/ddcolor_paper_tiny",
                                                                       "ddcolor_paper_tiny")):
        constructor = ddcolor.PUBLISHED_CONFIGS[config]
        model = model_class("ddcolor")(**constructor)
        # As the demo builds: converged spectral norms give outputs of a sane scale (random init explodes),
        # so the colorized portrait still has a face MTCNN finds, as a trained model's would.
        converge_spectral_norms_(model)
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        hub_snapshot(cache, repo, {"config.json": json.dumps(constructor).encode(),
                                   "pytorch_model.bin": buffer.getvalue()})
    generator = model_class("gfpgan")(**architecture_module("gfpgan").PUBLISHED_CONFIGS["GFPGANv1.4"])
    buffer = io.BytesIO()
    torch.save({"params_ema": generator.state_dict()}, buffer)
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    (cache / "url" / digest[:16]).mkdir(parents=True)
    (cache / "url" / digest[:16] / "GFPGANv1.4.pth").write_bytes(buffer.getvalue())
    return digest


def profile_app(workdir: Path, gfpgan_sha256: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    app = yaml.safe_load((ROOT / "serve_config.cpu.yaml").read_text())["applications"][0]
    args = app["args"]
    args.pop("auth")
    args["face_remaster"]["restorer"]["sha256"] = gfpgan_sha256
    args.update(model_cache_dir=str(workdir / "cache"),
                storage={**args["storage"], "root": str(workdir / "storage")})
    options = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in app["deployments"]}
    for name, option in options.items():
        if name != "Ingress":
            option["ray_actor_options"] = {**option["ray_actor_options"],
                                           "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1"}}}
    return args, options


def portrait(size: int) -> bytes:
    from PIL import Image
    from skimage import data

    grey = Image.fromarray(data.astronaut()).convert("L").resize((size, size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    grey.convert("RGB").save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=3, help="timed photos per mode (after one warm-up)")
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args(argv)

    import httpx
    import ray
    from ray import serve

    from bench.serve_graph import free_port, quiet_ray_env
    from deployments.app import build_graph
    from deployments.launch import CPU_RAY_ENV
    from service.settings import load_settings

    with tempfile.TemporaryDirectory(prefix="cpu-profile-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        digest = full_size_cache(workdir / "cache")
        print(f"# cache with full-size random weights written in {time.perf_counter() - started:.0f} s", flush=True)
        app_args, options = profile_app(workdir, digest)
        quiet_ray_env()
        for name, value in CPU_RAY_ENV.items():  # as `make serve PROFILE=cpu` on a machine without a GPU
            os.environ.setdefault(name, value)
        port = free_port()
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False,
                 configure_logging=False, namespace="bench-cpu-profile")
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 180},
                        logging_config={"enable_access_log": False})
            started = time.perf_counter()
            serve.run(build_graph(load_settings(app_args), options), name="colorize", route_prefix="/")
            print(f"# serve_config.cpu.yaml up in {time.perf_counter() - started:.0f} s "
                  f"(loading the full-size models); {os.cpu_count()} CPUs, load average "
                  f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
            photo = portrait(args.size)
            url = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=url, timeout=300, trust_env=False) as client:
                health = client.get("/health").json()
                assert all(v["loaded"] for v in (*health["models"].values(), *health["stages"].values())), health
                print(f"{'mode':24} {'s/photo (median)':>17} {'min':>6} {'max':>6}")
                results = {}
                for mode, fields in MODES.items():
                    seconds = []
                    for i in range(args.photos + 1):
                        began = time.perf_counter()
                        answer = client.post("/api/v1/colorize", files={"image": ("portrait.jpg", photo)},
                                             data=fields)
                        answer.raise_for_status()
                        if i:  # the first one warms up
                            seconds.append(time.perf_counter() - began)
                    results[mode] = client.get(answer.json()["outputUrl"]).content
                    print(f"{mode:24} {statistics.median(seconds):>17.2f} {min(seconds):>6.2f} "
                          f"{max(seconds):>6.2f}", flush=True)
                restored = results["tiny + face_remaster"] != results["tiny"]
                print(f"# face found and restored by GFPGAN: {'yes' if restored else 'NO (the face row timed no GFPGAN)'}")
            print(f"# load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        finally:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
