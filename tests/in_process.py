"""Both API contracts in-process: ``service.app`` behind Starlette's TestClient, no Ray cluster.

Everything is the shipped code except the stage handles: the runner is the real
``deployments.graph.Graph``, access is a real ``auth.PolicyAccess`` (SQLite ledger, App Check
tokens verified against a loopback JWKS), storage a real ``storage.LocalStore``. Each stage
handle runs a real pipeline stage in this process, loaded by its row of ``service.stages`` the
way ``deployments.stage.Stage`` loads it in a replica. Faults that need a stand-in (a stage that
raises, a full queue, a failing disk) have their own classes below, named as what they are.
"""
from __future__ import annotations

import asyncio
import inspect
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from ray.serve.exceptions import BackPressureError
from starlette.testclient import TestClient

from auth import AuthSettings, PolicyAccess
from auth.accounts import Accounts
from auth.keys import parse_key
from deployments.graph import Graph
from deployments.timing import Timed, unpack
from pipeline.errors import ModelNotLoadedError
from pipeline.weights.settings import ModelRuntime
from service.app import build_http_app
from service.settings import AppSettings
from service.stages import STAGES, stage
from service.telemetry import Telemetry
from tests.helpers import free_port
from storage import LocalStore, StorageError


class _Handle:
    """What ``Graph`` needs of a DeploymentHandle: ``status.remote()`` and ``remote(image, options)``,
    where ``image`` may be the previous stage's pending response (Serve resolves those too). Like a
    ``deployments.stage.Stage``, it answers a ``Timed`` photo with its own run time added."""
    name = "stand-in"

    def __init__(self) -> None:
        self.status = SimpleNamespace(remote=self._status)
        self.calls = 0

    async def _status(self) -> dict[str, Any]:
        return {"loaded": True}

    def remote(self, image: Any, options: dict[str, Any]) -> asyncio.Task:
        async def call() -> np.ndarray | Timed:
            photo, timings = unpack(await image if inspect.isawaitable(image) else image)
            self.calls += 1
            started = time.perf_counter()
            result = await self.run(photo, options)
            if timings is None:
                return result
            run_s = time.perf_counter() - started
            return Timed(result, {**timings, self.name: {"queued_s": 0.0, "run_s": run_s, "batch_size": 1}})
        return asyncio.ensure_future(call())  # a Task: Graph cancels it on timeout, like a response

    async def run(self, image: np.ndarray, options: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError


class InProcessStage(_Handle):
    """A real pipeline stage, loaded from its table row; a load failure reports ``loaded: false``
    and refuses calls with ModelNotLoadedError, as a replica does."""

    def __init__(self, name: str, settings: AppSettings, runtime: ModelRuntime):
        super().__init__()
        self.spec, self.name = stage(name), name
        try:
            self.impl, self.error = self.spec.load(settings.stage_settings(self.spec), runtime), None
        except Exception as exc:
            self.impl, self.error = None, f"{type(exc).__name__}: {exc}"

    async def _status(self) -> dict[str, Any]:
        return {"loaded": self.impl is not None, **({"error": self.error} if self.error else {})}

    async def run(self, image: np.ndarray, options: dict[str, Any]) -> np.ndarray:
        if self.impl is None:
            raise ModelNotLoadedError(f"the {self.spec.label} model is not loaded: {self.error}")
        return (await asyncio.to_thread(self.impl.run_batch, [image], [options]))[0]


class CrashingStage(_Handle):
    """Fault stand-in: a loaded stage whose every call raises, as a kernel that crashes would."""

    def __init__(self, message: str):
        super().__init__()
        self.message = message

    async def run(self, image: np.ndarray, options: dict[str, Any]) -> np.ndarray:
        raise RuntimeError(self.message)


class FullQueueStage(_Handle):
    """Fault stand-in: what a DeploymentHandle raises when the stage's queue is full
    (``max_queued_requests`` reached)."""

    async def run(self, image: np.ndarray, options: dict[str, Any]) -> np.ndarray:
        raise BackPressureError(num_queued_requests=1, max_queued_requests=1)


class HeldStage(_Handle):
    """Wraps a stage and holds each call until ``release`` is set: a job still running."""

    def __init__(self, inner: _Handle):
        super().__init__()
        self.inner, self.entered, self.release = inner, threading.Event(), threading.Event()

    async def run(self, image: np.ndarray, options: dict[str, Any]) -> np.ndarray:
        self.entered.set()
        await asyncio.to_thread(self.release.wait, 30)
        return await self.inner.run(image, options)


class FailingDiskStore(LocalStore):
    """Fault stand-in: a LocalStore whose writes (and, with ``reads=True``, reads) fail the way
    a full or unreachable disk does, with StorageError."""

    def __init__(self, root: Path, *, reads: bool = False):
        super().__init__(root)
        self.reads = reads

    def put(self, kind, name, data, content_type) -> None:
        raise StorageError(f"cannot write {kind}/{name}: [Errno 28] No space left on device")

    def get(self, kind, name):
        if self.reads:
            raise StorageError(f"cannot read {kind}/{name}: [Errno 5] Input/output error")
        return super().get(kind, name)


@dataclass
class InProcessService:
    client: TestClient
    store: LocalStore
    access: PolicyAccess
    runner: Graph

    @property
    def accounts(self) -> Accounts:
        return Accounts(self.access.ledger.engine)

    def key(self, credits: int = 10, **limits) -> str:
        return self.accounts.create_key(credits=credits, rate_per_s=limits.pop("rate_per_s", 1000),
                                        burst=limits.pop("burst", 1000), **limits).key

    def balance(self, key: str) -> int:
        return self.accounts.get(parse_key(key).key_id).balance

    def stored(self) -> list[str]:
        """Every stored object, as kind/name."""
        return sorted(str(path.relative_to(self.store.root)) for path in self.store.root.rglob("*")
                      if path.is_file())


# Loopback origins the in-process service may fetch image URLs from: an image host the tests start,
# and a port where nothing listens (an allowed but unreachable host).
IMAGE_HOST_PORT, CLOSED_PORT = free_port(), free_port()
ALLOWED_ORIGINS = (f"http://127.0.0.1:{IMAGE_HOST_PORT}", f"http://127.0.0.1:{CLOSED_PORT}")


def app_settings(models: Path, tmp: Path, jwks_url: str, project_id: str, **overrides: Any) -> AppSettings:
    """Settings for the in-process service: the tiny colorizer from ``models``, the large one
    pointing at weights that do not exist (so it reports not loaded), scratch repair with
    OpenCV, face remaster without weights (not loaded), a 1 MB upload limit."""
    args = {
        "colorizers": {"tiny": {"architecture": "ddcolor", "source": str(models / "tiny")},
                       "large": {"architecture": "ddcolor", "source": str(tmp / "no-such-model")}},
        "storage": {"backend": "local", "root": str(tmp / "storage")},
        "auth": {"database_url": f"sqlite:///{tmp / 'ledger.sqlite3'}", "database_url_env": None,
                 "app_check": {"project_id": project_id, "jwks_url": jwks_url}},
        "limits": {"max_upload_mb": 1, "max_pixels": 1_000_000, "request_timeout_s": 30},
        "url_fetch": {"timeout_s": 2, "max_redirects": 2, "allow_hosts": list(ALLOWED_ORIGINS)},
        **overrides,
    }
    return AppSettings.model_validate(args)


def load_stages(settings: AppSettings, cache_dir: Path) -> dict[str, _Handle]:
    runtime = ModelRuntime(cache_dir=cache_dir)
    return {spec.name: InProcessStage(spec.name, settings, runtime) for spec in STAGES}


def start_service(settings: AppSettings, stages: dict[str, _Handle], *, store: LocalStore | None = None,
                  auth: AuthSettings | None = None, telemetry: Telemetry | None = None) -> InProcessService:
    store = store or LocalStore(settings.storage.root)
    access = PolicyAccess(auth or settings.auth, environ={}, events=telemetry)
    runner = Graph(stages, timeout_s=settings.limits.request_timeout_s)
    client = TestClient(build_http_app(settings, runner, store, access, telemetry),
                        base_url="http://127.0.0.1:8000")
    client.__enter__()  # runs the lifespan, and lets several threads share the app's event loop
    return InProcessService(client, store, access, runner)


def stop_service(service: InProcessService) -> None:
    service.client.__exit__(None, None, None)
    service.access.close()
