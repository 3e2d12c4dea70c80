"""Where each stage's weights come from and how they load (typed, validated at start).

Loading happens in the replica (``load_*`` import torch lazily), so the driver and the
ingress never pay for torch, and each node fetches weights into its own cache.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.models import ARCHITECTURE_NAMES

DIFFUSION = "controlnet-diffusion"  # text-guided: a diffusers ControlNet pipeline, not a state-dict model


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelStoreSettings(Strict):
    """The S3/MinIO bucket `s3://` model sources are read from (credentials from env vars)."""
    endpoint: str
    secure: bool = True
    region: str = "us-east-1"
    access_key_env: str = "MODEL_STORE_ACCESS_KEY"
    secret_key_env: str = "MODEL_STORE_SECRET_KEY"


class ModelRuntime(Strict):
    """Where a replica puts downloaded weights and which model store it reads."""
    cache_dir: Path
    store: ModelStoreSettings | None = None


class SourceRef(Strict):
    # A local directory, hf://org/name[@revision], s3://bucket/prefix, or https://.../file (pinned by sha256)
    source: str
    files: tuple[str, ...] | None = None  # only these files/patterns of an hf:// or s3:// source
    sha256: str | None = None             # pin for https:// sources (or a #sha256= fragment)
    subpath: str | None = None            # a folder or file inside the source (e.g. checkpoint-30000/controlnet)

    def with_base_dir(self, base: Path):
        if "://" in self.source or Path(self.source).is_absolute():
            return self
        return self.model_copy(update={"source": str(base / self.source)})

    def resolve(self, runtime: ModelRuntime) -> Path:
        from pipeline.weights.source import S3Settings, resolve_model_source

        store = S3Settings(**runtime.store.model_dump()) if runtime.store else None
        directory = resolve_model_source(self.source, cache_dir=runtime.cache_dir, files=self.files,
                                         sha256=self.sha256, s3=store)
        return directory / self.subpath if self.subpath else directory


class DiffusionSettings(Strict):
    """Options of the text-guided colorizer (see pipeline/stages/diffusion_colorizer.py).

    The defaults are the seed-003 service's published recipe (steps 8, the folder's own scheduler,
    guidance 5.0 with the published negative prompt, 512 px), except ``merge`` (docs/fidelity.md).
    The SDXL-Lightning card's settings instead: scheduler euler_trailing, guidance_scale 0 (no
    negative prompt, half the UNet work), resolution 1024.
    """
    controlnet: SourceRef | None = None   # a diffusers ControlNet folder, unless the pipeline has one
    unet: SourceRef | None = None         # UNet folder or state-dict file replacing the base's (SDXL-Lightning)
    vae: SourceRef | None = None          # None: the base folder's VAE (published); or e.g. an fp16-safe SDXL VAE
    captioner: SourceRef | None = None    # BLIP captioning model: its cleaned caption joins every prompt
    variant: str | None = None            # e.g. "fp16" files of the base pipeline
    scheduler: Literal["default", "euler_trailing", "unipc", "ddim", "dpmpp_2m"] = "default"
    steps: int = Field(8, ge=1, le=100)
    guidance_scale: float = Field(5.0, ge=0, le=30)
    resolution: int = Field(512, ge=64, le=2048)
    # "full_resolution": the photo's own L + the generated chroma; "published": L of the 512 px control image
    merge: Literal["full_resolution", "published"] = "full_resolution"
    controlnet_scale: float = Field(1.0, ge=0, le=2)
    default_prompt: str | None = None     # None: the colorizer's neutral default (used without a captioner)
    negative_prompt: str | None = None    # None: the published negative prompt
    prompt_suffix: str = ""

    def with_base_dir(self, base: Path):
        update = {name: ref.with_base_dir(base) for name in ("controlnet", "unet", "vae", "captioner")
                  if (ref := getattr(self, name)) is not None}
        return self.model_copy(update=update)


class ModelSettings(SourceRef):
    architecture: str
    weights: str | None = None                  # file in the source; default: model.safetensors / pytorch_model.bin
    config: dict[str, Any] | str | None = None  # constructor kwargs, a published config name, or config.json
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: fp16 on GPU, fp32 on CPU
    diffusion: DiffusionSettings | None = None  # required for architecture controlnet-diffusion
    # Ray shares a GPU between fractional replicas but does not isolate its memory: each replica
    # caps its own PyTorch allocator (e.g. 0.45 next to another replica on the same GPU).
    max_gpu_memory_fraction: float | None = Field(None, gt=0, le=1)

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, value: str) -> str:
        names = (*ARCHITECTURE_NAMES, DIFFUSION)
        if value not in names:
            raise ValueError(f"unknown architecture {value!r}; choose one of {', '.join(names)}")
        return value

    @model_validator(mode="after")
    def _diffusion_options(self) -> ModelSettings:
        if (self.architecture == DIFFUSION) != (self.diffusion is not None):
            raise ValueError(f"`diffusion:` options go with (and only with) architecture {DIFFUSION}")
        return self

    def with_base_dir(self, base: Path):
        model = super().with_base_dir(base)
        if model.diffusion is not None:
            model = model.model_copy(update={"diffusion": model.diffusion.with_base_dir(base)})
        return model

    def describe(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "source": self.source}

    def _device_dtype(self):
        from pipeline.device import resolve_device, resolve_dtype

        device = resolve_device(self.device)
        if device.type == "cuda" and self.max_gpu_memory_fraction is not None:
            import torch
            torch.cuda.set_per_process_memory_fraction(self.max_gpu_memory_fraction, device)
        return device, resolve_dtype(self.dtype, device)

    def load_module(self, runtime: ModelRuntime):
        """A state-dict architecture, loaded strictly."""
        from pipeline.weights.loading import ModelSpec, load_model

        device, dtype = self._device_dtype()
        spec = ModelSpec(self.architecture, self.resolve(runtime), self.weights, self.config)
        return load_model(spec, device=device, dtype=dtype)

    def load_colorizer(self, runtime: ModelRuntime):
        """Anything with ``run_batch(images, options)``: feed-forward or text-guided."""
        if self.architecture != DIFFUSION:
            from pipeline.stages.colorizer import Colorizer

            return Colorizer(self.load_module(runtime))
        from pipeline.stages.captioner import Captioner
        from pipeline.stages.diffusion_colorizer import DiffusionColorizer

        device, dtype = self._device_dtype()
        options = self.diffusion
        parts = {name: ref.resolve(runtime) for name in ("controlnet", "unet", "vae")
                 if (ref := getattr(options, name)) is not None}
        captioner = Captioner.from_pretrained(options.captioner.resolve(runtime), device=device, dtype=dtype) \
            if options.captioner else None
        texts = {key: value for key in ("default_prompt", "negative_prompt")
                 if (value := getattr(options, key)) is not None}
        return DiffusionColorizer.from_pretrained(
            self.resolve(runtime), **parts, variant=options.variant, scheduler=options.scheduler,
            device=device, dtype=dtype, steps=options.steps, guidance_scale=options.guidance_scale,
            resolution=options.resolution, merge=options.merge, captioner=captioner,
            prompt_suffix=options.prompt_suffix, controlnet_scale=options.controlnet_scale, **texts)
