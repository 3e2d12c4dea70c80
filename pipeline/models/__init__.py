"""Model architectures by name. Each module exposes ARCHITECTURE, PUBLISHED_CONFIGS,
tiny_config() and extract_state_dict(); modules import lazily so a stage pays only for its own."""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # keep torch out of processes that only validate settings
    from torch import nn

_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "siggraph17": ("pipeline.models.siggraph17", "SIGGRAPHGenerator"),
    "ddcolor": ("pipeline.models.ddcolor", "DDColor"),
    "gfpgan": ("pipeline.models.gfpgan", "GFPGANv1Clean"),
    "lama": ("pipeline.models.lama", "FFCResNetGenerator"),
}

ARCHITECTURE_NAMES = tuple(_ARCHITECTURES)


def architecture_module(name: str) -> ModuleType:
    if name not in _ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(_ARCHITECTURES)}")
    return importlib.import_module(_ARCHITECTURES[name][0])


def model_class(name: str) -> "type[nn.Module]":
    return getattr(architecture_module(name), _ARCHITECTURES[name][1])
