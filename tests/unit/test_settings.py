"""Configuration: the shipped YAML files validate; mistakes give actionable messages."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deployments.launch import check_config, effective_config, public_links_problem
from service.settings import ConfigError, batch_settings, load_settings

ROOT = Path(__file__).parents[2]
MINIMAL = {"colorizers": {"large": {"architecture": "siggraph17", "source": "m/l"},
                          "tiny": {"architecture": "ddcolor", "source": "/abs/t"}}}


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config.demo.yaml", "serve_config.cpu.yaml"])
def test_shipped_configs_are_valid(name):
    config = yaml.safe_load((ROOT / name).read_text())
    assert check_config(config, base_dir=ROOT) == []
    app = config["applications"][0]
    assert {d["name"] for d in app["deployments"]} == {
        "Ingress", "ScratchRepair", "ColorizerLarge", "ColorizerTiny", "FaceRemaster"}
    for deployment in app["deployments"]:  # batches can only form if enough requests may be in flight
        if "user_config" in deployment:
            assert deployment["max_ongoing_requests"] >= deployment["user_config"]["max_batch_size"]


def test_relative_paths_become_absolute(tmp_path):
    settings = load_settings(MINIMAL, base_dir=tmp_path)
    assert settings.colorizers.large.source == str(tmp_path.resolve() / "m/l")
    assert settings.colorizers.tiny.source == "/abs/t"
    assert settings.storage.root == tmp_path.resolve() / "data/storage"
    assert settings.max_upload_bytes == 25 * (1 << 20)


@pytest.mark.parametrize("change,message", [
    ({"colorizer": {}}, "colorizer: unknown key"),
    ({"colorizers": {"large": MINIMAL["colorizers"]["large"]}}, "colorizers.tiny: required: add it"),
    ({"colorizers": {**MINIMAL["colorizers"], "huge": MINIMAL["colorizers"]["large"]}}, "colorizers.huge"),
    ({"colorizers": {**MINIMAL["colorizers"], "tiny": {"architecture": "resnet", "source": "x"}}}, "unknown architecture"),
    ({"storage": {"backend": "s3"}}, "storage"),
    ({"limits": {"max_upload_mb": 0}}, "limits.max_upload_mb"),
    ({"public_base_url": "example.com"}, "http:// or https://"),
])
def test_mistakes_are_explained(change, message):
    with pytest.raises(ConfigError, match=message):
        load_settings({**MINIMAL, **change})


def test_user_config_checked():
    assert batch_settings({"max_batch_size": 4}).max_batch_size == 4
    with pytest.raises(ConfigError, match="max_batch_sise: unknown key"):
        batch_settings({"max_batch_sise": 4})


def test_check_config_reports_deployment_mistakes():
    config = {"applications": [{"name": "a", "import_path": "deployments.app:build_app", "args": MINIMAL,
                                "deployments": [{"name": "Colorizer"}, {"name": "Ingress", "user_config": {}},
                                                {"name": "ColorizerTiny", "user_config": {"max_batch_size": 0}}]}]}
    problems = "\n".join(check_config(config, base_dir=ROOT))
    assert "unknown deployment 'Colorizer'" in problems
    assert "Ingress takes no user_config" in problems
    assert "max_batch_size" in problems


def test_effective_config_without_gpu():
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    effective = effective_config(config, host="0.0.0.0", port=9123, gpus=0)
    assert effective["http_options"] == {**config["http_options"], "host": "0.0.0.0", "port": 9123}
    gpus = [d.get("ray_actor_options", {}).get("num_gpus", 0) for d in effective["applications"][0]["deployments"]]
    assert gpus and not any(gpus)
    kept = effective_config(config, host=None, port=None, gpus=1)
    assert kept["applications"][0]["deployments"][2]["ray_actor_options"]["num_gpus"] == 0.5


def test_serving_other_machines_needs_a_public_base_url(monkeypatch):
    config = yaml.safe_load((ROOT / "serve_config.demo.yaml").read_text())
    monkeypatch.delenv("COLORIZE_PUBLIC_BASE_URL", raising=False)
    assert public_links_problem(effective_config(config, host="127.0.0.1", port=None, gpus=0)) is None
    problem = public_links_problem(effective_config(config, host="0.0.0.0", port=None, gpus=0))
    assert problem and "COLORIZE_PUBLIC_BASE_URL" in problem
    monkeypatch.setenv("COLORIZE_PUBLIC_BASE_URL", "https://colorize.example.com/")
    assert public_links_problem(effective_config(config, host="0.0.0.0", port=None, gpus=0)) is None
    assert load_settings(MINIMAL).public_base_url == "https://colorize.example.com"  # the env var wins


def test_torch_threads_per_replica_are_validated_and_applied():
    import torch

    from pipeline.device import set_torch_threads

    assert batch_settings({"max_batch_size": 2, "torch_threads": 3}).torch_threads == 3
    assert batch_settings({}).torch_threads is None
    for bad in (0, -1, 1000, "many"):
        with pytest.raises(ConfigError, match="torch_threads"):
            batch_settings({"torch_threads": bad})
    config = {"applications": [{"name": "a", "import_path": "deployments.app:build_app", "args": MINIMAL,
                                "deployments": [{"name": "ColorizerTiny", "user_config": {"torch_threads": 0}}]}]}
    assert "torch_threads" in "\n".join(check_config(config, base_dir=ROOT))
    before = torch.get_num_threads()
    try:
        assert set_torch_threads(None) == before
        other = 1 if before != 1 else 2
        assert set_torch_threads(other) == other == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_make_check_config_checks_every_shipped_profile():
    makefile = (ROOT / "Makefile").read_text()
    for path in sorted(ROOT.glob("serve_config*.yaml")):
        assert f"deployments.launch {path.name} --check" in makefile, path.name


def test_cpu_profile_is_cpu_only_with_small_batches_and_threads():
    config = yaml.safe_load((ROOT / "serve_config.cpu.yaml").read_text())
    app = config["applications"][0]
    settings = load_settings(app["args"], base_dir=ROOT)
    production = load_settings(yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"],
                               base_dir=ROOT)
    assert settings.colorizers.tiny == production.colorizers.tiny.model_copy(update={
        "device": "cpu", "max_gpu_memory_fraction": None})  # the same published DDColor-T
    assert settings.face_remaster == production.face_remaster.model_copy(update={
        "restorer": production.face_remaster.restorer.model_copy(update={"device": "cpu"})})
    assert settings.scratch_repair == production.scratch_repair  # OpenCV, no weights
    assert settings.colorizers.large.source == "hf://piddnad/ddcolor_paper"
    shares = 0.0
    for deployment in app["deployments"]:
        options = deployment["ray_actor_options"]
        assert not options.get("num_gpus")
        shares += options["num_cpus"]
        if deployment["name"] != "Ingress":
            assert batch_settings(deployment["user_config"]).max_batch_size <= 2
    assert shares <= 2  # every replica schedules on a 2-core laptop


def test_make_serve_without_a_gpu_names_the_profile_that_fits(monkeypatch, capsys, tmp_path):
    import deployments.launch as launch

    started = []
    monkeypatch.setattr(launch, "serve_run", lambda target: started.append(target) or 0)
    for name in (*launch.CPU_RAY_ENV, launch.CALLBACK_ENV, "COLORIZE_BASE_DIR"):  # main() sets them: restore after
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    monkeypatch.setattr(launch, "gpu_count", lambda: 0)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "serve_config.yaml").write_text((ROOT / "serve_config.yaml").read_text())
    assert launch.main(["serve_config.yaml", "--needs-gpu"]) == 2
    error = capsys.readouterr().err
    assert "no GPU is visible" in error and "make serve PROFILE=cpu" in error and "make serve PROFILE=gpu" in error
    assert started == []
    assert launch.main(["serve_config.yaml"]) == 0  # PROFILE=gpu: forced, on CPU, with the usual notes
    assert "running ColorizerLarge on CPU" in capsys.readouterr().out
    monkeypatch.setattr(launch, "gpu_count", lambda: 1)
    assert launch.main(["serve_config.yaml", "--needs-gpu"]) == 0
    assert len(started) == 2
