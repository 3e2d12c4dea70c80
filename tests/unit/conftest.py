"""Fixtures for the in-process HTTP tests (tests/in_process.py): one tiny colorizer built once,
the real stages loaded once, and a fresh store and ledger for every test."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.auth_fixtures import PROJECT_ID, SigningKeys, signing_keys  # noqa: F401 (fixture)

# tests/in_process.py (Ray's exception types, the graph runner) is imported inside the fixtures,
# so unit tests that do not use them do not pay for the import.


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """Only the model the in-process service runs: the tiny DDColor (real architecture, seeded weights)."""
    from tools.build_demo import DEMO_MODELS

    directory = tmp_path_factory.mktemp("in-process-models")
    DEMO_MODELS["tiny"](directory / "tiny", 0)
    return directory


@pytest.fixture(scope="session")
def in_process_stages(tiny_models: Path, tmp_path_factory, signing_keys: SigningKeys) -> dict:  # noqa: F811
    from tests.in_process import app_settings, load_stages

    settings = app_settings(tiny_models, tmp_path_factory.mktemp("stages"), signing_keys.jwks_url, PROJECT_ID)
    return load_stages(settings, tmp_path_factory.mktemp("model-cache"))


@pytest.fixture
def start(tiny_models: Path, in_process_stages: dict, signing_keys: SigningKeys,  # noqa: F811
          tmp_path: Path) -> Iterator[Callable]:
    """``start(stages={...}, store=..., auth=..., telemetry=..., **settings)``: the app on a fresh store and
    ledger, with some stage handles replaced (e.g. by a fault stand-in); an ``InProcessService``."""
    from tests.in_process import app_settings, start_service, stop_service

    started = []

    def start_one(*, stages: dict | None = None, store=None, auth=None, telemetry=None, **overrides):
        root = tmp_path / f"service-{len(started)}"
        settings = app_settings(tiny_models, root, signing_keys.jwks_url, PROJECT_ID, **overrides)
        service = start_service(settings, {**in_process_stages, **(stages or {})},
                                store=store(settings.storage.root) if store else None, auth=auth,
                                telemetry=telemetry)
        started.append(service)
        return service

    yield start_one
    for service in started:
        stop_service(service)
