"""Prompt and seed rules, shared by the HTTP layer (400 early) and the text-guided colorizer.

Kept free of torch so the ingress can import it cheaply.
"""
from __future__ import annotations

import secrets
import unicodedata

MAX_PROMPT_CHARS = 300
MAX_SEED = 2**63 - 1


class InvalidPromptError(ValueError):
    """The client's prompt is unusable (maps to 400)."""


def validate_prompt(prompt: str | None) -> str | None:
    """Trimmed prompt, or None when absent/blank (then a caption or the default is used)."""
    if prompt is None:
        return None
    if not isinstance(prompt, str):
        raise InvalidPromptError(f"prompt must be text, got {type(prompt).__name__}")
    prompt = " ".join(prompt.split())  # tabs/newlines are just whitespace
    bad = sorted({f"U+{ord(char):04X}" for char in prompt if unicodedata.category(char).startswith("C")})
    if bad:
        raise InvalidPromptError(f"prompt contains control or format characters: {', '.join(bad)}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidPromptError(f"prompt is {len(prompt)} characters long; at most {MAX_PROMPT_CHARS} are allowed")
    return prompt or None


def validate_seed(seed: int | None) -> int:
    """The item's seed, or a fresh random one."""
    if seed is None:
        return secrets.randbelow(MAX_SEED + 1)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    return seed
