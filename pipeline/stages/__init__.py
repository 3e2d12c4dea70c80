"""The graph's stages as plain Python: every stage has the same batch contract.

A stage takes a batch of uint8 RGB (H, W, 3) photos and one options dict per photo (``prompt``,
``seed``: only text-guided colorizers read them), and returns the processed photos in the same
order and shapes. Stages are loaded by ``service.stages`` and run in a Ray replica by
``deployments.stage.Stage``, but know nothing of either.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np


class BatchStage(Protocol):
    def run_batch(self, images: list[np.ndarray], options: list[dict] | None = None) -> list[np.ndarray]:
        """Process a batch; ``options`` defaults to no options for every photo."""
