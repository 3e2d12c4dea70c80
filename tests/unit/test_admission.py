"""Adaptive admission (service/admission.py) and readiness (service/readiness.py), without Ray."""
from __future__ import annotations

import asyncio

import pytest
from starlette.testclient import TestClient

from service.admission import AdaptiveAdmission
from service.jobs import NotReady, Overloaded
from service.readiness import Readiness


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def admission(clock=None, **overrides) -> AdaptiveAdmission:
    options = {"min_limit": 2, "max_limit": 8, "latency_tolerance": 1.5, "max_queue_wait_s": 0.05}
    return AdaptiveAdmission(**{**options, **overrides}, clock=clock or Clock())


def test_jobs_beyond_the_limit_wait_in_line_and_those_that_would_wait_too_long_are_shed_at_once():
    async def scenario():
        gate = admission(max_queue_wait_s=0.2)
        gate.recent_s = 0.1  # two places and 0.1 s per job: the 4th in line expects 0.2 s, the 5th 0.25 s
        release = asyncio.Event()
        outcomes = []

        async def job(i):
            try:
                async with gate.slot():
                    await release.wait()
                outcomes.append(("done", i))
            except Overloaded:
                outcomes.append(("shed", i))

        tasks = [asyncio.create_task(job(i)) for i in range(7)]
        await asyncio.sleep(0.01)
        assert (gate.in_flight, gate.waiting) == (2, 4)
        assert outcomes == [("shed", 6)]  # shed before waiting at all
        release.set()
        await asyncio.gather(*tasks)
        assert sorted(outcomes) == sorted([("done", i) for i in range(6)] + [("shed", 6)])
        assert gate.in_flight == 0 and gate.shed == 1
    asyncio.run(scenario())


def test_a_job_that_waited_its_whole_budget_is_shed_and_its_place_given_back():
    async def scenario():
        gate = admission(min_limit=1, max_limit=1)
        hold = asyncio.Event()

        async def long_job():
            async with gate.slot():
                await hold.wait()

        first = asyncio.create_task(long_job())
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            async with gate.slot():
                pass
        hold.set()
        await first
        assert (gate.in_flight, gate.waiting) == (0, 0)
        async with gate.slot():  # room again
            assert gate.in_flight == 1
    asyncio.run(scenario())


def test_the_limit_grows_while_latency_holds_and_shrinks_when_it_rises():
    clock = Clock()
    gate = admission(clock)
    for _ in range(20):  # the baseline: 0.1 s while at most min_limit jobs run
        gate.observe(0.1, running=2)
    assert gate.baseline_s == pytest.approx(0.1)
    for _ in range(40):  # the limit in use, latency steady: additive increase
        gate.observe(0.11, running=int(gate.limit))
    grown = gate.limit
    assert grown > 5
    for _ in range(10):  # latency 3x the baseline: multiplicative decrease, at most once per latency
        clock.now += 1.0
        gate.observe(0.3, running=int(gate.limit))
    assert gate.min_limit <= gate.limit < grown * 0.5
    for _ in range(200):
        clock.now += 1.0
        gate.observe(1.0, running=8)
    assert gate.limit == gate.min_limit  # never below the floor
    assert admission().limit == 2


def test_failed_jobs_do_not_count_as_latency_samples():
    async def scenario():
        gate = admission()
        with pytest.raises(ValueError):
            async with gate.slot():
                raise ValueError("bad photo")
        assert gate.recent_s is None and gate.in_flight == 0
    asyncio.run(scenario())


def test_readiness_follows_its_checks_and_refuses_jobs_while_one_fails():
    state = {"ledger_up": True}

    def ledger():
        if not state["ledger_up"]:
            raise ConnectionError("connection refused to 10.0.0.5:5432")

    async def scenario():
        clock = Clock()
        readiness = Readiness({"storage": lambda: None, "ledger": ledger}, ttl_s=1.0, clock=clock)
        assert await readiness.refresh() == {"storage": True, "ledger": True}
        readiness.require()
        state["ledger_up"] = False
        assert readiness.view() == {"storage": True, "ledger": True}  # fresh: no new check yet
        clock.now += 2
        readiness.view()  # stale: a refresh starts in the background
        await asyncio.sleep(0.05)
        assert readiness.view()["ledger"] is False
        with pytest.raises(NotReady):
            readiness.require()
    asyncio.run(scenario())
