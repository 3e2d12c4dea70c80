"""Model stages of the graph: thin Ray Serve adapters around ``pipeline`` classes.

Each stage loads its model in ``__init__`` (a missing model leaves the replica up and
reporting ``loaded: false``), batches calls with ``@serve.batch`` (sizes from
``user_config``; the wait follows the stage's load, see ``batching.py``), and runs the batch
in a worker thread so the event loop keeps queueing the next batch while this one computes.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from typing import Any

import cv2
import numpy as np
import ray
from ray import serve

from pipeline.errors import ModelNotLoadedError

from .batching import AdaptiveBatchWait
from .model_settings import ModelRuntime, ModelSettings
from .settings import batch_settings

log = logging.getLogger("ray.serve")


class _Stage:
    stage: str = "stage"

    def _load(self, describe: dict[str, Any], loader) -> None:
        # OpenCV sizes its pool by the machine, not by this replica's CPU share; Ray sets OMP_NUM_THREADS
        # from num_cpus (>= 1), as torch uses it. On 2 cores, 2 OpenCV threads made Lab conversions 2x slower.
        threads = os.environ.get("OMP_NUM_THREADS", "")
        cv2.setNumThreads(int(threads) if threads.isdigit() and int(threads) > 0 else os.cpu_count() or 1)
        # One batch queue per instance (a decorated base-class method would share one queue).
        self._batch_wait = AdaptiveBatchWait(max_wait_s=0.02)
        self._run_batch = serve.batch(max_batch_size=8, batch_wait_timeout_s=self._batch_wait.wait_s())(
            self._run_batch_in_thread)
        self._describe = describe
        self._batch_sizes: Counter[int] = Counter()  # which batch sizes actually formed
        started = time.perf_counter()
        try:
            self._impl = loader()
            self._error = None
            self._describe["load_seconds"] = round(time.perf_counter() - started, 3)
        except Exception as exc:  # any load failure keeps the replica up, reporting why
            self._impl, self._error = None, f"{type(exc).__name__}: {exc}"
            log.error("%s: model not loaded: %s", self.stage, self._error)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        settings = batch_settings(user_config)
        self._run_batch.set_max_batch_size(settings.max_batch_size)
        self._batch_wait.max_wait_s = settings.batch_wait_timeout_s
        self._run_batch.set_batch_wait_timeout_s(self._batch_wait.wait_s())

    def status(self) -> dict[str, Any]:
        return {"loaded": self._impl is not None, **self._describe,
                "batch_sizes": {str(size): n for size, n in sorted(self._batch_sizes.items())},
                "node_id": ray.get_runtime_context().get_node_id(),
                **({"error": self._error} if self._error else {})}

    def _require(self):
        if self._impl is None:
            raise ModelNotLoadedError(f"the {self.stage} model is not loaded: {self._error}")
        return self._impl

    async def __call__(self, image: np.ndarray, options: dict[str, Any] | None = None) -> np.ndarray:
        self._require()
        return await self._run_batch(image, options or {})  # always positional: batching zips arguments

    async def _run_batch_in_thread(self, images: list[np.ndarray], options: list[dict]) -> list[np.ndarray]:
        self._batch_sizes[len(images)] += 1
        self._run_batch.set_batch_wait_timeout_s(self._batch_wait.started())
        started = time.perf_counter()
        try:
            return await asyncio.to_thread(self._process, images, options)
        finally:
            self._run_batch.set_batch_wait_timeout_s(self._batch_wait.finished(time.perf_counter() - started))

    def _process(self, images: list[np.ndarray], options: list[dict]) -> list[np.ndarray]:
        raise NotImplementedError


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class ScratchRepair(_Stage):
    stage = "scratch-repair"

    def __init__(self, settings: dict[str, Any], runtime: dict[str, Any]):
        spec = ModelSettings.model_validate(settings["inpainter"]) if settings.get("inpainter") else None
        runtime = ModelRuntime.model_validate(runtime)

        def load():
            from pipeline.scratch_repair import ScratchRepairer
            if spec is None:
                return ScratchRepairer()
            from pipeline.inpainting import LamaInpainter
            return ScratchRepairer(inpainter=LamaInpainter(spec.load_module(runtime)))

        describe = {"detector": "morphology", "inpainter": spec.describe() if spec else "OpenCV Telea"}
        self._load(describe, load)

    def _process(self, images: list[np.ndarray], options: list[dict]) -> list[np.ndarray]:
        return self._impl.repair_batch(images)


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class Colorizer(_Stage):
    def __init__(self, name: str, settings: dict[str, Any], runtime: dict[str, Any]):
        spec, runtime = ModelSettings.model_validate(settings), ModelRuntime.model_validate(runtime)
        self.stage = f"'{name}' colorization"

        def load():
            return spec.load_colorizer(runtime)

        self._load(spec.describe(), load)

    def _process(self, images: list[np.ndarray], options: list[dict]) -> list[np.ndarray]:
        return self._impl.colorize_batch(images, options)


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class FaceRemaster(_Stage):
    stage = "face-remaster"

    def __init__(self, settings: dict[str, Any], runtime: dict[str, Any]):
        spec = ModelSettings.model_validate(settings["restorer"]) if settings.get("restorer") else None
        runtime = ModelRuntime.model_validate(runtime)

        def load():
            if spec is None:
                raise ModelNotLoadedError("no face restorer weights are configured (face_remaster.restorer)")
            from pipeline.face_detect import FaceDetector
            from pipeline.face_remaster import FaceRemaster as FaceRemasterPipeline
            return FaceRemasterPipeline(spec.load_module(runtime), FaceDetector())

        self._load(spec.describe() if spec else {}, load)

    def _process(self, images: list[np.ndarray], options: list[dict]) -> list[np.ndarray]:
        return self._impl.remaster_batch(images)
