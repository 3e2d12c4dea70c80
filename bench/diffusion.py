"""The `large` colorizer's cost at full size: SDXL (+Lightning-style 8 steps) and SD 2.1 ControlNet
pipelines built from the published architectures' configs with RANDOM weights (none can be
downloaded here), run through ``DiffusionColorizer`` exactly as the service does.

    python -m bench.diffusion --batches 1 2 4          # needs a CUDA GPU

Latency and memory are those of the real networks; the colors are noise.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.models import photo_batch
from pipeline.stages.diffusion_colorizer import DiffusionColorizer
from tools.tiny_diffusion import write_clip_tokenizer_files


def _tokenizer(directory: Path):
    from transformers import CLIPTokenizer

    write_clip_tokenizer_files(directory)  # ids fit CLIP's 49408-token embedding; text cost is what matters
    return CLIPTokenizer.from_pretrained(directory, local_files_only=True, model_max_length=77)


def _text_encoder(hidden: int, layers: int, heads: int, act: str, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=hidden * 4,
                            num_hidden_layers=layers, num_attention_heads=heads, projection_dim=hidden,
                            max_position_embeddings=77, hidden_act=act)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _vae(scaling_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                         scaling_factor=scaling_factor)


def build_sdxl(tokenizer_dir: Path, spacing: str = "trailing"):
    """stabilityai/stable-diffusion-xl-base-1.0 shapes + an SDXL ControlNet (from_unet)."""
    from diffusers import (ControlNetModel, EulerDiscreteScheduler, StableDiffusionXLControlNetPipeline,
                           UNet2DConditionModel)

    unet = UNet2DConditionModel(
        sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816)
    tokenizer = _tokenizer(tokenizer_dir)
    return StableDiffusionXLControlNetPipeline(
        vae=_vae(0.13025), text_encoder=_text_encoder(768, 12, 12, "quick_gelu", False),
        text_encoder_2=_text_encoder(1280, 32, 20, "gelu", True), tokenizer=tokenizer, tokenizer_2=tokenizer,
        unet=unet, controlnet=ControlNetModel.from_unet(unet),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         steps_offset=1, timestep_spacing=spacing))


def build_sd21(tokenizer_dir: Path):
    """stabilityai/stable-diffusion-2-1-base shapes + a ControlNet (ColorizeNet's layout)."""
    from diffusers import ControlNetModel, DDIMScheduler, StableDiffusionControlNetPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True)
    return StableDiffusionControlNetPipeline(
        vae=_vae(0.18215), text_encoder=_text_encoder(1024, 23, 16, "gelu", False), tokenizer=_tokenizer(tokenizer_dir),
        unet=unet, controlnet=ControlNetModel.from_unet(unet),
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                steps_offset=1, clip_sample=False, set_alpha_to_one=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


SETUPS = {
    # The published recipe (serve_config.yaml's default): the base's leading spacing, CFG 5, 512 px.
    "sdxl-published-recipe": (functools.partial(build_sdxl, spacing="leading"),
                              {"steps": 8, "guidance_scale": 5.0, "resolution": 512}),
    # The SDXL-Lightning card's settings.
    "sdxl-lightning-8step": (build_sdxl, {"steps": 8, "guidance_scale": 0.0, "resolution": 1024}),
    "sd21-colorizenet-20step": (build_sd21, {"steps": 20, "guidance_scale": 9.0, "resolution": 512}),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", nargs="+", default=list(SETUPS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--size", type=int, default=1024, help="input photo side (px)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench.diffusion needs a CUDA GPU (full-size SDXL on 2 CPU cores takes minutes per image)")
        return 1
    print(f"# {torch.cuda.get_device_name()}, float16, {args.size}px inputs, random weights")
    print(f"{'setup':26} {'batch':>5} {'s/batch':>8} {'s/image':>8} {'vs b1':>6} {'peak GiB':>9}")
    for name in args.setups:
        build, options = SETUPS[name]
        with tempfile.TemporaryDirectory() as scratch, torch.device("cuda"):
            pipeline = build(Path(scratch)).to(dtype=torch.float16)
        # Networks are initialised on the GPU (fast); the scheduler's tables must live on the CPU.
        pipeline.scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config)
        pipeline.set_progress_bar_config(disable=True)
        colorizer = DiffusionColorizer(pipeline, **options)
        base = None
        for batch in args.batches:
            images = photo_batch(batch, args.size)
            requests = [{"prompt": "a street with people and cars", "seed": i} for i in range(batch)]
            colorizer.run_batch(images, requests)  # warm-up
            torch.cuda.reset_peak_memory_stats()
            samples = []
            for _ in range(args.repeats):
                torch.cuda.synchronize()
                started = time.perf_counter()
                outputs = colorizer.run_batch(images, requests)
                torch.cuda.synchronize()
                samples.append(time.perf_counter() - started)
            assert all(o.shape == i.shape and o.dtype == np.uint8 for o, i in zip(outputs, images))
            seconds = statistics.median(samples)
            base = base or seconds
            print(f"{name:26} {batch:>5} {seconds:>8.3f} {seconds / batch:>8.3f} {base * batch / seconds:>6.2f} "
                  f"{torch.cuda.max_memory_allocated() / 2**30:>9.1f}", flush=True)
        del colorizer, pipeline
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
