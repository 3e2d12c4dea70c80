"""Colorize many photos at once: N workers over one AsyncClient, each photo retried under its
own derived Idempotency-Key, every result written atomically, and a clean stop on request.

Stopping has two steps. ``stop()``: nothing new is sent (no new photo, no retry); requests
already on the wire finish and are saved. ``abandon()``: those are cancelled too; if the service
finished one anyway, it was charged, and the next run's retry of the same photo is replayed
from that result, not charged again.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .client import AsyncClient
from .errors import AuthError, ColorizeError, NoCredits, RateLimited, ServerError
from .files import Photo, looks_like_complete_png, write_atomically
from .progress import Progress
from .protocol import ColorizeResult, Options

DONE, SKIPPED, FAILED, NOT_SENT, INTERRUPTED = "done", "skipped", "failed", "not sent", "interrupted"
ALREADY_DONE = "already done"  # the reason of a photo skipped because its complete result exists


@dataclass
class Outcome:
    input: Path
    output: Path | None
    status: str
    reason: str = ""
    request_id: str | None = None
    credits: int = 0                # the job's price when done (charged once per photo, even if sent again)
    attempts: int = 0
    idempotency_key: str | None = None


class Pacer:
    """A token bucket like the service's own for this key, so that concurrent workers do not
    run into 429s (each would still be waited out, but costs an upload)."""

    def __init__(self, rate_per_s: float, burst: int):
        self.rate, self.burst = rate_per_s, max(burst, 1)
        self.tokens, self.at = float(self.burst), time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
                self.at = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


@dataclass
class Batch:
    client: AsyncClient
    options: Options
    price: int
    progress: Progress
    concurrency: int = 4
    pacer: Pacer | None = None
    balance_before: int | None = None
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self):
        self.stopping = asyncio.Event()
        self._reason_for_stop = "interrupted"
        self._lowest_balance: int | None = None
        self._counts: Counter = Counter()  # running totals: a run may have tens of thousands of photos
        self._prices = 0
        self._in_flight: set[asyncio.Task] = set()
        self._workers: list[asyncio.Task] = []
        self._writes: set[asyncio.Task] = set()
        self._write_slots = asyncio.Semaphore(max(1, self.concurrency))  # results held in memory at most

    # -- control -------------------------------------------------------------------------------

    def stop(self, reason: str = "interrupted") -> None:
        if not self.stopping.is_set():
            self._reason_for_stop = reason
            self.stopping.set()

    def abandon(self) -> None:
        self.stop()
        for task in [*self._in_flight, *self._workers]:
            task.cancel()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    # -- accounting ----------------------------------------------------------------------------

    def credits_spent(self) -> tuple[int, bool]:
        """Credits this run spent, and whether that is the service's own count (balance before minus
        the lowest X-Credits-Remaining seen) rather than a sum of prices (which also counts replays)."""
        if self.balance_before is not None and self._lowest_balance is not None:
            return self.balance_before - self._lowest_balance, True
        return self._prices, False

    def count(self, status: str) -> int:
        return self._counts[status]

    # -- the run -------------------------------------------------------------------------------

    async def run(self, photos: list[Photo]) -> list[Outcome]:
        queue = list(reversed(photos))
        self.progress.start(len(photos))
        self._workers = [asyncio.create_task(self._worker(queue)) for _ in range(max(1, min(self.concurrency,
                                                                                            len(photos))))]
        try:
            await asyncio.gather(*self._workers, return_exceptions=True)
            while self._writes:  # results already paid for: always written, even when abandoning
                await asyncio.gather(*self._writes, return_exceptions=True)
        finally:
            self.progress.close()
        while queue:  # stopped early: the rest was never sent
            photo = queue.pop()
            self._add(Outcome(photo.source, photo.output, NOT_SENT, self._reason_for_stop))
        return self.outcomes

    def _add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self._counts[outcome.status] += 1
        self._prices += outcome.credits

    async def _worker(self, queue: list[Photo]) -> None:
        while queue and not self.stopping.is_set():
            if self.pacer is not None:
                await self.pacer.acquire()
                if self.stopping.is_set():
                    return
            photo = queue.pop()
            task = asyncio.create_task(self._colorize(photo))
            self._in_flight.add(task)
            try:
                result = await task
            except asyncio.CancelledError:  # abandon() cancels the worker and the photo's task
                result = Outcome(photo.source, photo.output, INTERRUPTED, "abandoned while in flight")
            finally:
                self._in_flight.discard(task)
            if isinstance(result, Outcome):
                self._record(photo, result)
                continue
            # The file is written while this worker sends its next photo: with one photo in flight
            # the disk's fsync would otherwise add to every photo's time. Writes are never abandoned.
            try:
                await self._write_slots.acquire()
            except asyncio.CancelledError:
                self._record(photo, Outcome(photo.source, photo.output, INTERRUPTED,
                                            "abandoned before its result was written", result.request_id))
                return
            write = asyncio.create_task(self._write(photo, result))
            self._writes.add(write)
            write.add_done_callback(self._writes.discard)

    async def _write(self, photo: Photo, result: ColorizeResult) -> None:
        try:
            await asyncio.to_thread(write_atomically, photo.output, result.image)
            outcome = Outcome(photo.source, photo.output, DONE, "", result.request_id, self.price, result.attempts,
                              result.idempotency_key)
        except OSError as error:
            outcome = Outcome(photo.source, photo.output, FAILED, f"cannot write the result: {error}",
                              result.request_id, 0, result.attempts, result.idempotency_key)
        finally:
            self._write_slots.release()
        self._record(photo, outcome)

    def _record(self, photo: Photo, outcome: Outcome) -> None:
        self._add(outcome)
        spent, _ = self.credits_spent()
        detail = outcome.reason if outcome.status != DONE else f"-> {outcome.output}"
        self.progress.photo(outcome.status, str(photo.source), detail, spent, self.count(FAILED))

    async def _colorize(self, photo: Photo) -> ColorizeResult | Outcome:
        """The photo's result, downloaded and checked, or the Outcome of its failure."""
        async def wait_or_stop(error: ColorizeError, delay: float) -> bool:
            if isinstance(error, RateLimited) and delay >= 5:
                self.progress.note(f"rate limited: waiting {delay:.0f} s ({photo.source})")
            try:
                await asyncio.wait_for(self.stopping.wait(), timeout=delay)
                return False  # stopping: no retry is sent
            except asyncio.TimeoutError:
                return True

        fields = {"model": self.options.model, "clean_scratches": self.options.clean_scratches,
                  "face_remaster": self.options.face_remaster, "prompt": self.options.prompt,
                  "seed": self.options.seed}
        try:
            result = await self.client.colorize(photo.source, **fields, download=True, on_retry=wait_or_stop)
            if not looks_like_complete_png(result.image or b""):
                raise ServerError("the downloaded result is not a complete PNG", request_id=result.request_id)
        except NoCredits as error:
            self.stop("no credits left on the key")
            return Outcome(photo.source, photo.output, FAILED, f"no credits: {error}", error.request_id)
        except AuthError as error:
            self.stop("the API key was refused")
            return Outcome(photo.source, photo.output, FAILED, str(error), error.request_id)
        except ColorizeError as error:
            if self.stopping.is_set() and error.retryable:
                return Outcome(photo.source, photo.output, INTERRUPTED, f"stopped before a retry; last error: {error}",
                               error.request_id)
            return Outcome(photo.source, photo.output, FAILED, str(error), error.request_id)
        except OSError as error:
            return Outcome(photo.source, photo.output, FAILED, f"cannot read the photo: {error}")
        if result.credits_remaining is not None:
            self._lowest_balance = min(self._lowest_balance if self._lowest_balance is not None
                                       else result.credits_remaining, result.credits_remaining)
        return result
