"""The application's own settings: the ``args`` of each app in serve_config.yaml.

Validated strictly (unknown keys are errors; Serve's own schema silently ignores them)
in the process that reads the config, before any replica starts.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, create_model, field_validator

from auth import AuthSettings
from pipeline.inputs.remote_image import normalize_origin
from pipeline.weights.settings import ModelRuntime, ModelStoreSettings, SourceRef, Strict
from storage import LocalStoreSettings, StorageSettings

from .web.cors import CorsSettings
from .stages import STAGES, StageSpec


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
PUBLIC_BASE_URL_ENV = "COLORIZE_PUBLIC_BASE_URL"  # overrides public_base_url when set


class ConfigError(ValueError):
    """The configuration is wrong; the message says where and how to fix it."""


class LimitSettings(Strict):
    max_upload_mb: float = Field(25.0, gt=0, le=200, description="request body / fetched image limit (413 above)")
    max_pixels: int = Field(50_000_000, ge=1, description="decoded pixel limit (400 above)")
    request_timeout_s: float = Field(120.0, gt=0, description="graph time limit per job")
    max_megapixels_in_flight: float = Field(
        64.0, gt=0, description="per Ingress replica: megapixels of photos being decoded, processed and encoded at "
                                "once (read from each photo's header before decoding); more wait in line, and a "
                                "photo larger than this runs alone. One 49 MP photo in flight costs ~1 GB across the service")
    pixel_wait_s: float = Field(
        30.0, ge=0, le=600, description="how long a photo may wait in line for that budget before it is refused: "
                                        "429 (key API) or 503 (App Check API) with Retry-After, nothing charged")


class AdmissionSettings(Strict):
    enabled: bool = Field(True, description="adaptive admission of jobs (`POST /api/v1/colorize`, `POST /colorize`) "
                                            "per Ingress replica (`service/admission.py`); false: every job is let in")
    min_concurrency: int = Field(8, ge=1, le=4096, description="jobs in flight the limit starts at and never goes "
                                                              "below; their latency is the baseline")
    max_concurrency: int = Field(64, ge=1, le=4096, description="the most jobs in flight, however fast they run; keep "
                                                                "it within the stages' `max_ongoing_requests`")
    latency_tolerance: float = Field(1.2, gt=1, le=10, description="the limit grows while recent job latency stays "
                                                                   "within this many times the baseline, and shrinks above it")
    max_queue_wait_s: float = Field(0.1, ge=0, le=60, description="the longest a job waits for a place: one expected "
                                                                   "to wait longer is refused at once, 429 (key API) or "
                                                                   "503 (App Check API) with Retry-After, nothing charged")
    readiness_ttl_s: float = Field(2.0, gt=0, le=60, description="how often storage and the ledger are checked in the "
                                                                 "background (`GET /readyz`); while either does not "
                                                                 "answer, jobs are refused with 503 + Retry-After")

    @field_validator("max_concurrency")
    @classmethod
    def _above_min(cls, value: int, info) -> int:
        if value < info.data.get("min_concurrency", 1):
            raise ValueError("max_concurrency must be at least min_concurrency")
        return value


class UrlFetchSettings(Strict):
    timeout_s: float = Field(10.0, gt=0, le=120, description="whole-fetch time limit for image URLs")
    max_redirects: int = Field(5, ge=0, le=20, description="redirects followed (each one re-checked)")
    allow_hosts: tuple[str, ...] = Field(
        (), description="origins (`scheme://host:port`) exempt from the private-address check (tests, intranets)")

    @field_validator("allow_hosts")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(normalize_origin(origin) for origin in value)  # a bare host would open all its ports


def _stage_sections() -> dict[str, Any]:
    """One settings field per stage section of the table: a stage's own model, or a group of
    them (``colorizers: {large: ..., tiny: ...}``, every member required)."""
    fields: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for spec in STAGES:
        head, *member = spec.section
        about = f"the {spec.label} stage (deployment `{spec.deployment}`)"
        if member:
            groups.setdefault(head, {})[member[0]] = (spec.settings, Field(..., description=about))
        else:
            fields[head] = (spec.settings, Field(default_factory=spec.settings, description=about))
    for head, members in groups.items():
        group = create_model(f"{head.title()}Section", __base__=Strict, **members)
        fields[head] = (group, Field(..., description=f"one entry per stage: {', '.join(members)}"))
    return fields


_StageSections = create_model("StageSections", __base__=Strict, **_stage_sections())


class AppSettings(_StageSections):
    """The app's ``args`` in serve_config.yaml; the stage sections come from ``service.stages``."""
    public_base_url: str | None = Field(
        None, description="base of links in responses, e.g. `https://colorize.example.com`; none: the request's own")
    model_cache_dir: Path = Field(Path("data/model-cache"), description="where each node keeps downloaded weights")
    model_store: ModelStoreSettings | None = Field(None, description="the bucket `s3://` model sources read")
    storage: StorageSettings = Field(default_factory=LocalStoreSettings,
                                     description="where uploads and results are kept; `backend` picks the keys below")
    allowed_hosts: tuple[str, ...] | None = Field(
        None, description="`Host` names requests may carry (Starlette's TrustedHostMiddleware, `*.example.com` "
                          "patterns); default: any when `public_base_url` is set, else only loopback names, since "
                          "links are then built from the request's own host")
    admin_token_env: str = Field(
        "COLORIZE_ADMIN_TOKEN", description="env var holding the bearer token of `GET /admin/status` "
                                            "(stage details: model sources, nodes, batch sizes, errors); unset: off")
    job_log_format: Literal["json", "text"] = Field(
        "json", description="the one line per job on the ingress's stderr (logger `colorize.jobs`: request id, key "
                            "id, route, model, add-ons, image size, stage timings, outcome, price): `json` for log "
                            "pipelines, `text` to read in a terminal (docs/operate.md)")
    auth: AuthSettings | None = Field(None, description="keys, credits, App Check; none: open, nothing charged")
    limits: LimitSettings = Field(LimitSettings(), description="sizes and time limits of a request")
    url_fetch: UrlFetchSettings = Field(UrlFetchSettings(), description="fetching images sent as URLs (key API)")
    admission: AdmissionSettings = Field(AdmissionSettings(), description="how many jobs each Ingress replica "
                                         "admits, and readiness (docs/performance-overload.md)")
    cors: CorsSettings = Field(CorsSettings(), description="which other origins' pages may call the API")
    workbench: bool = Field(True, description="serve the web workbench (`workbench/`) at `/`")

    @field_validator("allowed_hosts")
    @classmethod
    def _host_patterns(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for pattern in value or ():
            if not pattern or ("*" in pattern[1:]) or (pattern.startswith("*") and pattern not in ("*",)
                                                       and not pattern.startswith("*.")):
                raise ValueError(f"{pattern!r}: use a host name, `*.example.com` or `*`")
        return value

    @field_validator("public_base_url")
    @classmethod
    def _absolute_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

    @property
    def links_from_request_host(self) -> bool:
        """Links built from the request's Host header, trusted only for loopback names."""
        return self.public_base_url is None and self.allowed_hosts is None

    def trusted_hosts(self) -> tuple[str, ...]:
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        return ("*",) if self.public_base_url else LOOPBACK_HOSTS

    def stage_settings(self, spec: StageSpec) -> Strict:
        """The section of ``spec`` (e.g. ``colorizers.large``)."""
        section: Any = self
        for key in spec.section:
            section = getattr(section, key)
        return section

    def model_runtime(self) -> dict[str, Any]:
        return ModelRuntime(cache_dir=self.model_cache_dir, store=self.model_store).model_dump(mode="json")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.limits.max_upload_mb * (1 << 20))


def load_settings(args: dict[str, Any] | None, *, base_dir: Path | None = None) -> AppSettings:
    """Validate app args and make every relative path absolute against ``base_dir``
    (the directory `serve run` was started in), since replicas may run elsewhere."""
    args = dict(args or {})
    if os.environ.get(PUBLIC_BASE_URL_ENV):  # per-deployment, like the database URL: no file edits
        args["public_base_url"] = os.environ[PUBLIC_BASE_URL_ENV]
    try:
        settings = AppSettings.model_validate(args)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None
    # `serve run` may build the app in a worker whose cwd is not where the user started it;
    # the launcher exports that directory.
    base = base_dir or Path(os.environ.get("COLORIZE_BASE_DIR") or Path.cwd())
    return _absolutize(settings, base.resolve())


def _absolutize(settings: AppSettings, base: Path) -> AppSettings:
    update: dict[str, Any] = {"model_cache_dir": base / settings.model_cache_dir}
    for head in {spec.section[0] for spec in STAGES}:
        update[head] = _with_base_dir(getattr(settings, head), base)
    if settings.auth is not None:
        update["auth"] = settings.auth.resolved(base)
    if isinstance(settings.storage, LocalStoreSettings) and not settings.storage.root.is_absolute():
        update["storage"] = settings.storage.model_copy(update={"root": base / settings.storage.root})
    return settings.model_copy(update=update)


def _with_base_dir(model: BaseModel, base: Path) -> BaseModel:
    """Every model source inside ``model`` made absolute against ``base``."""
    if isinstance(model, SourceRef):
        return model.with_base_dir(base)
    update = {name: _with_base_dir(value, base) for name in type(model).model_fields
              if isinstance(value := getattr(model, name), BaseModel)}
    return model.model_copy(update=update) if update else model


def _explain(exc: ValidationError) -> str:
    lines = ["invalid application settings (the `args:` of the app in serve_config.yaml):"]
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = {"extra_forbidden": "unknown key (check spelling; see docs/configuration.md)",
                   "missing": "required: add it"}.get(error["type"], error["msg"])
        lines.append(f"  - {where}: {message}")
    return "\n".join(lines)


class BatchSettings(Strict):
    """A stage's ``user_config``: live-tunable without restarting replicas."""
    max_batch_size: int = Field(8, ge=1, le=256, description="the most photos one batch runs")
    batch_wait_timeout_s: float = Field(
        0.02, ge=0, le=5, description="the most a batch waits for more requests, and only while another "
                                      "batch runs (`deployments/batching.py`)")
    torch_threads: int | None = Field(
        None, ge=1, le=256, description="PyTorch intra-op threads of each replica of this stage, for CPU "
                                        "inference (e.g. the laptop's cores); none: Ray's default, "
                                        "`OMP_NUM_THREADS` from the replica's `num_cpus` (at least 1)")


def batch_settings(user_config: dict[str, Any] | None) -> BatchSettings:
    try:
        return BatchSettings.model_validate(user_config or {})
    except ValidationError as exc:
        raise ConfigError(_explain(exc).replace("application settings (the `args:` of the app",
                                                "user_config (a deployment's `user_config:`")) from None
