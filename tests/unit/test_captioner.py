"""pipeline.stages.captioner: caption cleaning, and a tiny BLIP built and reloaded offline."""
from __future__ import annotations

import pytest

from pipeline.stages.captioner import Captioner, clean_caption
from pipeline.errors import ModelLoadError
from tools.tiny_diffusion import build_tiny_blip
from tests.helpers import photo


@pytest.mark.parametrize("raw, cleaned", [
    ("a black and white photo of a man", "a man"),
    ("a black-and-white picture of a dog", "a dog"),
    ("b&w photograph of a street", "a street"),
    ("a b/w snapshot of a train station", "a train station"),
    ("a grayscale image of a house", "a house"),
    ("a monochrome photo of a city street", "a city street"),
    ("sepia toned photo of a family", "a family"),
    ("an old photo of a group of people in the 1920s", "a group of people"),
    ("an old photograph of two women", "two women"),
    ("vintage photo of a wedding, 1935", "a wedding"),
    ("historical photo of soldiers from the '40s", "soldiers"),
    ("a street scene in the 1920's", "a street scene"),
    ("a family portrait taken in the early 1900s", "a family portrait"),
    ("two children playing in the snow circa 1950", "two children playing in the snow"),
    ("the roaring '20s fashion", "the roaring fashion"),
    ("arafed man in a suit and hat standing in front of a car", "man in a suit and hat standing in front of a car"),
    ("araffe woman sitting on a bench", "woman sitting on a bench"),
    ("there is a black and white photo of a woman with a hat", "a woman with a hat"),
    ("a man in a black and white photo", "a man"),
    ("an old man sitting on a bench", "a man sitting on a bench"),
    ("A Woman In A Dress , , with flowers", "a woman in a dress, with flowers"),
    ("a man  and  a dog", "a man and a dog"),
    ("a man holding 2000 dollars", "a man holding 2000 dollars"),  # not a photography-era year
    ("a couple in their 50s", "a couple in their 50s"),  # an age, not a decade
])
def test_clean_caption(raw, cleaned):
    assert clean_caption(raw) == cleaned


@pytest.mark.parametrize("raw", ["black and white", "an old photo", "a photo of", "greyscale photo", "1920s",
                                 "photo of a photo", "an image", "arafed", "", "  ,. "])
def test_clean_caption_nothing_meaningful_left(raw):
    assert clean_caption(raw) == ""


@pytest.fixture(scope="module")
def captioner(tmp_path_factory) -> Captioner:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        return Captioner.from_pretrained(build_tiny_blip(tmp_path_factory.mktemp("blip")))


def test_tiny_blip_captions_a_batch_like_singles(captioner):
    images = [photo(50, 30), photo(33, 77, seed=1), photo(64, 64, seed=2)]
    captions = captioner.caption_batch(images)
    assert len(captions) == 3 and all(isinstance(caption, str) and caption for caption in captions)
    assert captions == [captioner.caption_batch([image])[0] for image in images]
    assert captioner.caption_batch([]) == []


def test_missing_folder_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="BLIP"):
        Captioner.from_pretrained(tmp_path / "missing")
