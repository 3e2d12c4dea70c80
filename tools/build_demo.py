"""Build the demo's tiny models (real architectures, untrained weights) into a directory.

    python -m tools.build_demo .models/demo

    large/base + large/controlnet   SDXL ControlNet pipeline laid out like the published weights
    captioner/                      BLIP captioner (prompts for requests without one)
    tiny/                           DDColor
    face/                           GFPGAN v1.4 architecture
    lama/                           Big-LaMa architecture (learned inpainter for scratch repair)

Colors from untrained weights are not meaningful: the demo shows the service working,
not a good colorization. Builds are seeded, so every machine gets the same weights.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline.models import architecture_module, model_class
from pipeline.weights.loading import save_model


def _state_dict_model(architecture: str) -> Callable[[Path, int], None]:
    def build(directory: Path, seed: int) -> None:
        module = architecture_module(architecture)
        constructor = module.tiny_config()
        torch.manual_seed(seed)
        # Some architectures need more than random init to give finite outputs (DDColor's spectral norm).
        model = module.build_tiny_model(seed=seed) if hasattr(module, "build_tiny_model") \
            else model_class(architecture)(**constructor)
        save_model(model, directory, constructor)
    return build


def _sdxl_controlnet(directory: Path, seed: int) -> None:
    from tools.tiny_diffusion import build_tiny_sdxl_controlnet
    build_tiny_sdxl_controlnet(directory, seed=seed)  # writes base/ and controlnet/


def _blip(directory: Path, seed: int) -> None:
    from tools.tiny_diffusion import build_tiny_blip
    build_tiny_blip(directory, seed=seed)


DEMO_MODELS: dict[str, Callable[[Path, int], None]] = {
    "large": _sdxl_controlnet,
    "captioner": _blip,
    "tiny": _state_dict_model("ddcolor"),
    "face": _state_dict_model("gfpgan"),
    "lama": _state_dict_model("lama"),
}


def build(output: Path, *, seed: int = 0, force: bool = False) -> list[Path]:
    """Build what is missing; each model appears complete (renamed into place) or not at all."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    built = []
    for name, builder in DEMO_MODELS.items():
        target = output / name
        if target.exists() and not force:
            continue
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=output))
        builder(staging / name, seed)
        shutil.rmtree(target, ignore_errors=True)
        (staging / name).rename(target)
        staging.rmdir()
        built.append(target)
    return built


def model_args(models: Path) -> dict[str, Any]:
    """The application args that load every model ``build(models)`` made (as serve_config.demo.yaml)."""
    return {
        "colorizers": {
            "large": {"architecture": "controlnet-diffusion", "source": str(models / "large" / "base"),
                      "diffusion": {"controlnet": {"source": str(models / "large" / "controlnet")},
                                    "captioner": {"source": str(models / "captioner")},
                                    "steps": 2, "resolution": 64}},
            "tiny": {"architecture": "ddcolor", "source": str(models / "tiny")},
        },
        "face_remaster": {"restorer": {"architecture": "gfpgan", "source": str(models / "face")}},
        "scratch_repair": {"inpainter": {"architecture": "lama", "source": str(models / "lama")}},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, nargs="?", default=Path(".models/demo"))
    parser.add_argument("--force", action="store_true", help="rebuild even if present")
    args = parser.parse_args(argv)
    built = build(args.output, force=args.force)
    for directory in built:
        print(f"built {directory}")
    if not built:
        print(f"demo models already in {args.output} (use --force to rebuild)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
