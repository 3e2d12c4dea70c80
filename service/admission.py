"""How many jobs one Ingress replica runs at once: a limit that follows the service's latency, and
a queue bounded by time.

* **The limit** (AIMD, in the spirit of Netflix's concurrency-limits and Envoy's adaptive
  concurrency). The latency of jobs that ran while no more than ``min_limit`` were in flight is the
  service's baseline (a moving average, so it follows the machine and the photos). While the
  recent latency stays within ``latency_tolerance`` times that baseline and jobs use the whole
  limit, the limit grows by about one per limit's worth of completions; when the recent latency
  goes above it, the limit shrinks by 10%, at most once per recent latency. It never goes below
  ``min_limit`` nor above ``max_limit``.
* **The queue** (CoDel-like: bounded by time, not length). A job that finds the limit full waits
  first come, first served; one whose expected wait (Little's law: its place in line times the
  recent latency over the limit) exceeds ``max_queue_wait_s`` is shed at once, and one that has
  waited ``max_queue_wait_s`` is shed then. Shed means ``Overloaded``: 429 on the key API, 503 on
  the App Check API, both with Retry-After, nothing charged (``service.errors``).

Accepted jobs therefore wait at most ``max_queue_wait_s`` here and run at a concurrency where
latency stays near the service's own, whatever the offered load.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from .jobs import Overloaded

DECREASE = 0.9          # multiplicative decrease
BASELINE_WEIGHT = 0.05  # moving averages: the baseline follows slowly, the recent latency quickly
RECENT_WEIGHT = 0.2


class Slot:
    measured = True


class AdaptiveAdmission:
    def __init__(self, *, min_limit: int, max_limit: int, latency_tolerance: float, max_queue_wait_s: float,
                 clock: Callable[[], float] = time.monotonic):
        if not 1 <= min_limit <= max_limit:
            raise ValueError("need 1 <= min_limit <= max_limit")
        self.min_limit, self.max_limit = min_limit, max_limit
        self.latency_tolerance, self.max_queue_wait_s, self.clock = latency_tolerance, max_queue_wait_s, clock
        self.limit = float(min_limit)
        self.in_flight = 0
        self.baseline_s: float | None = None  # latency while at most min_limit jobs ran
        self.recent_s: float | None = None    # latency of the latest jobs
        self.shed = 0
        self._last_decrease = float("-inf")
        self._waiting: deque[asyncio.Future] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in self._waiting if not waiter.done())

    def expected_wait_s(self, place: int) -> float:
        """How long the ``place``-th job in line should wait (0 until a latency has been seen)."""
        return place * (self.recent_s or 0.0) / max(1.0, self.limit)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        """A place among the jobs in flight for the body of the block; raises Overloaded instead.
        The block may set ``measured = False`` on what it gets: a refusal says nothing of latency."""
        await self._acquire()
        started, running = self.clock(), self.in_flight
        place = Slot()
        completed = False
        try:
            yield place
            completed = True
        finally:
            self.in_flight -= 1
            if completed and place.measured:  # failures (often fast refusals) say nothing about latency
                self.observe(self.clock() - started, running)
            self._wake()

    async def _acquire(self) -> None:
        if self.in_flight < int(self.limit) and not self.waiting:
            self.in_flight += 1
            return
        if self.expected_wait_s(self.waiting + 1) > self.max_queue_wait_s:
            self._shed()
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout=self.max_queue_wait_s)
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            if waiter.done() and not waiter.cancelled():  # granted just as the wait ended: give it back
                self.in_flight -= 1
                self._wake()
            waiter.cancel()
            if isinstance(exc, asyncio.CancelledError):
                raise
            self._shed()
        finally:
            self._forget_done()

    def _shed(self) -> None:
        self.shed += 1
        raise Overloaded("no room within the queue's time budget")

    def _wake(self) -> None:
        while self._waiting and self.in_flight < int(self.limit):
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self.in_flight += 1

    def _forget_done(self) -> None:
        while self._waiting and self._waiting[0].done():
            self._waiting.popleft()

    def observe(self, latency_s: float, running: int) -> None:
        """One completed job's latency, and how many jobs were in flight when it started."""
        self.recent_s = latency_s if self.recent_s is None else \
            (1 - RECENT_WEIGHT) * self.recent_s + RECENT_WEIGHT * latency_s
        if running <= self.min_limit:
            self.baseline_s = latency_s if self.baseline_s is None else \
                (1 - BASELINE_WEIGHT) * self.baseline_s + BASELINE_WEIGHT * latency_s
        if self.baseline_s is None:
            return
        now = self.clock()
        if self.recent_s > self.latency_tolerance * self.baseline_s:
            if now - self._last_decrease >= self.recent_s:
                self.limit = max(float(self.min_limit), self.limit * DECREASE)
                self._last_decrease = now
        elif running >= int(self.limit) - 1:  # the limit was in use: probe one more
            self.limit = min(float(self.max_limit), self.limit + 1 / self.limit)
