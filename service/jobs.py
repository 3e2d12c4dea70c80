"""A job: which stages a request needs, running them, and storing what comes out.

The HTTP layer builds a ``JobPlan`` from a request; ``Jobs`` decodes the photo, hands it to a
``StageRunner`` (``deployments.graph.Graph`` on Ray; stand-ins in tests), encodes the result and
stores it. Data flows one way: request -> stages -> storage.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from pipeline.encode import encode_image
from pipeline.inputs.decode import DecodedImage, decode_image
from storage import InvalidObjectName, ObjectStore, StorageError, StoredObject, content_type_for, new_object_name
from storage import validate_object_name

from .stages import STAGES, StageSpec

log = logging.getLogger("ray.serve")


class StageUnavailable(Exception):
    """A stage the job needs has no model loaded."""


class Overloaded(Exception):
    """The stages' queues are full: shed now, the client retries after a while."""


class StageFailed(Exception):
    """A stage raised or timed out: the job failed on our side."""


@dataclass(frozen=True)
class JobPlan:
    model: str                             # a colorizer's stage name: "large" | "tiny"
    add_ons: frozenset[str] = frozenset()  # add-on request fields turned on, e.g. {"clean_scratches"}
    prompt: str | None = None              # text guidance (text-guided colorizers only)
    seed: int | None = None                # reproducible output for sampling colorizers

    def stages(self) -> list[StageSpec]:
        """The stages this job runs, in graph order."""
        return [spec for spec in STAGES
                if (spec.name == self.model if spec.is_colorizer else spec.add_on in self.add_ons)]

    @property
    def price(self) -> int:
        """Credits a success costs on the key API."""
        return sum(spec.price for spec in self.stages())

    def options_for(self, spec: StageSpec) -> dict[str, Any]:
        """Per-request options a stage reads: only the colorizer takes guidance."""
        return {"prompt": self.prompt, "seed": self.seed} if spec.is_colorizer else {}


class StageRunner(Protocol):
    async def statuses(self, *, wait_s: float = 0.0) -> dict[str, dict[str, Any]]:
        """Each stage's readiness by stage name (``{"loaded": bool, ...}``)."""

    async def require(self, plan: JobPlan) -> None:
        """Raise StageUnavailable when a stage the plan needs is not loaded (before any work)."""

    async def run(self, plan: JobPlan, image: np.ndarray) -> np.ndarray:
        """The photo after every stage of the plan; raises StageUnavailable, Overloaded or StageFailed."""


class StoreWriteFailed(Exception):
    """Storing an upload or a result failed (the job's work is lost; nothing is charged)."""


class StoreReadFailed(Exception):
    """Reading a stored file failed: storage is unreachable, not the file missing."""


class Jobs:
    """The work behind both contracts' routes: decode, run the stages, encode, store, read back."""

    def __init__(self, runner: StageRunner, store: ObjectStore, *, max_pixels: int):
        self.runner, self.store, self.max_pixels = runner, store, max_pixels

    async def decode(self, data: bytes) -> DecodedImage:
        return await asyncio.to_thread(decode_image, data, max_pixels=self.max_pixels)

    async def run_and_store(self, plan: JobPlan, image: DecodedImage, fmt: str) -> str:
        """Run the plan's stages on the photo and store the result as ``fmt``; the stored name."""
        started = time.perf_counter()
        await self.runner.require(plan)
        rgb = await self.runner.run(plan, image.rgb)
        data = await asyncio.to_thread(encode_image, rgb, fmt, alpha=image.alpha)
        filename = new_object_name("jpg" if fmt == "JPEG" else "png")
        await self.put("results", filename, data)
        log.info("job %s -> %s in %.3f s", plan, filename, time.perf_counter() - started)
        return filename

    async def put(self, kind: str, name: str, data: bytes) -> None:
        try:
            await asyncio.to_thread(self.store.put, kind, name, data, content_type_for(name))
        except StorageError as exc:
            log.error("storing %s/%s failed: %s", kind, name, exc)
            raise StoreWriteFailed(str(exc)) from None

    async def stored(self, kind: str, name: str) -> StoredObject | None:
        """The stored object, or None when missing, expired, or not a name we could have issued."""
        try:
            validate_object_name(name)
        except InvalidObjectName:
            return None
        try:
            return await asyncio.to_thread(self.store.get, kind, name)
        except StorageError as exc:
            log.error("reading %s/%s failed: %s", kind, name, exc)
            raise StoreReadFailed(str(exc)) from None
