"""The application's own settings: the ``args`` of each app in serve_config.yaml.

Validated strictly (unknown keys are errors; Serve's own schema silently ignores them)
in the process that reads the config, before any replica starts.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, create_model, field_validator

from auth import AuthSettings
from pipeline.weights.settings import ModelRuntime, ModelStoreSettings, SourceRef, Strict
from storage import LocalStoreSettings, StorageSettings

from .stages import STAGES, StageSpec


class ConfigError(ValueError):
    """The configuration is wrong; the message says where and how to fix it."""


class LimitSettings(Strict):
    max_upload_mb: float = Field(25.0, gt=0, le=200, description="request body / fetched image limit (413 above)")
    max_pixels: int = Field(50_000_000, ge=1, description="decoded pixel limit (400 above)")
    request_timeout_s: float = Field(120.0, gt=0, description="graph time limit per job")


class UrlFetchSettings(Strict):
    timeout_s: float = Field(10.0, gt=0, le=120, description="whole-fetch time limit for image URLs")
    max_redirects: int = Field(5, ge=0, le=20, description="redirects followed (each one re-checked)")
    allow_hosts: tuple[str, ...] = Field(
        (), description="hosts exempt from the private-address check (tests, intranets)")


def _stage_sections() -> dict[str, Any]:
    """One settings field per stage section of the table: a stage's own model, or a group of
    them (``colorizers: {large: ..., tiny: ...}``, every member required)."""
    fields: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for spec in STAGES:
        head, *member = spec.section
        if member:
            groups.setdefault(head, {})[member[0]] = (spec.settings, ...)
        else:
            fields[head] = (spec.settings, Field(default_factory=spec.settings))
    for head, members in groups.items():
        group = create_model(f"{head.title()}Section", __base__=Strict, **members)
        fields[head] = (group, ...)
    return fields


_StageSections = create_model("StageSections", __base__=Strict, **_stage_sections())


class AppSettings(_StageSections):
    """The app's ``args`` in serve_config.yaml; the stage sections come from ``service.stages``."""
    public_base_url: str | None = Field(
        None, description="base of links in responses, e.g. `https://colorize.example.com`; default: from the request")
    model_cache_dir: Path = Field(Path("data/model-cache"), description="where each node keeps downloaded weights")
    model_store: ModelStoreSettings | None = Field(None, description="the bucket `s3://` model sources read")
    storage: StorageSettings = Field(default_factory=LocalStoreSettings, description="`local` or `minio` (below)")
    auth: AuthSettings | None = Field(None, description="keys, credits, App Check; none: open, nothing charged")
    limits: LimitSettings = LimitSettings()
    url_fetch: UrlFetchSettings = UrlFetchSettings()

    @field_validator("public_base_url")
    @classmethod
    def _absolute_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

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
    try:
        settings = AppSettings.model_validate(args or {})
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
    max_batch_size: int = Field(8, ge=1, le=256)
    # The most a batch waits for more requests, and only while another batch runs (batching.py).
    batch_wait_timeout_s: float = Field(0.02, ge=0, le=5)


def batch_settings(user_config: dict[str, Any] | None) -> BatchSettings:
    try:
        return BatchSettings.model_validate(user_config or {})
    except ValidationError as exc:
        raise ConfigError(_explain(exc).replace("application settings (the `args:` of the app",
                                                "user_config (a deployment's `user_config:`")) from None
