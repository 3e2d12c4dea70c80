"""Running one job down the stage graph, and knowing which stages are ready.

Stage calls are chained handle calls: each DeploymentResponse is passed straight to the
next stage, so intermediate images go replica-to-replica without passing through here.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from pipeline.errors import ModelNotLoadedError

log = logging.getLogger("ray.serve")

STATUS_TTL_S = 2.0


class StageUnavailable(Exception):
    """A stage the job needs has no model loaded (503)."""


class Overloaded(Exception):
    """Queues are full (shed with Retry-After)."""


class StageFailed(Exception):
    """A stage raised or timed out: the job failed on our side."""


@dataclass(frozen=True)
class JobPlan:
    model: str              # "large" | "tiny"
    clean_scratches: bool = False
    face_remaster: bool = False
    prompt: str | None = None  # text guidance (text-guided colorizers only)
    seed: int | None = None    # reproducible output for sampling colorizers

    def stages(self) -> list[str]:
        return (["scratch_repair"] if self.clean_scratches else []) + [self.model] + \
            (["face_remaster"] if self.face_remaster else [])


class Graph:
    def __init__(self, stages: dict[str, DeploymentHandle], *, timeout_s: float):
        self.stages = stages
        self.timeout_s = timeout_s
        self._statuses: dict[str, dict[str, Any]] = {}
        self._checked_at = 0.0
        self._lock = asyncio.Lock()

    async def statuses(self, *, max_age_s: float = STATUS_TTL_S) -> dict[str, dict[str, Any]]:
        async with self._lock:
            if time.monotonic() - self._checked_at > max_age_s:
                names = list(self.stages)
                results = await asyncio.gather(*(self._status(n) for n in names))
                self._statuses = dict(zip(names, results))
                self._checked_at = time.monotonic()
        return self._statuses

    async def _status(self, name: str) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(_wait(self.stages[name].status.remote()), timeout=5)
        except Exception as exc:  # a stage that cannot answer is reported, not fatal
            return {"loaded": False, "error": f"stage not reachable: {type(exc).__name__}: {exc}"}

    async def require(self, plan: JobPlan) -> None:
        statuses = await self.statuses()
        for name in plan.stages():
            status = statuses.get(name, {})
            if not status.get("loaded"):
                label = f"'{name}' colorization" if name in ("large", "tiny") else name.replace("_", " ")
                raise StageUnavailable(f"the {label} model is not loaded")

    async def run(self, plan: JobPlan, image: np.ndarray) -> np.ndarray:
        response: Any = image
        for name in plan.stages():
            options = {"prompt": plan.prompt, "seed": plan.seed} if name == plan.model else {}
            response = self.stages[name].remote(response, options)
        try:
            return await asyncio.wait_for(_wait(response), timeout=self.timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            raise StageFailed(f"timed out after {self.timeout_s:g} s") from None
        except BackPressureError as exc:
            raise Overloaded(str(exc)) from None
        except ModelNotLoadedError as exc:
            self._checked_at = 0.0  # our cached view was stale
            raise StageUnavailable(_first_line(exc)) from None
        except Exception as exc:
            log.exception("job %s failed in the graph", plan)
            raise StageFailed(_first_line(exc)) from None


async def _wait(response: Any) -> Any:
    return await response


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # Ray wraps remote errors; the useful part is the last line of its traceback text.
    return (text[-1] if text else type(exc).__name__)[:300]
