"""pipeline.stages.captioner: the published caption cleanup, and a tiny BLIP built and reloaded offline.

(tests/unit/test_published_recipe.py checks the cleanup against the published word list itself.)
"""
from __future__ import annotations

import pytest

from pipeline.errors import ModelLoadError
from pipeline.stages.captioner import CAPTION_CONDITION, UNLIKELY_WORDS, Captioner, remove_unlikely_words
from tests.helpers import photo
from tools.tiny_diffusion import build_tiny_blip


@pytest.mark.parametrize("raw, cleaned", [
    ("a photography of a black and white photo of a man", "a photography of a  photo of a man"),
    ("a photography of a man in the 1920s", "a photography of a man in the "),
    ("a photography of a street, circa 1935", "a photography of a street,  "),  # "1935" goes, then "circa"
    ("a photography of the year 1950 parade", "a photography of the year  parade"),  # the year goes before "year 1950"
    ("a photography of a subway station", "a photography of a suay station"),  # substring deletion, as published
    ("a photography of a woman , photo", "a photography of a woman "),
    ("a photography of a historic building in a park setting", "a photography of a  building in a park "),
    ("a photography of a dog on a lawn", "a photography of a dog on a lawn"),
])
def test_published_cleanup(raw, cleaned):
    assert remove_unlikely_words(raw) == cleaned


def test_word_list_order_and_size():
    assert len(UNLIKELY_WORDS) == 8 * 100 + 100  # 8 generated year lists, then the published phrases
    assert UNLIKELY_WORDS[:2] == ("1900s", "1901s") and UNLIKELY_WORDS[100] == "1900"
    assert UNLIKELY_WORDS[400] == "1 9 0 0 s" and UNLIKELY_WORDS[-1] == "    ,"


@pytest.fixture(scope="module")
def captioner(tmp_path_factory) -> Captioner:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        return Captioner.from_pretrained(build_tiny_blip(tmp_path_factory.mktemp("blip"), seed=6))


def test_tiny_blip_captions_a_batch_like_singles(captioner):
    images = [photo(50, 30), photo(33, 77, seed=1), photo(64, 64, seed=2)]
    captions = captioner.caption_batch(images)
    assert len(captions) == 3 and all(caption.startswith(CAPTION_CONDITION + " ") for caption in captions)
    assert captions == [captioner.caption_batch([image])[0] for image in images]
    assert captioner.caption_batch([]) == []


def test_missing_folder_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="BLIP"):
        Captioner.from_pretrained(tmp_path / "missing")
