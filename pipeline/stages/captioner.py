"""Image captions (BLIP) that become part of the diffusion colorizer's prompt.

As the seed-003 service makes them (nick8592/text-guided-image-colorization, ``gradio_ui.py``):
BLIP-large captions the grey control image *conditioned* on the text "a photography of" (the
decoded caption starts with those words), with ``generate``'s defaults as the model folder sets
them, and ``remove_unlikely_words`` then deletes a fixed list of phrases. The colorization
ControlNet was trained and published with prompts made this way.

The deletion is the published one, quirks included: plain substring deletion in list order, so
it also cuts inside words ("bw" out of "subway", "setting" out of "settings"), leaves double
spaces, and deletes a year before the "year 1935" phrase that contains it could match.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.errors import ModelLoadError

CAPTION_CONDITION = "a photography of"

_YEARS = range(1900, 2000)
_DECADES = [f"{year}s" for year in _YEARS]
_SPACED = [" ".join(decade[:4]) for decade in _DECADES]  # "1 9 2 0", as BLIP's tokenizer may spell a year
# The published list's own phrases, in its order (it deletes "bw" before "bw,", so the latter never matches).
_PHRASES = (
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
    "taken with a leica camera", "leica sl2", "leica", "setting",
    "overcast day", "overcast weather", "slight overcast", "overcast",
    "picture taken in", "photo taken in",
    ", photo", ",  photo", ",   photo", ",    photo", ", photograph",
    ",,", ",,,", ",,,,", " ,", "  ,", "   ,", "    ,",
)
UNLIKELY_WORDS: tuple[str, ...] = (
    *_DECADES, *(str(year) for year in _YEARS), *(f"year {year}" for year in _YEARS),
    *(f"circa {year}" for year in _YEARS), *(f"{spaced} s" for spaced in _SPACED), *_SPACED,
    *(f"year {spaced}" for spaced in _SPACED), *(f"circa {spaced}" for spaced in _SPACED), *_PHRASES,
)


def remove_unlikely_words(caption: str) -> str:
    """The published caption cleanup: every phrase of ``UNLIKELY_WORDS`` deleted, in order."""
    for phrase in UNLIKELY_WORDS:
        caption = caption.replace(phrase, "")
    return caption


class Captioner:
    """BLIP captioning conditioned on ``condition``; one batched ``generate`` per batch.

    ``generate`` runs with the model folder's generation defaults (greedy, 20 tokens for
    Salesforce/blip-image-captioning-*), as the published service calls it.
    """

    def __init__(self, model: torch.nn.Module, processor, *, condition: str = CAPTION_CONDITION):
        self.model = model.eval()
        self.processor = processor
        self.condition = condition
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype

    @classmethod
    def from_pretrained(cls, directory: Path, *, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32, condition: str = CAPTION_CONDITION) -> Captioner:
        """Load e.g. Salesforce/blip-image-captioning-large from a local folder (no network)."""
        from transformers import BlipForConditionalGeneration, BlipProcessor

        directory = Path(directory)
        try:
            processor = BlipProcessor.from_pretrained(directory, local_files_only=True)
            model = BlipForConditionalGeneration.from_pretrained(directory, local_files_only=True, dtype=dtype)
        except (OSError, ValueError, KeyError) as error:
            raise ModelLoadError(f"cannot load the BLIP captioner from {directory}: {error}") from error
        return cls(model.to(device), processor, condition=condition)

    @torch.inference_mode()
    def caption_batch(self, images: list[np.ndarray]) -> list[str]:
        """uint8 RGB (H, W, 3) images -> raw captions, starting with the condition text."""
        if not images:
            return []
        # The condition tokenizes to the same ids for every image: no padding, so batch == singles.
        inputs = self.processor(images=[Image.fromarray(image).convert("RGB") for image in images],
                                text=[self.condition] * len(images), return_tensors="pt")
        tokens = self.model.generate(pixel_values=inputs["pixel_values"].to(self.device, self.dtype),
                                     input_ids=inputs["input_ids"].to(self.device),
                                     attention_mask=inputs["attention_mask"].to(self.device))
        return [self.processor.decode(sequence, skip_special_tokens=True) for sequence in tokens]
