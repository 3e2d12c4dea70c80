"""The application graph. ``serve run serve_config.yaml`` imports ``deployments.app:build_app``
and calls it with the app's ``args``; tests call it directly.

    Ingress -> [ScratchRepair] -> ColorizerLarge | ColorizerTiny -> [FaceRemaster] -> storage
"""
from __future__ import annotations

from typing import Any

from ray.serve import Application

from .ingress import Ingress
from .settings import AppSettings, load_settings
from .stages import Colorizer, FaceRemaster, ScratchRepair

# Deployment names, as serve_config.yaml's `deployments:` refers to them.
DEPLOYMENT_NAMES = ("Ingress", "ScratchRepair", "ColorizerLarge", "ColorizerTiny", "FaceRemaster")


def build_app(args: dict[str, Any]) -> Application:
    """Serve calls builders with exactly one argument: the app's `args` from the config."""
    return build_graph(load_settings(args))


def build_graph(settings: AppSettings, options: dict[str, dict[str, Any]] | None = None) -> Application:
    """The bound graph; ``options`` per deployment name play the role of the YAML's `deployments:`."""
    def deployment(cls, name: str):
        return cls.options(name=name, **(options or {}).get(name, {}))

    runtime = settings.model_runtime()
    return deployment(Ingress, "Ingress").bind(
        settings.model_dump(mode="json"),
        deployment(ScratchRepair, "ScratchRepair").bind(settings.scratch_repair.model_dump(mode="json"), runtime),
        deployment(Colorizer, "ColorizerLarge").bind("large", settings.colorizers["large"].model_dump(mode="json"),
                                                     runtime),
        deployment(Colorizer, "ColorizerTiny").bind("tiny", settings.colorizers["tiny"].model_dump(mode="json"),
                                                    runtime),
        deployment(FaceRemaster, "FaceRemaster").bind(settings.face_remaster.model_dump(mode="json"), runtime),
    )
