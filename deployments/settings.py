"""The application's own settings: the ``args`` of each app in serve_config.yaml.

Validated strictly (unknown keys are errors; Serve's own schema silently ignores them)
in the process that reads the config, before any replica starts.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from auth import AuthSettings
from storage import LocalStoreSettings, StorageSettings

from .model_settings import ModelRuntime, ModelSettings, ModelStoreSettings
from .model_settings import Strict as _Strict

COLORIZER_NAMES = ("large", "tiny")


class ConfigError(ValueError):
    """The configuration is wrong; the message says where and how to fix it."""


class ScratchRepairSettings(_Strict):
    inpainter: ModelSettings | None = None  # a learned inpainter (architecture lama); None: OpenCV Telea


class FaceRemasterSettings(_Strict):
    restorer: ModelSettings | None = None  # None: the stage reports itself not loaded
    max_faces: int = Field(8, ge=1, le=64)


class LimitSettings(_Strict):
    max_upload_mb: float = Field(25.0, gt=0, le=200)
    max_pixels: int = Field(50_000_000, ge=1)
    request_timeout_s: float = Field(120.0, gt=0)


class UrlFetchSettings(_Strict):
    timeout_s: float = Field(10.0, gt=0, le=120)
    max_redirects: int = Field(5, ge=0, le=20)
    allow_hosts: tuple[str, ...] = ()  # hosts exempt from the private-address check (tests, intranets)


class AppSettings(_Strict):
    public_base_url: str | None = None  # e.g. https://colorize.example.com; default: from the request
    model_cache_dir: Path = Path("data/model-cache")  # downloaded weights, per node
    model_store: ModelStoreSettings | None = None      # for s3:// model sources
    storage: StorageSettings = Field(default_factory=LocalStoreSettings)
    colorizers: dict[Literal["large", "tiny"], ModelSettings]
    scratch_repair: ScratchRepairSettings = ScratchRepairSettings()
    face_remaster: FaceRemasterSettings = FaceRemasterSettings()
    auth: AuthSettings | None = None  # None: open access, nothing charged (say so loudly in production)
    limits: LimitSettings = LimitSettings()
    url_fetch: UrlFetchSettings = UrlFetchSettings()

    @field_validator("public_base_url")
    @classmethod
    def _absolute_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _both_colorizers(self) -> AppSettings:
        missing = [name for name in COLORIZER_NAMES if name not in self.colorizers]
        if missing:
            raise ValueError(f"colorizers: add {', '.join(missing)} (both 'large' and 'tiny' are served)")
        return self

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
    def fix(model: ModelSettings) -> ModelSettings:
        return model.with_base_dir(base)

    update: dict[str, Any] = {"colorizers": {k: fix(v) for k, v in settings.colorizers.items()},
                              "model_cache_dir": base / settings.model_cache_dir}
    if settings.scratch_repair.inpainter is not None:
        update["scratch_repair"] = settings.scratch_repair.model_copy(
            update={"inpainter": fix(settings.scratch_repair.inpainter)})
    if settings.face_remaster.restorer is not None:
        update["face_remaster"] = settings.face_remaster.model_copy(
            update={"restorer": fix(settings.face_remaster.restorer)})
    if settings.auth is not None:
        update["auth"] = settings.auth.resolved(base)
    if isinstance(settings.storage, LocalStoreSettings) and not settings.storage.root.is_absolute():
        update["storage"] = settings.storage.model_copy(update={"root": base / settings.storage.root})
    return settings.model_copy(update=update)


def _explain(exc: ValidationError) -> str:
    lines = ["invalid application settings (the `args:` of the app in serve_config.yaml):"]
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = "unknown key (check spelling; see README 'Configuration')" \
            if error["type"] == "extra_forbidden" else error["msg"]
        lines.append(f"  - {where}: {message}")
    return "\n".join(lines)


class BatchSettings(_Strict):
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
