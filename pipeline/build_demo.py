"""Build the demo's tiny models (real architectures, untrained weights) into a directory.

    python -m pipeline.build_demo .models/demo

Colors from untrained weights are not meaningful: the demo shows the service working,
not a good colorization. Builds are seeded, so every machine gets the same weights.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .models import architecture_module, model_class
from .models.loading import save_model

DEMO_MODELS = {
    "large": "siggraph17",
    "tiny": "ddcolor",
    "face": "gfpgan",
}


def build(output: Path, *, seed: int = 0, force: bool = False) -> list[Path]:
    built = []
    for name, architecture in DEMO_MODELS.items():
        directory = output / name
        if (directory / "model.safetensors").is_file() and not force:
            continue
        module = architecture_module(architecture)
        constructor = module.tiny_config()
        torch.manual_seed(seed)
        # Some architectures need more than random init to give finite outputs (DDColor's spectral norm).
        model = module.build_tiny_model(seed=seed) if hasattr(module, "build_tiny_model") \
            else model_class(architecture)(**constructor)
        save_model(model, directory, constructor)
        built.append(directory)
    return built


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
