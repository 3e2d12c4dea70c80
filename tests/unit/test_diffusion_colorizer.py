"""pipeline.stages.diffusion_colorizer on tiny, untrained SD and SDXL ControlNet pipelines built offline."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.stages.captioner import Captioner, remove_unlikely_words
from pipeline.inputs.prompts import MAX_PROMPT_CHARS, InvalidPromptError
from pipeline.stages.diffusion_colorizer import (DEFAULT_PROMPT, PUBLISHED_NEGATIVE_PROMPT, DiffusionColorizer,
                                                 pipeline_kind)
from pipeline.errors import ModelLoadError
from pipeline.color.lab import lightness
from tools.tiny_diffusion import build_tiny_blip, build_tiny_sd_controlnet, build_tiny_sdxl_controlnet
from tests.helpers import photo

SETTINGS = {"steps": 2, "guidance_scale": 5.0, "resolution": 64}


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")  # any attempt to reach the Hub fails loudly
        yield


@pytest.fixture(scope="module")
def folders(tmp_path_factory, offline):
    root = tmp_path_factory.mktemp("tiny_diffusion")
    return {"sd": build_tiny_sd_controlnet(root / "sd"), "sdxl": build_tiny_sdxl_controlnet(root / "sdxl")}


@pytest.fixture(scope="module")
def colorizers(folders) -> dict[str, DiffusionColorizer]:
    return {kind: DiffusionColorizer.from_pretrained(found.pipeline, controlnet=found.controlnet, **SETTINGS)
            for kind, found in folders.items()}


@pytest.fixture(params=["sd", "sdxl"])
def colorizer(request, colorizers) -> DiffusionColorizer:
    return colorizers[request.param]


class PipelineSpy:
    """Records the keyword arguments of every pipeline call, then runs the real pipeline."""

    def __init__(self, pipeline):
        self.pipeline, self.calls = pipeline, []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self.pipeline(**kwargs)


class FixedCaptioner:
    def __init__(self, captions: list[str]):
        self.captions, self.seen, self.images = captions, [], []

    def caption_batch(self, images):
        self.seen.append(len(images))
        self.images.extend(images)
        return self.captions[:len(images)]


def spied(colorizer: DiffusionColorizer, monkeypatch, captioner=None) -> PipelineSpy:
    spy = PipelineSpy(colorizer.pipeline)
    monkeypatch.setattr(colorizer, "pipeline", spy)
    monkeypatch.setattr(colorizer, "captioner", captioner)
    return spy


def test_folder_kind_picks_the_pipeline_class(folders, colorizers):
    assert pipeline_kind(folders["sd"].pipeline) == "sd" and pipeline_kind(folders["sdxl"].pipeline) == "sdxl"
    assert type(colorizers["sd"].pipeline).__name__ == "StableDiffusionControlNetPipeline"
    assert type(colorizers["sdxl"].pipeline).__name__ == "StableDiffusionXLControlNetPipeline"
    for loaded in colorizers.values():  # the folder's own scheduler (SDXL base's): Euler, leading spacing
        assert type(loaded.pipeline.scheduler).__name__ == "EulerDiscreteScheduler"
        assert loaded.pipeline.scheduler.config.timestep_spacing == "leading"
        assert loaded.negative_prompt == PUBLISHED_NEGATIVE_PROMPT and loaded.merge == "full_resolution"


def test_any_size_in_same_size_out_with_original_lightness(colorizer):
    images = [photo(30, 50), photo(77, 33, seed=1), photo(1, 1, seed=2)]
    results = colorizer.run_batch(images, [{"seed": 1}, {"seed": 2}, {"seed": 3}])
    for image, result in zip(images, results):
        assert result.shape == image.shape and result.dtype == np.uint8
        assert np.median(np.abs(lightness(result) - lightness(image))) < 1.0
    assert colorizer.run_batch([]) == []


def test_output_has_color_from_the_generated_chroma(colorizer):
    result = colorizer.colorize(photo(64, 64), seed=0)
    assert np.abs(result.astype(int) - result.mean(axis=2, keepdims=True)).mean() > 1.0


def test_seed_reproducible_and_seeds_differ(colorizer):
    image = photo(40, 48)
    first, again = colorizer.colorize(image, seed=7), colorizer.colorize(image, seed=7)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, colorizer.colorize(image, seed=8))
    assert not np.array_equal(colorizer.colorize(image), colorizer.colorize(image))  # random seeds


def test_batch_equals_singles(colorizer, monkeypatch):
    spy = spied(colorizer, monkeypatch)
    images = [photo(30, 50), photo(77, 33, seed=1), photo(64, 64, seed=2)]
    options = [{"seed": 11, "prompt": "a red car"}, {"seed": 12}, {"seed": 13, "prompt": "a dog"}]
    batched = colorizer.run_batch(images, options)
    assert len(spy.calls) == 1 and len(spy.calls[0]["prompt"]) == 3  # one pipeline call per batch
    for image, option, result in zip(images, options, batched):
        single = colorizer.run_batch([image], [option])[0]
        # Batched CPU matmuls may round differently: allow off-by-one on a tiny fraction of pixels.
        difference = np.abs(single.astype(int) - result.astype(int))
        assert difference.max() <= 1 and (difference > 0).mean() < 0.001


def test_prompt_is_user_prompt_then_the_cleaned_caption(colorizer, monkeypatch):
    captioner = FixedCaptioner(["a photography of a black and white photo of a dog in 1920s"] * 3)
    spy = spied(colorizer, monkeypatch, captioner)
    options = [{"prompt": "  a red\n car  ", "seed": 1}, {"seed": 2}, {"prompt": "", "seed": 3}]
    colorizer.run_batch([photo(32, 32, seed=i) for i in range(3)], options)
    caption = "a photography of a  photo of a dog in "  # the published word list, deleted as substrings
    assert spy.calls[0]["prompt"] == ["a red car, " + caption, ", " + caption, ", " + caption]
    assert captioner.seen == [3]  # every item is captioned (the caption is always used), in one batch
    assert spy.calls[0]["negative_prompt"] == [colorizer.negative_prompt] * 3


def test_captions_describe_the_grey_control_image(colorizer, monkeypatch):
    captioner = FixedCaptioner(["a photography of a street"])
    spied(colorizer, monkeypatch, captioner)
    colorful = np.dstack([np.full((40, 30), 200, np.uint8), np.zeros((40, 30), np.uint8), np.full((40, 30), 50, np.uint8)])
    colorizer.run_batch([colorful], [{"seed": 1}])
    (seen,) = captioner.images
    assert seen.shape == (colorizer.resolution, colorizer.resolution, 3)
    assert np.all(seen == seen[..., :1]) and np.all(seen == np.asarray(colorizer.control_image(colorful)))


def test_default_prompt_and_suffix_without_captioner(colorizer, monkeypatch):
    spy = spied(colorizer, monkeypatch)
    monkeypatch.setattr(colorizer, "prompt_suffix", ", natural colors")
    colorizer.run_batch([photo(32, 32)] * 2, [{"seed": 1}, {"prompt": "a house", "seed": 2}])
    assert spy.calls[0]["prompt"] == [DEFAULT_PROMPT + ", natural colors", "a house, natural colors"]


@pytest.mark.parametrize("size", [(96, 72), (40, 64)])
def test_merges_full_resolution_keeps_the_photos_lightness_published_takes_the_control_images(colorizer, monkeypatch,
                                                                                             size):
    image = photo(*size, seed=5)
    monkeypatch.setattr(colorizer, "merge", "full_resolution")
    full = colorizer.colorize(image, seed=3)
    monkeypatch.setattr(colorizer, "merge", "published")
    published = colorizer.colorize(image, seed=3)
    assert full.shape == published.shape == image.shape
    # Lightness: the photo's own at full resolution, or the 64 px control image's, resized back.
    full_error = np.abs(lightness(full) - lightness(image))
    published_error = np.abs(lightness(published) - lightness(image))
    assert np.median(full_error) < 0.5 and np.median(published_error) > 2 * np.median(full_error)
    with pytest.raises(ValueError, match="unknown merge"):
        DiffusionColorizer(colorizer.pipeline, merge="photo")


@pytest.mark.parametrize("options, message", [
    ({"prompt": "a dog\x00"}, r"U\+0000"),
    ({"prompt": "a dog\u202e"}, r"U\+202E"),
    ({"prompt": "x" * (MAX_PROMPT_CHARS + 1)}, "at most"),
    ({"prompt": 5}, "text"),
])
def test_invalid_prompt_rejected_before_running(colorizers, monkeypatch, options, message):
    colorizer = colorizers["sd"]
    spy = spied(colorizer, monkeypatch)
    with pytest.raises(InvalidPromptError, match=message):
        colorizer.run_batch([photo(32, 32)] * 2, [{}, options])
    assert spy.calls == []


@pytest.mark.parametrize("options, message", [
    ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"seed": True}, "seed"), ({"steps": 3}, "unknown"),
])
def test_invalid_options_rejected(colorizers, options, message):
    with pytest.raises(ValueError, match=message):
        colorizers["sd"].run_batch([photo(32, 32)], [options])


def test_tiny_blip_captions_become_prompts(colorizers, tmp_path, monkeypatch):
    captioner = Captioner.from_pretrained(build_tiny_blip(tmp_path / "blip"))
    colorizer = colorizers["sdxl"]
    spy = spied(colorizer, monkeypatch, captioner)
    images = [photo(40, 30, seed=i) for i in range(2)]
    results = colorizer.run_batch(images, [{"seed": 1}, {"seed": 2, "prompt": "a dog"}])
    captions = captioner.caption_batch([np.asarray(colorizer.control_image(image)) for image in images])
    assert spy.calls[0]["prompt"] == [", " + remove_unlikely_words(captions[0]), "a dog, " + remove_unlikely_words(captions[1])]
    assert [result.shape for result in results] == [image.shape for image in images]


def test_unet_override_from_folder_and_state_dict_file(folders, tmp_path):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    base = folders["sd"].pipeline
    torch.manual_seed(123)
    replacement = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(base / "unet"))
    replacement.save_pretrained(tmp_path / "unet_folder")
    save_file(replacement.state_dict(), tmp_path / "unet.safetensors")  # how SDXL-Lightning ships its UNet
    expected = replacement.state_dict()
    for override in (tmp_path / "unet_folder", tmp_path / "unet.safetensors"):
        loaded = DiffusionColorizer.from_pretrained(base, unet=override, **SETTINGS).pipeline.unet.state_dict()
        assert all(torch.equal(loaded[key], value) for key, value in expected.items())


def test_scheduler_choice(folders):
    loaded = DiffusionColorizer.from_pretrained(folders["sd"].pipeline, scheduler="unipc", **SETTINGS)
    assert type(loaded.pipeline.scheduler).__name__ == "UniPCMultistepScheduler"
    # The SDXL-Lightning card's spacing: 8 steps from t=999 instead of the base scheduler's 876.
    lightning = DiffusionColorizer.from_pretrained(folders["sdxl"].pipeline, controlnet=folders["sdxl"].controlnet,
                                                   scheduler="euler_trailing", **SETTINGS).pipeline.scheduler
    lightning.set_timesteps(8)
    assert lightning.config.timestep_spacing == "trailing" and lightning.timesteps[0] == 999
    with pytest.raises(ValueError, match="unknown scheduler"):
        DiffusionColorizer.from_pretrained(folders["sd"].pipeline, scheduler="magic", **SETTINGS)


def test_load_errors_are_explicit(folders, tmp_path):
    with pytest.raises(ModelLoadError, match="without a ControlNet"):
        DiffusionColorizer.from_pretrained(folders["sdxl"].pipeline, **SETTINGS)
    with pytest.raises(ModelLoadError, match="not a diffusers pipeline folder"):
        DiffusionColorizer.from_pretrained(tmp_path, **SETTINGS)
    with pytest.raises(ModelLoadError, match="cannot load"):
        DiffusionColorizer.from_pretrained(folders["sd"].pipeline, controlnet=tmp_path / "missing", **SETTINGS)
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="cannot load"):
        DiffusionColorizer.from_pretrained(folders["sd"].pipeline, unet=tmp_path / "garbage.safetensors", **SETTINGS)
    with pytest.raises(ValueError, match="multiple of 32"):
        DiffusionColorizer.from_pretrained(folders["sd"].pipeline, **{**SETTINGS, "resolution": 30})


class TrainingCallbackState:
    """Stands for the pickled objects a training checkpoint may carry besides tensors."""


def test_convert_original_controlnet_round_trip(tmp_path):
    from diffusers import ControlNetModel

    from tools.convert_controlnet import main
    from tools.tiny_diffusion import build_tiny_original_controlnet

    tiny = build_tiny_original_controlnet(tmp_path / "original")
    expected = ControlNetModel.from_pretrained(tiny.reference).state_dict()
    runs = {"from_ckpt_and_folder_config": [str(tiny.checkpoint), "--config", str(tiny.reference)],
            "from_safetensors_and_yaml": [str(tiny.safetensors), "--original-config", str(tiny.original_config)]}
    for name, (source, *config) in runs.items():
        assert main([source, str(tmp_path / name), *config]) == 0
        converted = ControlNetModel.from_pretrained(tmp_path / name, local_files_only=True).state_dict()
        assert converted.keys() == expected.keys()
        assert all(torch.equal(converted[key], value) for key, value in expected.items()), name


def test_convert_refuses_pickled_objects_unless_trusted(tmp_path):
    from tools.convert_controlnet import read_control_tensors

    path = tmp_path / "training.ckpt"
    torch.save({"state_dict": {"control_model.time_embed.0.bias": torch.ones(2), "model.x": torch.zeros(1)},
                "callbacks": TrainingCallbackState()}, path)
    with pytest.raises(ModelLoadError, match="--trust-pickle"):
        read_control_tensors(path)
    assert list(read_control_tensors(path, trust_pickle=True)) == ["control_model.time_embed.0.bias"]
