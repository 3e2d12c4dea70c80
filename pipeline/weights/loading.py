"""Build a model from a directory of weights, strictly, and save one in the same format."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.errors import ModelLoadError
from pipeline.models import architecture_module, model_class

# Searched in this order when a spec names no weights file (HF layouts first).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth")


@dataclass(frozen=True)
class ModelSpec:
    architecture: str
    directory: Path
    weights: str | None = None                 # file inside directory; None = first of WEIGHT_FILES
    config: dict[str, Any] | str | None = None  # constructor kwargs, a published config name, or None = config.json


def constructor_kwargs(spec: ModelSpec) -> dict[str, Any]:
    module = architecture_module(spec.architecture)
    if isinstance(spec.config, dict):
        return dict(spec.config)
    if isinstance(spec.config, str):
        try:
            return dict(module.PUBLISHED_CONFIGS[spec.config])
        except KeyError:
            raise ModelLoadError(f"{spec.architecture} has no published config {spec.config!r}; "
                                 f"known: {', '.join(module.PUBLISHED_CONFIGS)}") from None
    path = spec.directory / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing: give the model's constructor in `config` or ship config.json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from None


def weights_path(spec: ModelSpec) -> Path:
    names = (spec.weights,) if spec.weights else WEIGHT_FILES
    for name in names:
        if (spec.directory / name).is_file():
            return spec.directory / name
    raise ModelLoadError(f"no weights file ({', '.join(names)}) in {spec.directory}")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt/truncated files raise many types
        raise ModelLoadError(f"cannot read weights {path}: {exc}") from None


def load_model(spec: ModelSpec, *, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> nn.Module:
    """Instantiate the architecture and load its weights with strict=True, in eval mode."""
    if not spec.directory.is_dir():
        raise ModelLoadError(f"model directory {spec.directory} does not exist")
    kwargs = constructor_kwargs(spec)
    try:
        model = model_class(spec.architecture)(**kwargs)
    except TypeError as exc:
        raise ModelLoadError(f"bad constructor arguments for {spec.architecture}: {exc}") from None
    checkpoint = read_state_dict(weights_path(spec))
    state_dict = architecture_module(spec.architecture).extract_state_dict(checkpoint)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"weights in {spec.directory} do not match {spec.architecture}{kwargs}: "
                             f"{str(exc)[:2000]}") from None
    return model.to(device=device, dtype=dtype).eval()


def save_model(model: nn.Module, directory: Path, constructor: dict[str, Any]) -> None:
    """Write config.json + model.safetensors; the directory appears complete or not at all."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(staging / "model.safetensors"))
    (staging / "config.json").write_text(json.dumps(constructor, indent=2, sort_keys=True))
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old")
        os.replace(directory, old)
        os.replace(staging, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, directory)
