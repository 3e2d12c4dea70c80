"""pipeline.stages.colorizer: any size in, same size out, batch == singles."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.stages.colorizer import Colorizer
from pipeline.color.lab import lightness
from pipeline.models.siggraph17 import SIGGRAPHGenerator, tiny_config
from tests.helpers import photo


def make() -> Colorizer:
    torch.manual_seed(0)
    return Colorizer(SIGGRAPHGenerator(**tiny_config()), max_forward_batch=2)


def test_sizes_and_lightness_preserved():
    colorizer = make()
    images = [photo(300, 170), photo(33, 91, seed=1), photo(1, 1, seed=2)]
    results = colorizer.run_batch(images)
    for image, result in zip(images, results):
        assert result.shape == image.shape and result.dtype == np.uint8
        assert np.median(np.abs(lightness(result) - lightness(image))) < 1.0


def test_batch_equals_singles_across_forward_chunks():
    colorizer = make()
    images = [photo(64 + 16 * i, 48, seed=i) for i in range(5)]  # 5 images, forward chunks of 2
    batched = colorizer.run_batch(images)
    for image, result in zip(images, batched):
        np.testing.assert_array_equal(result, colorizer.colorize(image))
    assert colorizer.run_batch([]) == []


def test_device_path_matches_opencv_path():
    """The accelerator path (here forced on the CPU) computes what the OpenCV path computes,
    within interpolation and rounding differences."""
    colorizer = make()
    images = [photo(300, 170), photo(40, 90, seed=1)]
    reference = colorizer.run_batch(images)
    device_results = colorizer._colorize_on_device(images)
    for expected, result in zip(reference, device_results):
        assert result.shape == expected.shape and result.dtype == np.uint8
        difference = np.abs(result.astype(int) - expected.astype(int))
        assert difference.mean() < 1.0 and np.percentile(difference, 99) <= 4
    np.testing.assert_allclose(lightness(device_results[0]), lightness(images[0]), atol=2.5)
