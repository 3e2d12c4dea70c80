"""The HTTP ingress on Ray Serve: ``service.app``'s Starlette app over the graph's stage handles.

Serve builds the ASGI app in each replica after ``__init__`` (``__serve_build_asgi_app__``), so the
app holds this replica's own store, database engine and Firebase app, none of which travel
between processes.
"""
from __future__ import annotations

import logging
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette

from auth import Access, OpenAccess, PolicyAccess
from service.app import build_http_app
from service.heap_watch import start_heap_snapshots
from service.memory import keep_photo_buffers, release_shared_mappings
from service.settings import AppSettings
from service.telemetry import Telemetry
from storage import make_store

from .graph import Graph
from .metrics import RayRecorder
from .stage import RAY_OBJECT_STORE_FILE_PREFIX

log = logging.getLogger("ray.serve")

INGRESS_KEEP_BYTES = 16 << 20


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
@serve.ingress()
class Ingress:
    def __init__(self, settings: dict[str, Any], stages: dict[str, DeploymentHandle]):
        self.settings = AppSettings.model_validate(settings)
        release_shared_mappings(RAY_OBJECT_STORE_FILE_PREFIX)  # after large jobs (service.memory)
        # And between small ones, no page faults on every photo's buffers. A 512 px job's are under
        # 1 MB here (a stage's batch of 8 needs more): a smaller keep bounds what each thread holds.
        keep_photo_buffers(keep_bytes=INGRESS_KEEP_BYTES)
        start_heap_snapshots("Ingress")  # a diagnostic, off unless COLORIZE_HEAP_SNAPSHOTS is set
        self.store = make_store(self.settings.storage)
        self.store.check()  # fail the deployment now, with the store's message, not on the first request
        self.graph = Graph(stages, timeout_s=self.settings.limits.request_timeout_s)
        # This replica's jobs, sheds, failures and credits, exported through Ray's metrics port.
        self.telemetry = Telemetry(RayRecorder(), log_format=self.settings.job_log_format)
        self.access: Access = (PolicyAccess(self.settings.auth, events=self.telemetry) if self.settings.auth
                               else OpenAccess())
        if self.settings.auth is None:
            log.warning("no `auth:` configured: every route is open and nothing is charged")
        if self.settings.links_from_request_host:
            log.warning("public_base_url is not set: only requests to %s are answered (links are built from the "
                        "request's host); set COLORIZE_PUBLIC_BASE_URL or public_base_url / allowed_hosts",
                        ", ".join(self.settings.trusted_hosts()))

    def __serve_build_asgi_app__(self) -> Starlette:
        return build_http_app(self.settings, self.graph, self.store, self.access, self.telemetry)
