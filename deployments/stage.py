"""One Ray Serve deployment class for every model stage of the graph.

A replica loads its stage (``service.stages`` row -> a ``pipeline.stages`` object) in ``__init__``;
a load failure leaves the replica up, reporting ``loaded: false`` and why. Calls are batched with
``@serve.batch`` (sizes from ``user_config``; the wait follows the stage's load, see
``batching.py``) and each batch runs in a worker thread, so the event loop keeps queueing the next
batch while this one computes. Each call's queue wait and run time, each batch's size and the model's
load are recorded as metrics (``service.telemetry``), and carried back with the photo (``timing.py``).
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
from pipeline.weights.settings import ModelRuntime
from service.heap_watch import start_heap_snapshots
from service.memory import keep_photo_buffers, large_job_ended, large_job_started, release_shared_mappings, trim_after
from service.settings import batch_settings
from service.stages import stage
from service.telemetry import Telemetry

from .batching import AdaptiveBatchWait
from .metrics import RayRecorder
from .timing import Timed, unpack

log = logging.getLogger("ray.serve")

# Ray's shared-memory object store is one file (/dev/shm/plasmaXXXXXX, or in the plasma directory)
# mapped into every worker; photos cross replicas there. After a large job a replica lets go of the
# store's pages it touched (service.memory), or they stay in its RSS until it exits.
RAY_OBJECT_STORE_FILE_PREFIX = "plasma"


def _size_opencv_pool() -> None:
    # OpenCV sizes its pool by the machine, not by this replica's CPU share; Ray sets OMP_NUM_THREADS
    # from num_cpus (>= 1), as torch uses it. On 2 cores, 2 OpenCV threads made Lab conversions 2x slower.
    threads = os.environ.get("OMP_NUM_THREADS", "")
    cv2.setNumThreads(int(threads) if threads.isdigit() and int(threads) > 0 else os.cpu_count() or 1)


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class Stage:
    def __init__(self, name: str, settings: dict[str, Any], runtime: dict[str, Any]):
        self.spec = stage(name)
        section = self.spec.settings.model_validate(settings)
        _size_opencv_pool()
        release_shared_mappings(RAY_OBJECT_STORE_FILE_PREFIX)
        keep_photo_buffers()  # service.memory: a photo's buffers are reused, not faulted in again
        # One batch queue per replica instance (a decorated method would share one queue per class).
        self._batch_wait = AdaptiveBatchWait(max_wait_s=0.02)
        self._run_batch = serve.batch(max_batch_size=8, batch_wait_timeout_s=self._batch_wait.wait_s())(
            self._run_batch_in_thread)
        self._batch_sizes: Counter[int] = Counter()  # which batch sizes actually formed
        self._describe = self.spec.describe(section)
        self.telemetry = Telemetry(RayRecorder())
        started = time.perf_counter()
        try:
            self._impl = self.spec.load(section, ModelRuntime.model_validate(runtime))
            self._error = None
            self._describe["load_seconds"] = round(time.perf_counter() - started, 3)
        except Exception as exc:  # any load failure keeps the replica up, reporting why
            self._impl, self._error = None, f"{type(exc).__name__}: {exc}"
            log.error("%s: model not loaded: %s", self.spec.label, self._error)
        self.telemetry.model_load(name, loaded=self._impl is not None, seconds=time.perf_counter() - started)
        # A diagnostic, off unless COLORIZE_HEAP_SNAPSHOTS is set; after the load, which tracing slows.
        start_heap_snapshots(f"Stage-{name}")

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        from pipeline.device import set_torch_threads  # torch: only in stage replicas, never the ingress's import

        settings = batch_settings(user_config)
        self._describe["torch_threads"] = set_torch_threads(settings.torch_threads)
        self._run_batch.set_max_batch_size(settings.max_batch_size)
        self._batch_wait.max_wait_s = settings.batch_wait_timeout_s
        self._run_batch.set_batch_wait_timeout_s(self._batch_wait.wait_s())

    def status(self) -> dict[str, Any]:
        return {"loaded": self._impl is not None, **self._describe,
                "batch_sizes": {str(size): n for size, n in sorted(self._batch_sizes.items())},
                "node_id": ray.get_runtime_context().get_node_id(),
                **({"error": self._error} if self._error else {})}

    async def __call__(self, image: np.ndarray | Timed, options: dict[str, Any] | None = None) -> np.ndarray | Timed:
        if self._impl is None:  # the reason is in the logs and the admin view, not in public answers
            raise ModelNotLoadedError(f"the {self.spec.label} model is not loaded")
        arrived = time.perf_counter()
        photo, timings = unpack(image)
        # always positional: batching zips arguments
        result, started, finished, batch_size = await self._run_batch(photo, options or {})
        self.telemetry.stage_call(self.spec.name, queued_s=started - arrived, seconds=time.perf_counter() - arrived)
        if timings is None:
            return result
        return Timed(result, {**timings, self.spec.name: {"queued_s": started - arrived, "run_s": finished - started,
                                                          "batch_size": batch_size}})

    async def _run_batch_in_thread(self, images: list[np.ndarray], options: list[dict]) -> list[tuple]:
        """Each photo's result, with when its batch started and finished and how many photos it held."""
        self._batch_sizes[len(images)] += 1
        self.telemetry.stage_batch(self.spec.name, len(images))
        self._run_batch.set_batch_wait_timeout_s(self._batch_wait.started())
        started = time.perf_counter()
        try:
            results = await asyncio.to_thread(self._run_and_trim, images, options)
        finally:
            finished = time.perf_counter()
            self._run_batch.set_batch_wait_timeout_s(self._batch_wait.finished(finished - started))
        return [(result, started, finished, len(images)) for result in results]

    def _run_and_trim(self, images: list[np.ndarray], options: list[dict]) -> list[np.ndarray]:
        pixels = max(image.shape[0] * image.shape[1] for image in images)
        large_job_started(pixels)  # service.memory: a large photo's buffers go back as they are freed
        try:
            return self._impl.run_batch(images, options)
        finally:
            large_job_ended(pixels)
            trim_after(pixels)  # the batch's temporaries are freed
