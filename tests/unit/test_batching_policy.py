"""The adaptive batch wait (deployments/batching.py): no wait when idle, about a batch's
duration while one runs, never more than configured."""
from __future__ import annotations

import pytest

from deployments.batching import AdaptiveBatchWait


def test_an_idle_stage_never_makes_a_request_wait():
    wait = AdaptiveBatchWait(max_wait_s=0.05)
    assert wait.wait_s() == 0.0
    wait.started()
    assert wait.finished(0.2) == 0.0  # idle again: the next lone request runs at once


def test_while_a_batch_runs_the_next_one_collects_for_about_a_batch_duration():
    wait = AdaptiveBatchWait(max_wait_s=0.05, smoothing=0.5)
    assert wait.started() == 0.05  # no history yet: the configured bound
    wait.finished(0.02)
    assert wait.started() == pytest.approx(0.02)
    wait.finished(0.04)
    assert wait.started() == pytest.approx(0.03)  # moving average of 0.02 and 0.04


def test_the_configured_wait_bounds_slow_batches():
    wait = AdaptiveBatchWait(max_wait_s=0.05)
    wait.started()
    wait.finished(1.5)  # e.g. a diffusion batch
    assert wait.started() == 0.05
    wait.max_wait_s = 0.0  # user_config batch_wait_timeout_s: 0 turns waiting off
    assert wait.wait_s() == 0.0
