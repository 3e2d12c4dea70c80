"""The graph's view of which stages are loaded (no Ray cluster: stage handles are stand-ins
that answer ``status.remote()`` like a DeploymentHandle, after a chosen delay)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest
from ray.exceptions import ActorDiedError

from deployments.graph import Graph
from service.jobs import JobPlan, StageFailed, StageUnavailable
from pipeline.errors import ModelNotLoadedError


class StandInStage:
    def __init__(self, reply: dict | Exception, delay_s: float = 0.0):
        self.reply, self.delay_s, self.probes = reply, delay_s, 0
        self.gate: asyncio.Event | None = None  # when set to an Event, probes answer only once it is set
        self.status = SimpleNamespace(remote=self._status)

    def _status(self):
        self.probes += 1
        return self._answer()

    async def _answer(self):
        await asyncio.sleep(self.delay_s)
        if self.gate is not None:
            await self.gate.wait()
        if isinstance(self.reply, Exception):
            raise self.reply
        return dict(self.reply)

    def remote(self, image, options):  # a job: fails the way an unloaded replica does
        async def fail():
            raise ModelNotLoadedError("the 'tiny' colorization model is not loaded: weights missing")
        return fail()


LOADED = {"loaded": True, "batch_sizes": {}}


def make_graph(ttl_s: float = 0.05, probe_timeout_s: float = 0.2, **stages: StandInStage) -> Graph:
    return Graph(stages, timeout_s=5, status_ttl_s=ttl_s, probe_timeout_s=probe_timeout_s)


def test_first_view_waits_for_the_probes():
    async def scenario():
        graph = make_graph(tiny=StandInStage(LOADED, delay_s=0.05), large=StandInStage({"loaded": False, "error": "x"}))
        statuses = await graph.statuses()
        assert statuses["tiny"]["loaded"] is True and statuses["large"] == {"loaded": False, "error": "x"}
        await graph.require(JobPlan(model="tiny"))
        with pytest.raises(StageUnavailable, match="'large' colorization model is not loaded"):
            await graph.require(JobPlan(model="large"))
    asyncio.run(scenario())


def test_a_busy_stage_that_answered_loaded_stays_loaded():
    """The bug the benchmark found: a probe stuck behind a full queue used to mark a loaded
    model "not loaded", turning load into false 503s."""
    async def scenario():
        tiny = StandInStage(LOADED)
        graph = make_graph(tiny=tiny)
        assert (await graph.statuses())["tiny"]["loaded"]
        tiny.delay_s = 1.0  # now busier than the probe timeout
        await asyncio.sleep(0.06)
        statuses = await graph.statuses(wait_s=0.5)  # waits for the refresh, which times out
        assert statuses["tiny"]["loaded"] is True
        assert "TimeoutError" in statuses["tiny"]["probe_error"]
        await graph.require(JobPlan(model="tiny"))
    asyncio.run(scenario())


def test_an_unreachable_stage_that_never_answered_is_not_loaded():
    async def scenario():
        graph = make_graph(tiny=StandInStage(ConnectionError("actor died")))
        status = (await graph.statuses())["tiny"]
        assert status["loaded"] is False and "ConnectionError: actor died" in status["error"]
        with pytest.raises(StageUnavailable):
            await graph.require(JobPlan(model="tiny"))
    asyncio.run(scenario())


def test_an_explicit_not_loaded_answer_replaces_loaded():
    async def scenario():
        tiny = StandInStage(LOADED)
        graph = make_graph(tiny=tiny)
        await graph.statuses()
        tiny.reply = {"loaded": False, "error": "weights gone"}
        await asyncio.sleep(0.06)
        assert (await graph.statuses(wait_s=1))["tiny"] == {"loaded": False, "error": "weights gone"}
    asyncio.run(scenario())


def test_jobs_never_wait_for_a_probe_and_probes_do_not_pile_up():
    async def scenario():
        tiny = StandInStage(LOADED)
        graph = make_graph(probe_timeout_s=60, tiny=tiny)
        await graph.statuses()
        tiny.gate = asyncio.Event()  # from now on a probe cannot finish until the test says so
        await asyncio.sleep(0.06)  # past the 0.05 s TTL: the view is stale
        # Every job is admitted from the cached view while the refresh it started is stuck; the
        # timeout only turns a hang (a job waiting for the probe) into a failure.
        await asyncio.wait_for(asyncio.gather(*(graph.require(JobPlan(model="tiny")) for _ in range(50))), 30)
        assert tiny.probes == 2  # the first view, then one background refresh for all 50 jobs
        assert not graph._refresh.done()
        assert (await graph.statuses(wait_s=0.01))["tiny"]["loaded"]  # cached answer when the wait runs out
        tiny.gate.set()
        await graph._refresh
    asyncio.run(scenario())


def test_a_job_that_meets_an_unloaded_model_refreshes_the_view():
    async def scenario():
        tiny = StandInStage(LOADED)
        graph = make_graph(ttl_s=3600, tiny=tiny)
        await graph.statuses()
        tiny.reply = {"loaded": False, "error": "weights missing"}
        with pytest.raises(StageUnavailable, match="not loaded: weights missing"):
            await graph.run(JobPlan(model="tiny"), np.zeros((4, 4, 3), np.uint8))
        assert (await graph.statuses(wait_s=1))["tiny"]["loaded"] is False  # despite the hour-long TTL
    asyncio.run(scenario())


class DyingOnce:
    """A stage whose replica dies under the first call; Serve sends the retry to a live one."""

    def __init__(self, deaths: int = 1):
        self.deaths, self.calls = deaths, 0
        self.status = SimpleNamespace(remote=lambda: StandInStage(LOADED)._answer())

    def remote(self, image, options):
        async def answer():
            self.calls += 1
            if self.calls <= self.deaths:
                raise ActorDiedError()
            return await image if asyncio.iscoroutine(image) else image
        return answer()


def test_a_job_is_retried_once_when_a_replica_dies():
    async def scenario():
        tiny = DyingOnce(deaths=1)
        image = np.full((4, 4, 3), 7, np.uint8)
        assert (await make_graph(tiny=tiny).run(JobPlan(model="tiny"), image) == image).all()
        assert tiny.calls == 2
        twice = DyingOnce(deaths=2)
        with pytest.raises(StageFailed) as failed:
            await make_graph(tiny=twice).run(JobPlan(model="tiny"), image)
        assert twice.calls == 2 and "actor" not in str(failed.value).lower()  # no Ray internals
    asyncio.run(scenario())
