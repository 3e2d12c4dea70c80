"""Image captions (BLIP) that become the diffusion colorizer's prompt.

BLIP describes an old photo as "a black and white photo of a man in the 1920s"; fed to a
text-guided colorizer, "black and white" and the decade pull the result back towards grey
or sepia. ``clean_caption`` keeps only the content ("a man").
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.errors import ModelLoadError

_YEAR = r"(?:1[89]\d0'?s|1[89]\d\d|'\d0s)"  # 1920s, 1920's, 1935, '20s (photography era only)
_CLEANUP_RULES = [  # (pattern, replacement), applied in order
    # BLIP artifacts ("arafed man", "araffe woman"): tokens from its noisy web-caption training data.
    (r"\bar+af+\w*", " "),
    # "taken in the early 1920s", "circa 1935", "from the '20s"; the preposition goes with the year.
    (rf"(?:\b(?:taken|photographed)\s+)?(?:\b(?:in|from|during|around|circa|ca\.|c\.)\s+)?(?:\bthe\s+)?"
     rf"(?:\b(?:early|mid|late)[\s-]+)?(?<![\w']){_YEAR}(?![\w'])", " "),
    # Words that say "no color"; they would steer the model back to grey.
    (r"\b(?:black[\s-]*(?:and|&|n)[\s-]*white|b\s*&\s*w|b/w|gr[ae]y[\s-]?scaled?|monochrom(?:e|atic)"
     r"|sepia(?:[\s-]toned)?|desaturated|colou?rless)\b", " "),
    # "an old photograph", "vintage picture", "historical photo" -> "photo" (dropped below if dangling).
    (r"\b(?:an?\s+)?(?:(?:very|really)\s+)?(?:old|vintage|antique|historic(?:al)?|retro|archival)"
     r"(?:[\s-]+(?:fashioned|style|looking))?\s+(?:photo(?:graph)?|picture|image|pic|snapshot)s?\b", " photo "),
    (r"\ban\s+old\b", " a "),
    (r"\b(?:photo(?:graph)?|picture|image|pic|snapshot)s?\b", " photo "),
]
_CLEANUPS = [(re.compile(pattern, re.IGNORECASE), replacement) for pattern, replacement in _CLEANUP_RULES]
# "there is a photo of a man" / "photo of a man" -> "a man"; "a man in a photo" -> "a man".
_PHOTO_PREFIX = re.compile(
    r"^(?:(?:there|this|it)\s+is\s+)?(?:(?:a|an|the)\s+)?photo\s+(?:of|showing|with)\s+", re.IGNORECASE)
_PHOTO_SUFFIX = re.compile(r"\s+(?:(?:in|on|from)\s+)?(?:(?:a|an|the)\s+)?photo$", re.IGNORECASE)
_DOUBLE_ARTICLE = re.compile(r"\b(?:a|an|the)\s+(a|an|the)\b", re.IGNORECASE)
_DANGLING_END = re.compile(r"(?:\s+(?:a|an|the|of|in|on|from|with|and|at|is|are|taken|during|circa))+$", re.IGNORECASE)
_DANGLING_START = re.compile(r"^(?:(?:of|in|on|from|with|and|at|is)\s+)+", re.IGNORECASE)
_FILLER_WORDS = {"a", "an", "the", "of", "in", "on", "with", "and", "at", "is", "photo", "there", "this", "it", "taken"}


def clean_caption(text: str) -> str:
    """Strip "black and white", "old photo", years, BLIP artifacts; "" if nothing meaningful is left."""
    caption = " " + text.strip().lower() + " "
    for pattern, replacement in _CLEANUPS:
        caption = pattern.sub(replacement, caption)
    caption = re.sub(r"\s+", " ", caption).strip()
    caption = re.sub(r"\s+([,.;:!?])", r"\1", caption)           # "man , dog" -> "man, dog"
    caption = re.sub(r"([,.;:!?])(?:\s*[,.;:!?])+", r"\1", caption)  # ", ," / ",." -> ","
    caption = caption.strip(" ,.;:!?-'\"")
    previous = None
    while previous != caption:  # removals can expose another dangling word or prefix
        previous = caption
        caption = _PHOTO_PREFIX.sub("", caption)
        caption = _PHOTO_SUFFIX.sub("", caption)
        caption = _DOUBLE_ARTICLE.sub(r"\1", caption)
        caption = _DANGLING_END.sub("", caption)
        caption = _DANGLING_START.sub("", caption)
        caption = caption.strip(" ,.;:!?-'\"")
    words = re.findall(r"[^\W\d_]{2,}", caption)
    return caption if any(word not in _FILLER_WORDS for word in words) else ""


class Captioner:
    """BLIP image captioning; one batched, greedy ``generate`` per batch (batch == singles)."""

    def __init__(self, model: torch.nn.Module, processor, *, max_new_tokens: int = 30):
        self.model = model.eval()
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype

    @classmethod
    def from_pretrained(cls, directory: Path, *, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32, max_new_tokens: int = 30) -> Captioner:
        """Load e.g. Salesforce/blip-image-captioning-large from a local folder (no network)."""
        from transformers import BlipForConditionalGeneration, BlipProcessor

        directory = Path(directory)
        try:
            processor = BlipProcessor.from_pretrained(directory, local_files_only=True)
            model = BlipForConditionalGeneration.from_pretrained(directory, local_files_only=True, dtype=dtype)
        except (OSError, ValueError, KeyError) as error:
            raise ModelLoadError(f"cannot load the BLIP captioner from {directory}: {error}") from error
        return cls(model.to(device), processor, max_new_tokens=max_new_tokens)

    @torch.inference_mode()
    def caption_batch(self, images: list[np.ndarray]) -> list[str]:
        """uint8 RGB (H, W, 3) images -> raw captions (see ``clean_caption``)."""
        if not images:
            return []
        inputs = self.processor(images=[Image.fromarray(image).convert("RGB") for image in images],
                                return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.dtype)
        # Greedy decoding: deterministic, and an item's caption does not depend on its batch.
        tokens = self.model.generate(pixel_values=pixel_values, max_new_tokens=self.max_new_tokens,
                                     do_sample=False, num_beams=1)
        return [caption.strip() for caption in self.processor.batch_decode(tokens, skip_special_tokens=True)]
