"""The application's own settings: the ``args`` of each app in serve_config.yaml.

Validated strictly (unknown keys are errors; Serve's own schema silently ignores them)
in the process that reads the config, before any replica starts.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.models import ARCHITECTURE_NAMES
from storage import LocalStoreSettings, StorageSettings

COLORIZER_NAMES = ("large", "tiny")


class ConfigError(ValueError):
    """The configuration is wrong; the message says where and how to fix it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelStoreSettings(_Strict):
    """The S3/MinIO bucket `s3://` model sources are read from (credentials from env vars)."""
    endpoint: str
    secure: bool = True
    region: str = "us-east-1"
    access_key_env: str = "MODEL_STORE_ACCESS_KEY"
    secret_key_env: str = "MODEL_STORE_SECRET_KEY"


class ModelRuntime(_Strict):
    """Where a replica puts downloaded weights and which model store it reads."""
    cache_dir: Path
    store: ModelStoreSettings | None = None


class ModelSettings(_Strict):
    architecture: str
    # A local directory, hf://org/name[@revision], s3://bucket/prefix, or https://.../file (pinned by sha256)
    source: str
    files: tuple[str, ...] | None = None        # only these files/patterns of an hf:// or s3:// source
    sha256: str | None = None                   # pin for https:// sources (or a #sha256= fragment)
    weights: str | None = None                  # file in the source; default: model.safetensors / pytorch_model.bin
    config: dict[str, Any] | str | None = None  # constructor kwargs, a published config name, or config.json
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: fp16 on GPU, fp32 on CPU

    def describe(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "source": self.source}

    def load(self, runtime: ModelRuntime):
        """Fetch (if remote) and load the model, in the replica: torch is imported only here."""
        from pipeline.device import resolve_device, resolve_dtype
        from pipeline.model_source import S3Settings, resolve_model_source
        from pipeline.models.loading import ModelSpec, load_model

        store = S3Settings(**runtime.store.model_dump()) if runtime.store else None
        directory = resolve_model_source(self.source, cache_dir=runtime.cache_dir, files=self.files,
                                         sha256=self.sha256, s3=store)
        device = resolve_device(self.device)
        spec = ModelSpec(self.architecture, directory, self.weights, self.config)
        return load_model(spec, device=device, dtype=resolve_dtype(self.dtype, device))

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, value: str) -> str:
        if value not in ARCHITECTURE_NAMES:
            raise ValueError(f"unknown architecture {value!r}; choose one of {', '.join(ARCHITECTURE_NAMES)}")
        return value


class ScratchRepairSettings(_Strict):
    enabled: bool = True


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
        if "://" in model.source or Path(model.source).is_absolute():
            return model
        return model.model_copy(update={"source": str(base / model.source)})

    update: dict[str, Any] = {"colorizers": {k: fix(v) for k, v in settings.colorizers.items()},
                              "model_cache_dir": base / settings.model_cache_dir}
    if settings.face_remaster.restorer is not None:
        update["face_remaster"] = settings.face_remaster.model_copy(
            update={"restorer": fix(settings.face_remaster.restorer)})
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
    batch_wait_timeout_s: float = Field(0.02, ge=0, le=5)


def batch_settings(user_config: dict[str, Any] | None) -> BatchSettings:
    try:
        return BatchSettings.model_validate(user_config or {})
    except ValidationError as exc:
        raise ConfigError(_explain(exc).replace("application settings (the `args:` of the app",
                                                "user_config (a deployment's `user_config:`")) from None
