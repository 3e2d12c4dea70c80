"""Whether this replica can do a job now: its store and its ledger answer, and a colorizer is loaded.

Each dependency is checked in a worker thread with a time limit, in the background, at most every
``ttl_s``; readers get the latest view at once and never wait for a check, so ``GET /readyz`` and
the job routes cost nothing under load. A job route asks ``require()`` before reading its body:
a store or ledger that does not answer refuses new jobs with ``NotReady`` (503 + Retry-After)
before any model work, instead of running the models and failing at the store.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from .jobs import NotReady

log = logging.getLogger("ray.serve")

Check = Callable[[], object]  # raises when the dependency is unreachable


class Readiness:
    def __init__(self, checks: Mapping[str, Check], *, ttl_s: float = 2.0, timeout_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.checks, self.ttl_s, self.timeout_s, self.clock = dict(checks), ttl_s, timeout_s, clock
        self._view: dict[str, bool] = {name: True for name in self.checks}  # until the first check says otherwise
        self._checked_at = float("-inf")
        self._refresh: asyncio.Task | None = None

    def view(self) -> dict[str, bool]:
        """The latest answer of each check (``True``: reachable); a stale view starts a refresh."""
        if self.clock() - self._checked_at > self.ttl_s and (self._refresh is None or self._refresh.done()):
            self._refresh = asyncio.get_running_loop().create_task(self.refresh())
        return dict(self._view)

    async def refresh(self) -> dict[str, bool]:
        names = list(self.checks)
        answers = await asyncio.gather(*(self._check(name) for name in names))
        self._view, self._checked_at = dict(zip(names, answers)), self.clock()
        return dict(self._view)

    async def _check(self, name: str) -> bool:
        try:
            await asyncio.wait_for(asyncio.to_thread(self.checks[name]), timeout=self.timeout_s)
            return True
        except Exception as exc:  # the reason goes to the log, never into a public answer
            if self._view.get(name, True):
                log.warning("readiness: %s is not reachable: %s", name, f"{type(exc).__name__}: {exc}"[:300])
            return False

    def require(self) -> None:
        """Raise NotReady when a dependency did not answer its latest check."""
        down = [name for name, ok in self.view().items() if not ok]
        if down:
            raise NotReady(f"not reachable: {', '.join(down)}")
