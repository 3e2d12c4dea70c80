"""A job: which stages a request needs, running them, and storing what comes out.

The HTTP layer builds a ``JobPlan`` from a request; ``Jobs`` decodes the photo, hands it to a
``StageRunner`` (``deployments.graph.Graph`` on Ray; stand-ins in tests), encodes the result and
stores it. Data flows one way: request -> stages -> storage. Decoding, the stages and encoding
run inside the replica's pixel budget (``service.pixel_budget``), taken before any decoding.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from pipeline.encode import encode_image
from pipeline.inputs.decode import decode_image, image_size
from storage import InvalidObjectName, ObjectStore, StorageError, StoredObject, content_type_for, new_object_name
from storage import validate_object_name

from .memory import TRIM_ABOVE_PIXELS, large_job_ended, large_job_started, trim_after
from .pixel_budget import NoRoom, PixelBudget
from .stages import STAGES, StageSpec
from .telemetry import current_request

log = logging.getLogger("ray.serve")


class StageUnavailable(Exception):
    """A stage the job needs has no model loaded."""


class Overloaded(Exception):
    """The stages' queues or the replica's pixel budget are full: shed now, the client retries after a while."""


class NotReady(Exception):
    """Storage or the ledger cannot be reached (``service.readiness``): refuse new jobs before any model work."""


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


@asynccontextmanager
async def _shed_when_full(budget: PixelBudget, pixels: int) -> AsyncIterator[None]:
    started = time.perf_counter()
    try:
        async with budget.hold(pixels):
            current_request().add_phase("pixel_budget", time.perf_counter() - started)
            yield
    except NoRoom as exc:
        current_request().add_phase("pixel_budget", time.perf_counter() - started)
        raise Overloaded(str(exc)) from None


@asynccontextmanager
async def _photo_memory(pixels: int) -> AsyncIterator[None]:
    """A large photo's job hands its buffers back as they are freed, and what is left after it
    (``service.memory``); a small one's are kept for the next job."""
    large_job_started(pixels)
    try:
        yield
    finally:
        large_job_ended(pixels)
        if pixels >= TRIM_ABOVE_PIXELS:  # no thread hop for the usual small photo
            await asyncio.to_thread(trim_after, pixels)


class StoreWriteFailed(Exception):
    """Storing an upload or a result failed (the job's work is lost; nothing is charged)."""


class StoreReadFailed(Exception):
    """Reading a stored file failed: storage is unreachable, not the file missing."""


class Jobs:
    """The work behind both contracts' routes: decode, run the stages, encode, store, read back."""

    def __init__(self, runner: StageRunner, store: ObjectStore, *, max_pixels: int,
                 budget: PixelBudget | None = None):
        self.runner, self.store, self.max_pixels = runner, store, max_pixels
        self.budget = budget or PixelBudget(1 << 62, max_wait_s=0)  # none given: unbounded

    def pixels(self, data: bytes) -> int:
        """The photo's pixel count from its header alone (InvalidImageError as decoding would raise)."""
        width, height = image_size(data, max_pixels=self.max_pixels)
        return width * height

    async def image_extension(self, data: bytes) -> str:
        """Decode the photo (in the pixel budget) to prove it is whole; its file extension."""
        pixels = self.pixels(data)
        async with _photo_memory(pixels), _shed_when_full(self.budget, pixels):
            return (await asyncio.to_thread(decode_image, data, max_pixels=self.max_pixels)).extension

    async def run_and_store(self, plan: JobPlan, data: bytes, fmt: str) -> str:
        """Decode the photo, run the plan's stages on it and store the result as ``fmt``; the stored
        name. A photo that is no image (by its header) is refused first, then one that needs a stage
        that is not loaded, both before the budget is waited for or anything decoded."""
        width, height = image_size(data, max_pixels=self.max_pixels)
        pixels = width * height
        current_request().image_size = (width, height)  # the job's log line
        await self.runner.require(plan)
        record = current_request()
        async with _photo_memory(pixels):
            async with _shed_when_full(self.budget, pixels):
                with record.phase("decode"):
                    image = await asyncio.to_thread(decode_image, data, max_pixels=self.max_pixels)
                with record.phase("stages"):
                    rgb = await self.runner.run(plan, image.rgb)
                with record.phase("encode"):
                    encoded = await asyncio.to_thread(encode_image, rgb, fmt, alpha=image.alpha)
                del image, rgb  # before the store write: a large photo's arrays leave the budget with it
            filename = new_object_name("jpg" if fmt == "JPEG" else "png")
            with record.phase("store"):
                await self.put("results", filename, encoded)
            del encoded  # the encoded file (tens of MB for a big photo) is freed before the trim
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
