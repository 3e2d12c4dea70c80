"""The stages of the graph, one row each, in the order a job runs them.

Everything that needs to know the stages reads this table: the app settings (one section per
stage), the graph builder (one deployment per stage), job plans (which stages a request needs),
prices, readiness and ``/health``. Adding a stage means a row here, a pipeline class with
``run_batch`` (``pipeline.stages``) and its section in the YAML files; see docs/development.md.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from pipeline.errors import ModelNotLoadedError
from pipeline.weights.settings import ModelRuntime, ModelSettings, Strict


class ScratchRepairSection(Strict):
    """The ``scratch_repair:`` section."""
    inpainter: ModelSettings | None = Field(
        None, description="a learned inpainter (architecture `lama`); none: OpenCV Telea, no weights")


class FaceRemasterSection(Strict):
    """The ``face_remaster:`` section."""
    restorer: ModelSettings | None = Field(
        None, description="GFPGAN weights (architecture `gfpgan`); none: the stage reports not loaded")
    max_faces: int = Field(8, ge=1, le=64, description="the most faces restored per photo (the largest ones)")


def _load_scratch_repair(section: ScratchRepairSection, runtime: ModelRuntime):
    from pipeline.stages.scratch_repair import ScratchRepairer

    if section.inpainter is None:
        return ScratchRepairer()
    from pipeline.stages.inpainting import LamaInpainter

    return ScratchRepairer(inpainter=LamaInpainter(section.inpainter.load_module(runtime)))


def _load_colorizer(model: ModelSettings, runtime: ModelRuntime):
    return model.load_colorizer(runtime)


def _load_face_remaster(section: FaceRemasterSection, runtime: ModelRuntime):
    if section.restorer is None:
        raise ModelNotLoadedError("no face restorer weights are configured (face_remaster.restorer)")
    from pipeline.stages.face_detect import FaceDetector
    from pipeline.stages.face_remaster import FaceRemaster

    return FaceRemaster(section.restorer.load_module(runtime), FaceDetector(), max_faces=section.max_faces)


@dataclass(frozen=True)
class StageSpec:
    name: str                    # in job plans, readiness and /health: "scratch_repair", "large", ...
    deployment: str              # the Ray Serve deployment (serve_config.yaml `deployments:`)
    label: str                   # in messages: "the {label} model is not loaded"
    section: tuple[str, ...]     # where its settings live in the app args, e.g. ("colorizers", "large")
    settings: type[Strict]       # the settings model of that section
    load: Callable[[Any, ModelRuntime], Any]  # (section settings, runtime) -> a pipeline stage; runs in a replica
    describe: Callable[[Any], dict[str, Any]]  # what readiness reports about the configured model
    price: int                   # credits it adds to a job on the key API
    add_on: str | None = None    # the request field that turns it on; None: a colorizer, chosen by `model`

    @property
    def is_colorizer(self) -> bool:
        return self.add_on is None


STAGES: tuple[StageSpec, ...] = (
    StageSpec("scratch_repair", "ScratchRepair", "scratch repair", ("scratch_repair",), ScratchRepairSection,
              _load_scratch_repair,
              lambda s: {"detector": "morphology",
                         "inpainter": s.inpainter.describe() if s.inpainter else "OpenCV Telea"},
              price=1, add_on="clean_scratches"),
    StageSpec("large", "ColorizerLarge", "'large' colorization", ("colorizers", "large"), ModelSettings,
              _load_colorizer, ModelSettings.describe, price=1),
    StageSpec("tiny", "ColorizerTiny", "'tiny' colorization", ("colorizers", "tiny"), ModelSettings,
              _load_colorizer, ModelSettings.describe, price=1),
    StageSpec("face_remaster", "FaceRemaster", "face remaster", ("face_remaster",), FaceRemasterSection,
              _load_face_remaster, lambda s: s.restorer.describe() if s.restorer else {},
              price=2, add_on="face_remaster"),
)
STAGES_BY_NAME: dict[str, StageSpec] = {spec.name: spec for spec in STAGES}
COLORIZERS: tuple[str, ...] = tuple(spec.name for spec in STAGES if spec.is_colorizer)  # the `model` field
ADD_ONS: tuple[str, ...] = tuple(spec.add_on for spec in STAGES if spec.add_on)        # the add-on fields


def stage(name: str) -> StageSpec:
    try:
        return STAGES_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; known: {', '.join(STAGES_BY_NAME)}") from None
