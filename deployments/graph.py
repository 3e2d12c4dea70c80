"""Running one job down the stage graph on Ray Serve, and knowing which stages are ready.

Stage calls are chained handle calls: each DeploymentResponse is passed straight to the
next stage, so intermediate images go replica-to-replica without passing through here. The photo
travels as ``timing.Timed``, so each stage's timings come back with the result, for the job's record.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from pipeline.errors import ModelNotLoadedError
from service.jobs import JobPlan, Overloaded, StageFailed, StageUnavailable
from service.telemetry import current_request

from .timing import Timed, unpack

log = logging.getLogger("ray.serve")

STATUS_TTL_S = 2.0


class Graph:
    """The ``StageRunner`` of a Serve app, over one handle per stage name (``service.stages``). Runs
    jobs, and keeps a cached view of which stages are loaded.

    Status probes share the stages' request queues with real work, so under load a probe can
    wait behind a full queue. A slow probe therefore never marks a stage that has answered
    "loaded" as unloaded, and jobs never wait for a probe: the view refreshes in the background.
    """

    def __init__(self, stages: dict[str, DeploymentHandle], *, timeout_s: float,
                 status_ttl_s: float = STATUS_TTL_S, probe_timeout_s: float = 5.0):
        self.stages = stages
        self.timeout_s = timeout_s
        self.status_ttl_s = status_ttl_s
        self.probe_timeout_s = probe_timeout_s
        self._statuses: dict[str, dict[str, Any]] = {}
        self._checked_at = float("-inf")
        self._refresh: asyncio.Task | None = None

    async def statuses(self, *, wait_s: float = 0.0) -> dict[str, dict[str, Any]]:
        """The latest view; a stale one starts a background refresh. Waits up to ``wait_s`` for that
        refresh (health checks want fresh numbers, jobs do not), and always for the very first view."""
        if time.monotonic() - self._checked_at > self.status_ttl_s:
            refresh = self._start_refresh()
            wait = None if not self._statuses else wait_s
            if wait is None or wait > 0:
                try:
                    await asyncio.wait_for(asyncio.shield(refresh), timeout=wait)
                except asyncio.TimeoutError:
                    pass  # answer with the previous view; the refresh goes on
        return self._statuses

    def invalidate(self) -> None:
        self._checked_at = float("-inf")

    def _start_refresh(self) -> asyncio.Task:
        if self._refresh is None or self._refresh.done():  # one probe round at a time
            self._refresh = asyncio.get_running_loop().create_task(self._probe_all())
        return self._refresh

    async def _probe_all(self) -> None:
        names = list(self.stages)
        answers = await asyncio.gather(*(self._probe(name) for name in names))
        view = {}
        for name, (answer, reachable) in zip(names, answers):
            previous = self._statuses.get(name, {})
            if not reachable and previous.get("loaded"):
                # Busy, not unloaded: a replica that dies is restarted by Serve, and a job that
                # meets an unloaded model invalidates this view (ModelNotLoadedError).
                answer = {**previous, "probe_error": answer["error"]}
            view[name] = answer
        self._statuses = view
        self._checked_at = time.monotonic()

    async def _probe(self, name: str) -> tuple[dict[str, Any], bool]:
        try:
            status = await asyncio.wait_for(_wait(self.stages[name].status.remote()), timeout=self.probe_timeout_s)
            return status, True
        except Exception as exc:  # a stage that cannot answer is reported, not fatal
            return {"loaded": False, "error": f"stage not reachable: {type(exc).__name__}: {exc}"}, False

    async def require(self, plan: JobPlan) -> None:
        statuses = await self.statuses()
        for spec in plan.stages():
            if not statuses.get(spec.name, {}).get("loaded"):
                raise StageUnavailable(f"the {spec.label} model is not loaded")

    async def run(self, plan: JobPlan, image: np.ndarray) -> np.ndarray:
        """The chain once; once more if a replica died under it (stage calls have no side effects,
        and Serve routes the retry to a live replica). Public messages carry no Ray internals."""
        deadline = time.monotonic() + self.timeout_s
        for attempt in (1, 2):
            try:
                return await self._run_once(plan, image, deadline)
            except RayActorError as exc:
                if attempt == 2 or time.monotonic() >= deadline:
                    log.error("job %s failed: a replica died twice (%s)", plan, _first_line(exc))
                    raise StageFailed("a replica died") from None
                log.warning("job %s: a replica died (%s); retrying once", plan, _first_line(exc))
        raise AssertionError("unreachable")

    async def _run_once(self, plan: JobPlan, image: np.ndarray, deadline: float) -> np.ndarray:
        response: Any = Timed(image)
        for spec in plan.stages():
            response = self.stages[spec.name].remote(response, plan.options_for(spec))
        try:
            answer = await asyncio.wait_for(_wait(response), timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            response.cancel()
            log.error("job %s timed out after %g s", plan, self.timeout_s)
            raise StageFailed(f"timed out after {self.timeout_s:g} s") from None
        except BackPressureError as exc:
            raise Overloaded(str(exc)) from None
        except ModelNotLoadedError as exc:
            self.invalidate()  # our cached view was stale
            original = getattr(exc, "cause", None) or exc  # Ray wraps a replica's exception; keep its own text
            raise StageUnavailable(str(original.args[0]) if original.args else "a model is not loaded") from None
        except RayActorError:
            raise
        except Exception as exc:
            log.exception("job %s failed in the graph", plan)
            raise StageFailed(_first_line(exc)) from None
        result, timings = unpack(answer)
        current_request().stages.update(timings or {})  # for the job's log line
        return result


async def _wait(response: Any) -> Any:
    return await response


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # Ray wraps remote errors; the useful part is the last line of its traceback text.
    return (text[-1] if text else type(exc).__name__)[:300]
