"""The text-guided colorizer in reference mode gives exactly what the published recipe gives.

The published recipe is the seed-003 service's: nick8592/text-guided-image-colorization
``gradio_ui.py`` (``process_image``) and the Hugging Face Space built from it. The reference below
is written here, step by step, from that published code, and runs on its own copies of the tiny
models (diffusers and transformers called directly, as the published script calls them):

1. ``image.convert("L").convert("RGB").resize((512, 512))`` (PIL; the default filter is bicubic)
2. BLIP captions that control image, conditioned on the text "a photography of", with
   ``generate``'s defaults, decoded with the prompt words kept
3. the caption loses every phrase of a fixed list (plain substring deletion, in list order)
4. prompt = user prompt + ", " + caption (an empty user prompt leaves the leading ", ")
5. the SDXL ControlNet pipeline as loaded (its scheduler, guidance 5.0), the negative prompt,
   8 steps, ``torch.manual_seed(seed)`` as generator, size taken from the control image
6. PIL Lab merge: L of the control image, a and b of the generated image, back to RGB, then
   resized to the original size (PIL default filter)
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.weights.settings import ModelRuntime, ModelSettings
from tools.tiny_diffusion import build_tiny_blip, build_tiny_sdxl_controlnet
from tests.helpers import photo

PUBLISHED_NEGATIVE_PROMPT = ("low quality, bad quality, low contrast, black and white, bw, monochrome, grainy, "
                             "blurry, historical, restored, desaturate")
# ``remove_unlikely_words``'s own phrases, in its order (after the generated year phrases).
PUBLISHED_PHRASES = [
    "black and white,", "black and white", "black & white,", "black & white", "circa",
    "balck and white,", "monochrome,", "black-and-white,", "black-and-white photography,",
    "black - and - white photography,", "monochrome bw,", "black white,", "black an white,",
    "grainy footage,", "grainy footage", "grainy photo,", "grainy photo", "b&w photo",
    "back and white", "back and white,", "monochrome contrast", "monochrome", "grainy",
    "grainy photograph,", "grainy photograph", "low contrast,", "low contrast", "b & w",
    "grainy black-and-white photo,", "bw", "bw,", "grainy black-and-white photo",
    "b & w,", "b&w,", "b&w!,", "b&w", "black - and - white,", "bw photo,", "grainy  photo,",
    "black-and-white photo,", "black-and-white photo", "black - and - white photography",
    "b&w photo,", "monochromatic photo,", "grainy monochrome photo,", "monochromatic",
    "blurry photo,", "blurry,", "blurry photography,", "monochromatic photo",
    "black - and - white photograph,", "black - and - white photograph", "black on white,",
    "black on white", "black-and-white", "historical image,", "historical picture,",
    "historical photo,", "historical photograph,", "archival photo,", "taken in the early",
    "taken in the late", "taken in the", "historic photograph,", "restored,", "restored",
    "historical photo", "historical setting,",
    "historic photo,", "historic", "desaturated!!,", "desaturated!,", "desaturated,", "desaturated",
    "taken in", "shot on leica", "shot on leica sl2", "sl2",
    "taken with a leica camera", "taken with a leica camera", "leica sl2", "leica", "setting",
    "overcast day", "overcast weather", "slight overcast", "overcast",
    "picture taken in", "photo taken in",
    ", photo", ",  photo", ",   photo", ",    photo", ", photograph",
    ",,", ",,,", ",,,,", " ,", "  ,", "   ,", "    ,",
]


def published_remove_unlikely_words(prompt: str) -> str:
    decades = [f"{year}s" for year in range(1900, 2000)]
    words = [f"{year}s" for year in range(1900, 2000)]
    words += [f"{year}" for year in range(1900, 2000)]
    words += [f"year {year}" for year in range(1900, 2000)]
    words += [f"circa {year}" for year in range(1900, 2000)]
    words += [f"{d[0]} {d[1]} {d[2]} {d[3]} s" for d in decades]
    words += [f"{d[0]} {d[1]} {d[2]} {d[3]}" for d in decades]
    words += [f"year {d[0]} {d[1]} {d[2]} {d[3]}" for d in decades]
    words += [f"circa {d[0]} {d[1]} {d[2]} {d[3]}" for d in decades]
    for word in words + PUBLISHED_PHRASES:
        prompt = prompt.replace(word, "")
    return prompt


def published_apply_color(image: Image.Image, color_map: Image.Image) -> Image.Image:
    lightness, _, _ = image.convert("LAB").split()
    _, a, b = color_map.convert("LAB").split()
    return Image.merge("LAB", (lightness, a, b)).convert("RGB")


class PublishedRecipe:
    """``process_image`` of the published app, on local folders, in float32 on the CPU."""

    def __init__(self, base, controlnet, blip):
        from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline
        from transformers import BlipForConditionalGeneration, BlipProcessor

        self.pipe = StableDiffusionXLControlNetPipeline.from_pretrained(
            base, controlnet=ControlNetModel.from_pretrained(controlnet),
            add_watermarker=False)  # invisible-watermark is not in the published requirements
        self.pipe.set_progress_bar_config(disable=True)
        self.processor = BlipProcessor.from_pretrained(blip)
        self.caption_model = BlipForConditionalGeneration.from_pretrained(blip)

    def __call__(self, rgb: np.ndarray, positive_prompt: str, seed: int) -> tuple[np.ndarray, str, str]:
        image = Image.fromarray(rgb)
        original_size = image.size
        control_image = image.convert("L").convert("RGB").resize((512, 512))
        inputs = self.processor(control_image, "a photography of", return_tensors="pt")
        raw_caption = self.processor.decode(self.caption_model.generate(**inputs)[0], skip_special_tokens=True)
        caption = published_remove_unlikely_words(raw_caption)
        prompt = [positive_prompt + ", " + caption]
        generated = self.pipe(prompt=prompt, negative_prompt=PUBLISHED_NEGATIVE_PROMPT, num_inference_steps=8,
                              generator=torch.manual_seed(seed), image=control_image).images[0]
        result = published_apply_color(control_image, generated).resize(original_size)
        return np.asarray(result), raw_caption, caption


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        root = tmp_path_factory.mktemp("published")
        tiny = build_tiny_sdxl_controlnet(root / "sdxl")
        # Seed 6: this untrained BLIP's captions hold words the cleanup deletes ("1935", "circa", "bw").
        return {"base": tiny.pipeline, "controlnet": tiny.controlnet, "blip": build_tiny_blip(root / "blip", seed=6)}


@pytest.fixture(scope="module")
def reference(folders) -> PublishedRecipe:
    return PublishedRecipe(folders["base"], folders["controlnet"], folders["blip"])


def colorizer_from_settings(folders, tmp_path, **diffusion):
    """The colorizer as a deployment builds it from its ``diffusion:`` settings (defaults + ``diffusion``)."""
    settings = ModelSettings(architecture="controlnet-diffusion", source=str(folders["base"]), dtype="float32",
                             device="cpu", diffusion={"controlnet": {"source": str(folders["controlnet"])},
                                                      "captioner": {"source": str(folders["blip"])}, **diffusion})
    return settings.load_colorizer(ModelRuntime(cache_dir=tmp_path))


@pytest.fixture(scope="module")
def reference_mode(folders, tmp_path_factory):
    return colorizer_from_settings(folders, tmp_path_factory.mktemp("cache"), merge="published")


@pytest.mark.parametrize("size, prompt, seed", [
    ((300, 200), "", 123),                          # no user prompt: ", <caption>"; smaller than 512
    ((700, 525), "a red car", 7),                   # a user prompt is put before the caption
    ((512, 512), "a woman in a blue dress", 2**40),  # seeds beyond 32 bits
])
def test_reference_mode_equals_the_published_recipe(reference, reference_mode, size, prompt, seed):
    image = photo(*size, seed=seed % 97)
    expected, raw_caption, caption = reference(image, prompt, seed)
    assert caption != raw_caption and raw_caption.startswith("a photography of")  # every step has work to do
    result = reference_mode.colorize(image, prompt=prompt or None, seed=seed)
    assert result.shape == expected.shape == image.shape
    difference = np.abs(result.astype(int) - expected.astype(int))
    print(f"{size} {prompt!r} caption {caption!r}: max |ours - published| {difference.max()}")
    np.testing.assert_array_equal(result, expected)


def test_defaults_are_the_published_settings(reference_mode):
    pipeline = reference_mode.pipeline
    assert (reference_mode.steps, reference_mode.guidance_scale, reference_mode.resolution) == (8, 5.0, 512)
    assert reference_mode.negative_prompt == PUBLISHED_NEGATIVE_PROMPT
    pipeline.scheduler.set_timesteps(8)
    # SDXL base's EulerDiscreteScheduler: "leading" spacing with steps_offset 1.
    assert pipeline.scheduler.timesteps.tolist() == [876, 751, 626, 501, 376, 251, 126, 1]


@pytest.mark.parametrize("caption", [
    "a photography of a black and white photo of a man in a suit, 1920s",
    "a photography of an old bw photo of a subway station",
    "a photography of a woman in a dress taken in the early 1950s",
    "a photography of a historic photograph, of soldiers circa 1918",
    "a photography of a grainy photo of a street , photo",
    "a photography of a man sitting on a bench in a park setting, overcast day",
    "a photography of the year 1935 parade, b&w",
    "a photography of a group of people standing in front of a building",
])
def test_caption_cleanup_is_the_published_word_list(caption):
    from pipeline.stages.captioner import remove_unlikely_words

    assert remove_unlikely_words(caption) == published_remove_unlikely_words(caption)
