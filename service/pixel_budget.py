"""How many pixels one Ingress replica works on at once.

A photo's cost in memory and CPU follows its pixel count, not its upload size: a 48 KB PNG of
7000x7000 decodes to 147 MB and takes seconds of CPU in every stage. Each job therefore takes its
photo's pixels (read from the header, before decoding) from this budget for as long as it decodes,
waits for the stages and encodes; a job that finds no room waits in line (first come, first served,
so a large photo is not starved by small ones) for at most ``max_wait_s``, and is then shed
(``Overloaded``: 429 on the key API, 503 on the App Check API, both with Retry-After, nothing
charged). A photo larger than the whole budget runs alone.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

log = logging.getLogger("ray.serve")


class NoRoom(Exception):
    """No room in the pixel budget within the wait allowed."""


class PixelBudget:
    def __init__(self, capacity_pixels: int, *, max_wait_s: float):
        if capacity_pixels < 1:
            raise ValueError("the pixel budget must hold at least one pixel")
        self.capacity, self.max_wait_s = capacity_pixels, max_wait_s
        self.in_use = 0
        self._waiting: deque[tuple[int, asyncio.Future]] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for _, waiter in self._waiting if not waiter.done())

    @asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        """Room for ``pixels`` for the body of the block; raises NoRoom after ``max_wait_s`` in line."""
        size = max(1, min(pixels, self.capacity))  # bigger than the budget: runs alone
        await self._acquire(size)
        try:
            yield
        finally:
            self.in_use -= size
            self._wake()

    async def _acquire(self, size: int) -> None:
        if not self.waiting and self.in_use + size <= self.capacity:
            self.in_use += size
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append((size, waiter))
        try:
            await asyncio.wait_for(waiter, timeout=self.max_wait_s)
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            if waiter.done() and not waiter.cancelled():  # granted just as the wait ended: give it back
                self.in_use -= size
            waiter.cancel()
            self._wake()  # the line may move on without this one
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.warning("shed a photo of %d pixels: no room within %g s (%d in use of %d, %d waiting)",
                        size, self.max_wait_s, self.in_use, self.capacity, self.waiting)
            raise NoRoom(f"no room for {size} pixels within {self.max_wait_s:g} s") from None

    def _wake(self) -> None:
        while self._waiting:
            size, waiter = self._waiting[0]
            if waiter.done():  # gave up waiting
                self._waiting.popleft()
                continue
            if self.in_use + size > self.capacity:
                return  # first in line first: later, smaller photos do not overtake it
            self._waiting.popleft()
            self.in_use += size
            waiter.set_result(None)
