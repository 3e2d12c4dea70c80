"""A photo on its way down the graph, with what each stage it passed took (for the job's log line).

``Graph`` sends the first stage a ``Timed`` photo; a stage that receives one answers one, its own
timings added. A stage called with a bare array (tests, benchmarks) answers a bare array.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Timed:
    image: np.ndarray
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> queued_s, run_s, batch_size


def unpack(value: np.ndarray | Timed) -> tuple[np.ndarray, dict[str, dict[str, Any]] | None]:
    """The photo, and the timings it carries (None for a bare array)."""
    return (value.image, value.stages) if isinstance(value, Timed) else (value, None)
