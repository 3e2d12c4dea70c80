"""The application graph, built from the stage table. ``serve run serve_config.yaml`` imports
``deployments.app:build_app`` and calls it with the app's ``args``; tests call it directly.

    Ingress -> [ScratchRepair] -> ColorizerLarge | ColorizerTiny -> [FaceRemaster] -> storage
"""
from __future__ import annotations

from typing import Any

from ray.serve import Application

from service.settings import AppSettings, load_settings
from service.stages import STAGES

from .ingress import Ingress
from .stage import Stage

INGRESS = "Ingress"
# Deployment names, as serve_config.yaml's `deployments:` refers to them.
DEPLOYMENT_NAMES = (INGRESS, *(spec.deployment for spec in STAGES))


def build_app(args: dict[str, Any]) -> Application:
    """Serve calls builders with exactly one argument: the app's `args` from the config."""
    return build_graph(load_settings(args))


def build_graph(settings: AppSettings, options: dict[str, dict[str, Any]] | None = None) -> Application:
    """The bound graph; ``options`` per deployment name play the role of the YAML's `deployments:`."""
    options = options or {}
    runtime = settings.model_runtime()
    stages = {spec.name: Stage.options(name=spec.deployment, **options.get(spec.deployment, {})).bind(
                  spec.name, settings.stage_settings(spec).model_dump(mode="json"), runtime)
              for spec in STAGES}
    return Ingress.options(name=INGRESS, **options.get(INGRESS, {})).bind(settings.model_dump(mode="json"), stages)
