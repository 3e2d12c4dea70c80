"""Text-guided colorization: Stable Diffusion (1.x/2.x or SDXL) + a colorization ControlNet.

The ControlNet sees the grayscale image, the text encoder a prompt (the user's, a cleaned
BLIP caption, or a default). Only the chroma of the generated image is kept: its Lab ab is
upsampled to the original size and merged with the ORIGINAL full-resolution L, so geometry,
detail and tones are the photo's own even where diffusion hallucinates texture.

Choices:
* The control image is the grayscale photo *stretched* to ``resolution`` square (no padding):
  a batch needs one size, the chroma is stretched back exactly, and padding would spend
  pixels on borders the model tries to colorize. Very wide/tall photos (> ~3:1) distort.
* No style suffix is appended by default (``prompt_suffix=""``): colorization ControlNets are
  trained on plain captions of color photos; a deployment may still configure one.
* Prompts: whitespace (tabs/newlines) is collapsed; other control/format characters and more
  than ``MAX_PROMPT_CHARS`` characters are rejected (``InvalidPromptError``, a ValueError).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors import SafetensorError

from pipeline.stages.captioner import Captioner, clean_caption
from pipeline.errors import ModelLoadError
from pipeline.color.lab import lightness, merge_lightness_ab
from pipeline.inputs.prompts import validate_prompt, validate_seed

DEFAULT_PROMPT = "a photo with natural, realistic colors"
DEFAULT_NEGATIVE_PROMPT = "black and white, grayscale, monochrome, sepia, desaturated, low quality, blurry"
# name -> (diffusers scheduler class, config overrides). "euler_trailing" is what few-step
# distilled UNets (SDXL-Lightning) were trained for; "ddim" matches ColorizeNet's 20 DDIM steps.
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "euler_trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "default": ("", {}),  # keep the pipeline folder's scheduler as saved
}
_OPTION_KEYS = {"prompt", "seed"}


def pipeline_kind(directory: Path) -> str:
    """'sd' (SD 1.x/2.x) or 'sdxl', from the folder's model_index.json ``_class_name``."""
    index_file = Path(directory) / "model_index.json"
    try:
        class_name = json.loads(index_file.read_text())["_class_name"]
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"{index_file}: not a diffusers pipeline folder ({error})") from error
    if class_name.startswith("StableDiffusionXL"):
        return "sdxl"
    if class_name.startswith("StableDiffusion"):
        return "sd"
    raise ModelLoadError(f"{index_file}: unsupported pipeline {class_name!r} (need Stable Diffusion 1.x/2.x or SDXL)")


def _load_unet(unet: Path, base: Path, dtype: torch.dtype):
    """A diffusers UNet folder, or a bare state-dict file in diffusers layout (how SDXL-Lightning
    ships ``sdxl_lightning_8step_unet.safetensors``), built on the base pipeline's UNet config."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    if unet.is_dir():
        return UNet2DConditionModel.from_pretrained(unet, local_files_only=True, dtype=dtype)
    config = UNet2DConditionModel.load_config(base / "unet", local_files_only=True)
    model = UNet2DConditionModel.from_config(config).to(dtype)  # cast first: one copy of the weights in memory
    model.load_state_dict(load_file(unet), strict=True)
    return model


class DiffusionColorizer:
    def __init__(self, pipeline, *, steps: int, guidance_scale: float, resolution: int,
                 default_prompt: str = DEFAULT_PROMPT, negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
                 captioner: Captioner | None = None, prompt_suffix: str = "", controlnet_scale: float = 1.0):
        multiple = pipeline.vae_scale_factor * 2 ** (len(pipeline.unet.config.block_out_channels) - 1)
        if resolution <= 0 or resolution % multiple:
            raise ValueError(f"resolution must be a positive multiple of {multiple} for this model, got {resolution}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        self.pipeline = pipeline
        self.steps, self.guidance_scale, self.resolution = steps, guidance_scale, resolution
        self.default_prompt, self.negative_prompt = default_prompt, negative_prompt
        self.captioner, self.prompt_suffix, self.controlnet_scale = captioner, prompt_suffix, controlnet_scale

    @classmethod
    def from_pretrained(cls, directory: Path, *, controlnet: Path | None = None, unet: Path | None = None,
                        vae: Path | None = None, variant: str | None = None, scheduler: str = "euler_trailing",
                        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                        steps: int, guidance_scale: float, resolution: int,
                        default_prompt: str = DEFAULT_PROMPT, negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
                        captioner: Captioner | None = None, prompt_suffix: str = "",
                        controlnet_scale: float = 1.0) -> DiffusionColorizer:
        """Load a local diffusers pipeline folder (never the network).

        ``controlnet``: a diffusers ControlNet folder, needed unless ``directory`` is a ControlNet
        pipeline with a controlnet/ subfolder. ``unet``: a UNet folder or state-dict file replacing
        the base UNet (e.g. SDXL-Lightning). ``vae``: e.g. an fp16-safe SDXL VAE. ``variant``
        (e.g. "fp16") applies to the pipeline folder's files only.
        """
        import diffusers

        directory = Path(directory)
        kind = pipeline_kind(directory)
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        index = json.loads((directory / "model_index.json").read_text())
        if controlnet is None and "controlnet" not in index:
            raise ModelLoadError(f"{directory} holds a {index['_class_name']} without a ControlNet: "
                                 "pass controlnet=<diffusers ControlNet folder>")
        try:
            parts = {}
            if controlnet is not None:
                parts["controlnet"] = diffusers.ControlNetModel.from_pretrained(
                    Path(controlnet), local_files_only=True, dtype=dtype)
            if unet is not None:
                parts["unet"] = _load_unet(Path(unet), directory, dtype)
            if vae is not None:
                parts["vae"] = diffusers.AutoencoderKL.from_pretrained(Path(vae), local_files_only=True, dtype=dtype)
            if kind == "sdxl":
                pipeline_class, extra = diffusers.StableDiffusionXLControlNetPipeline, {"add_watermarker": False}
            else:  # a colorizer's output needs no NSFW filter; it would black out false positives
                pipeline_class = diffusers.StableDiffusionControlNetPipeline
                extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
            pipeline = pipeline_class.from_pretrained(directory, local_files_only=True, dtype=dtype,
                                                      variant=variant, **parts, **extra)
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as error:
            raise ModelLoadError(f"cannot load the diffusion colorizer from {directory}: {error}") from error
        class_name, overrides = SCHEDULERS[scheduler]
        if class_name:
            pipeline.scheduler = getattr(diffusers, class_name).from_config(pipeline.scheduler.config, **overrides)
        pipeline.set_progress_bar_config(disable=True)
        return cls(pipeline.to(device), steps=steps, guidance_scale=guidance_scale, resolution=resolution,
                   default_prompt=default_prompt, negative_prompt=negative_prompt, captioner=captioner,
                   prompt_suffix=prompt_suffix, controlnet_scale=controlnet_scale)

    def prompts_for(self, images: list[np.ndarray], prompts: list[str | None]) -> list[str]:
        """User prompt, else the cleaned caption, else the default (captions only where needed)."""
        prompts = [validate_prompt(prompt) for prompt in prompts]
        missing = [i for i, prompt in enumerate(prompts) if prompt is None]
        if missing and self.captioner is not None:
            captions = self.captioner.caption_batch([images[i] for i in missing])
            for i, caption in zip(missing, captions):
                prompts[i] = clean_caption(caption) or None
        return [(prompt or self.default_prompt) + self.prompt_suffix for prompt in prompts]

    def control_image(self, image: np.ndarray) -> np.ndarray:
        """Grayscale, stretched to ``resolution`` square, 3 channels in [0, 1] (H, W, 3)."""
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        interpolation = cv2.INTER_AREA if min(gray.shape) >= self.resolution else cv2.INTER_CUBIC
        gray = cv2.resize(gray, (self.resolution, self.resolution), interpolation=interpolation)
        return np.repeat(gray[..., None].astype(np.float32) / 255.0, 3, axis=2)

    def run_batch(self, images: list[np.ndarray], options: list[dict] | None = None) -> list[np.ndarray]:
        """uint8 RGB (H, W, 3) images of any sizes -> same sizes; one pipeline call per batch."""
        if not images:
            return []
        options = options if options is not None else [{}] * len(images)
        if len(options) != len(images):
            raise ValueError(f"{len(images)} images but {len(options)} option sets")
        for option in options:
            unknown = set(option) - _OPTION_KEYS
            if unknown:
                raise ValueError(f"unknown colorize options: {', '.join(sorted(unknown))}")
        for image in images:
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"expected uint8 RGB (H, W, 3), got {image.dtype} {image.shape}")
        seeds = [validate_seed(option.get("seed")) for option in options]
        prompts = self.prompts_for(images, [option.get("prompt") for option in options])
        # CPU generators: the starting noise depends only on the seed, not on the device or batch.
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        control = torch.from_numpy(np.stack([self.control_image(image) for image in images])).permute(0, 3, 1, 2)
        generated = self.pipeline(
            prompt=prompts, negative_prompt=[self.negative_prompt] * len(images), image=control,
            height=self.resolution, width=self.resolution, num_inference_steps=self.steps,
            guidance_scale=self.guidance_scale, controlnet_conditioning_scale=self.controlnet_scale,
            generator=generators, output_type="np").images
        if not np.isfinite(generated).all():
            raise RuntimeError("the diffusion pipeline produced non-finite pixels (fp16 overflow in the VAE? "
                               "use float32 or an fp16-safe VAE)")
        results = []
        for image, rgb in zip(images, generated):
            ab = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2Lab)[..., 1:]
            results.append(merge_lightness_ab(lightness(image), ab))
        return results

    def colorize(self, image: np.ndarray, *, prompt: str | None = None, seed: int | None = None) -> np.ndarray:
        return self.run_batch([image], [{"prompt": prompt, "seed": seed}])[0]
