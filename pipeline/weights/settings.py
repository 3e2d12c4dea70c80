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
    endpoint: str = Field(description="`host:port` of the MinIO/S3 server holding the model bucket")
    secure: bool = Field(True, description="https (`false`: plain http)")
    region: str = Field("us-east-1", description="the bucket's region")
    access_key_env: str = Field("MODEL_STORE_ACCESS_KEY", description="name of the env var holding the access key")
    secret_key_env: str = Field("MODEL_STORE_SECRET_KEY", description="name of the env var holding the secret key")


class ModelRuntime(Strict):
    """Where a replica puts downloaded weights and which model store it reads."""
    cache_dir: Path
    store: ModelStoreSettings | None = None


class SourceRef(Strict):
    source: str = Field(description="a local directory, `hf://org/name[@revision]`, `s3://bucket/prefix`, "
                                    "or `https://.../file` (pinned by `sha256`)")
    files: tuple[str, ...] | None = Field(
        None, description="only these files or patterns of an `hf://` or `s3://` source; none: all")
    sha256: str | None = Field(None, description="pin for `https://` sources (or a `#sha256=` fragment)")
    subpath: str | None = Field(
        None, description="a folder or file inside the source (e.g. `checkpoint-30000/controlnet`)")

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
    controlnet: SourceRef | None = Field(
        None, description="a diffusers ControlNet folder; none: the base pipeline's own")
    unet: SourceRef | None = Field(
        None, description="a UNet folder or state-dict file replacing the base's (e.g. SDXL-Lightning)")
    vae: SourceRef | None = Field(
        None, description="a VAE replacing the base's (e.g. the fp16-safe SDXL VAE); none: the base's own, "
                          "as the published recipe (diffusers decodes with it upcast to fp32 in fp16)")
    captioner: SourceRef | None = Field(
        None, description="a BLIP captioning model, conditioned on \"a photography of\": its cleaned caption "
                          "follows the user's prompt in every prompt")
    variant: str | None = Field(None, description="weight variant of the base pipeline's files (e.g. `fp16`)")
    scheduler: Literal["default", "euler_trailing", "unipc", "ddim", "dpmpp_2m"] = Field(
        "default", description="the sampler (`default`: the base pipeline's own, as published; "
                               "`euler_trailing`: the SDXL-Lightning card's)")
    steps: int = Field(8, ge=1, le=100, description="denoising steps per image")
    guidance_scale: float = Field(5.0, ge=0, le=30,
                                  description="classifier-free guidance scale (1 or less: no guidance, "
                                              "the negative prompt unused)")
    resolution: int = Field(512, ge=64, le=2048, description="side of the square the model colorizes at (px)")
    merge: Literal["full_resolution", "published"] = Field(
        "full_resolution", description="`full_resolution`: the photo's own full-size L with the generated "
                                       "chroma; `published`: L of the control image, resized back (docs/fidelity.md)")
    controlnet_scale: float = Field(1.0, ge=0, le=2, description="weight of the ControlNet's conditioning")
    default_prompt: str | None = Field(
        None, description="prompt for requests without one when no captioner is configured; "
                          "none: `DEFAULT_PROMPT` of `pipeline/stages/diffusion_colorizer.py`")
    negative_prompt: str | None = Field(
        None, description="what sampling steers away from; none: `PUBLISHED_NEGATIVE_PROMPT` of the same file")
    prompt_suffix: str = Field("", description="text appended to every prompt")

    def with_base_dir(self, base: Path):
        update = {name: ref.with_base_dir(base) for name in ("controlnet", "unet", "vae", "captioner")
                  if (ref := getattr(self, name)) is not None}
        return self.model_copy(update=update)


class ModelSettings(SourceRef):
    """A model entry: where a stage's weights come from and how they load."""
    architecture: str = Field(description="one of " + ", ".join(f"`{n}`" for n in (*ARCHITECTURE_NAMES, DIFFUSION))
                                          + f" (`{DIFFUSION}`: text-guided)")
    weights: str | None = Field(None, description="the weights file in the source; none: the first of "
                                                  "`model.safetensors`, `pytorch_model.bin`, `model.pth`")
    config: dict[str, Any] | str | None = Field(
        None, description="constructor arguments, a published config name, or none: the source's `config.json`")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="`auto`: CUDA when visible")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="`auto`: float16 on GPU, float32 on CPU")
    diffusion: DiffusionSettings | None = Field(
        None, description=f"options of the text-guided pipeline; required for (and only for) `{DIFFUSION}`")
    # Ray shares a GPU between fractional replicas but does not isolate its memory.
    max_gpu_memory_fraction: float | None = Field(
        None, gt=0, le=1, description="cap on this replica's share of GPU memory (PyTorch's allocator), "
                                      "e.g. 0.45 next to another replica on the same GPU; none: no cap")

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
