"""How long a stage's next batch may wait for more requests.

Serve's ``@serve.batch`` forms the next batch while the previous one is still running, and reads
``batch_wait_timeout_s`` when that batch's first request arrives. A fixed wait is wrong both ways:
short, and the next batch closes early and queues behind the running one with one or two requests
(the bench measured a mean batch of 1.1 at concurrency 16); long, and a lone request on an idle
stage waits for company that is not coming.

So the wait follows the stage: zero while it is idle (a request runs at once), and while a batch
runs, about as long as batches take (the requests that would queue behind it join the next
batch), never more than the configured ``batch_wait_timeout_s``.
"""
from __future__ import annotations


class AdaptiveBatchWait:
    def __init__(self, max_wait_s: float, smoothing: float = 0.3):
        self.max_wait_s = max_wait_s
        self.smoothing = smoothing
        self.batch_seconds: float | None = None  # moving average of how long a batch runs
        self.running = 0

    def wait_s(self) -> float:
        if not self.running:
            return 0.0
        expected = self.max_wait_s if self.batch_seconds is None else self.batch_seconds
        return min(self.max_wait_s, expected)

    def started(self) -> float:
        """A batch starts running; returns the wait for the batch forming behind it."""
        self.running += 1
        return self.wait_s()

    def finished(self, seconds: float) -> float:
        """A batch ran for ``seconds``; returns the wait from now on."""
        self.running -= 1
        self.batch_seconds = seconds if self.batch_seconds is None else \
            self.smoothing * seconds + (1 - self.smoothing) * self.batch_seconds
        return self.wait_s()
