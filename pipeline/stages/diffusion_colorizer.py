"""Text-guided colorization: Stable Diffusion (1.x/2.x or SDXL) + a colorization ControlNet.

By default this is the seed-003 service's published recipe (nick8592/text-guided-image-colorization
``gradio_ui.py`` and the Hugging Face Space built from it), step for step:

1. control image: the photo converted to grey by PIL (``convert("L").convert("RGB")``) and resized
   to ``resolution`` (512) square with PIL's bicubic filter; generation at that size.
2. BLIP captions that control image conditioned on "a photography of"; the caption loses the
   published list of unlikely words (``pipeline.stages.captioner``).
3. prompt = user prompt + ", " + caption: the caption is always used; without a user prompt the
   prompt starts with ", " as in the published app. (Without a captioner: the user prompt, else
   ``default_prompt``.)
4. the pipeline's own scheduler as loaded (SDXL base: Euler, "leading" spacing), guidance 5.0
   with the published negative prompt, the seed's CPU generator.
5. Lab merge (``merge``): "published" takes L from the 512 px control image and a/b from the
   generated image in PIL's 8-bit Lab, then resizes the result to the photo's size (PIL bicubic).
   "full_resolution" (the default, a deliberate departure) keeps the photo's own full-resolution
   L and only takes the generated chroma, upsampled bilinearly: the output keeps the input's
   sharpness, as every colorizer of this service does. See docs/fidelity.md.

The control image is stretched to a square (no padding): a batch needs one size and the chroma is
stretched back exactly; very wide or tall photos (> ~3:1) distort, as in the published app.
Prompts: whitespace (tabs/newlines) is collapsed; other control/format characters and more than
``MAX_PROMPT_CHARS`` characters are rejected (``InvalidPromptError``, a ValueError).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors import SafetensorError

from PIL import Image

from pipeline.color.lab import lightness, merge_lightness_ab
from pipeline.errors import ModelLoadError
from pipeline.inputs.prompts import validate_prompt, validate_seed
from pipeline.stages.captioner import Captioner, remove_unlikely_words

DEFAULT_PROMPT = "a photo with natural, realistic colors"  # only without a captioner
PUBLISHED_NEGATIVE_PROMPT = ("low quality, bad quality, low contrast, black and white, bw, monochrome, grainy, "
                             "blurry, historical, restored, desaturate")
MERGES = ("full_resolution", "published")
# name -> (diffusers scheduler class, config overrides). "default" keeps the folder's own scheduler
# (the published recipe); "euler_trailing" is what the SDXL-Lightning card recommends for its
# distilled UNets; "ddim" matches ColorizeNet's 20 DDIM steps.
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


def published_lab_merge(control: Image.Image, generated: Image.Image) -> Image.Image:
    """The published ``apply_color``: L of the control image, a and b of the generated one, in PIL's
    8-bit Lab, back to RGB."""
    lightness_channel = control.convert("LAB").getchannel("L")
    _, a, b = generated.convert("LAB").split()
    return Image.merge("LAB", (lightness_channel, a, b)).convert("RGB")


class DiffusionColorizer:
    def __init__(self, pipeline, *, steps: int = 8, guidance_scale: float = 5.0, resolution: int = 512,
                 merge: str = "full_resolution", default_prompt: str = DEFAULT_PROMPT,
                 negative_prompt: str = PUBLISHED_NEGATIVE_PROMPT, captioner: Captioner | None = None,
                 prompt_suffix: str = "", controlnet_scale: float = 1.0):
        multiple = pipeline.vae_scale_factor * 2 ** (len(pipeline.unet.config.block_out_channels) - 1)
        if resolution <= 0 or resolution % multiple:
            raise ValueError(f"resolution must be a positive multiple of {multiple} for this model, got {resolution}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if merge not in MERGES:
            raise ValueError(f"unknown merge {merge!r}; choose one of {', '.join(MERGES)}")
        self.pipeline = pipeline
        self.steps, self.guidance_scale, self.resolution, self.merge = steps, guidance_scale, resolution, merge
        self.default_prompt, self.negative_prompt = default_prompt, negative_prompt
        self.captioner, self.prompt_suffix, self.controlnet_scale = captioner, prompt_suffix, controlnet_scale

    @classmethod
    def from_pretrained(cls, directory: Path, *, controlnet: Path | None = None, unet: Path | None = None,
                        vae: Path | None = None, variant: str | None = None, scheduler: str = "default",
                        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                        **options) -> DiffusionColorizer:
        """Load a local diffusers pipeline folder (never the network).

        ``controlnet``: a diffusers ControlNet folder, needed unless ``directory`` is a ControlNet
        pipeline with a controlnet/ subfolder. ``unet``: a UNet folder or state-dict file replacing
        the base UNet (e.g. SDXL-Lightning). ``vae``: e.g. an fp16-safe SDXL VAE instead of the
        folder's own (in fp16, diffusers decodes with the stock SDXL VAE upcast to fp32).
        ``variant`` (e.g. "fp16") applies to the pipeline folder's files only. ``options``: the
        constructor's (steps, guidance_scale, resolution, merge, prompts, captioner, ...).
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
        return cls(pipeline.to(device), **options)

    def prompts_for(self, controls: list[Image.Image], prompts: list[str | None]) -> list[str]:
        """User prompt + ", " + the cleaned caption of the control image (the published prompt);
        without a captioner, the user prompt, else the default."""
        prompts = [validate_prompt(prompt) for prompt in prompts]
        if self.captioner is None:
            return [(prompt or self.default_prompt) + self.prompt_suffix for prompt in prompts]
        captions = self.captioner.caption_batch([np.asarray(control) for control in controls])
        return [f"{prompt or ''}, {remove_unlikely_words(caption)}{self.prompt_suffix}"
                for prompt, caption in zip(prompts, captions)]

    def control_image(self, image: np.ndarray) -> Image.Image:
        """PIL grey (ITU-R 601 luma) as RGB, resized to ``resolution`` square with PIL's bicubic filter."""
        grey = Image.fromarray(image).convert("L").convert("RGB")
        return grey.resize((self.resolution, self.resolution), Image.Resampling.BICUBIC)

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
        controls = [self.control_image(image) for image in images]
        prompts = self.prompts_for(controls, [option.get("prompt") for option in options])
        # CPU generators: the starting noise depends only on the seed, not on the device or batch.
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        generated = self.pipeline(
            prompt=prompts, negative_prompt=[self.negative_prompt] * len(images), image=controls,
            height=self.resolution, width=self.resolution, num_inference_steps=self.steps,
            guidance_scale=self.guidance_scale, controlnet_conditioning_scale=self.controlnet_scale,
            generator=generators, output_type="np").images
        if not np.isfinite(generated).all():
            raise RuntimeError("the diffusion pipeline produced non-finite pixels (fp16 overflow in the VAE? "
                               "use float32 or an fp16-safe VAE)")
        return [self._merge(image, control, rgb) for image, control, rgb in zip(images, controls, generated)]

    def _merge(self, image: np.ndarray, control: Image.Image, rgb: np.ndarray) -> np.ndarray:
        if self.merge == "published":
            # The pipeline's own PIL output: (x * 255).round() as uint8 (diffusers' numpy_to_pil).
            generated = Image.fromarray((rgb * 255).round().astype(np.uint8))
            merged = published_lab_merge(control, generated)
            return np.asarray(merged.resize((image.shape[1], image.shape[0]), Image.Resampling.BICUBIC))
        ab = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2Lab)[..., 1:]
        return merge_lightness_ab(lightness(image), ab)

    def colorize(self, image: np.ndarray, *, prompt: str | None = None, seed: int | None = None) -> np.ndarray:
        return self.run_batch([image], [{"prompt": prompt, "seed": seed}])[0]
