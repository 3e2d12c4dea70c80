"""The application graph. ``serve run serve_config.yaml`` imports ``deployments.app:build_app``
and calls it with the app's ``args``; tests call it directly.

    Ingress -> [ScratchRepair] -> ColorizerLarge | ColorizerTiny -> [FaceRemaster] -> storage
"""
from __future__ import annotations

from typing import Any

from ray.serve import Application

from .ingress import Ingress
from .settings import load_settings
from .stages import Colorizer, FaceRemaster, ScratchRepair

# Deployment names, as serve_config.yaml's `deployments:` refers to them.
DEPLOYMENT_NAMES = ("Ingress", "ScratchRepair", "ColorizerLarge", "ColorizerTiny", "FaceRemaster")


def build_app(args: dict[str, Any]) -> Application:
    """Serve calls builders with exactly one argument: the app's `args` from the config."""
    settings = load_settings(args)
    runtime = settings.model_runtime()
    colorizers = {
        name: Colorizer.options(name=f"Colorizer{name.title()}").bind(name, model.model_dump(mode="json"), runtime)
        for name, model in settings.colorizers.items()
    }
    return Ingress.bind(
        settings.model_dump(mode="json"),
        ScratchRepair.bind(settings.scratch_repair.model_dump(mode="json"), runtime),
        colorizers["large"],
        colorizers["tiny"],
        FaceRemaster.bind(settings.face_remaster.model_dump(mode="json"), runtime),
    )
