"""DDColor's model input is built as upstream builds it (piddnad/DDColor ``ddcolor/pipeline.py``).

Upstream: the uint8 image divided by 255 as float32, ``cv2.resize`` to the model's square with
OpenCV's default INTER_LINEAR, Lab L of that, and (L, 0, 0) back to RGB for the network. Both the
CPU (OpenCV) path and the accelerator (torch) path of the colorizer must feed the same numbers.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from pipeline.stages.colorizer import Colorizer
from pipeline.models.ddcolor import build_tiny_model

INPUT_SIZE = 512  # the published DDColor input


def upstream_model_input(rgb: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(L (S, S), grey RGB (S, S, 3)) exactly as upstream computes them (it reads BGR; BGR2Lab of
    BGR is RGB2Lab of RGB, and the grey image is the same in both orders)."""
    image = (rgb / 255.0).astype(np.float32)
    resized = cv2.resize(image, (size, size))
    lightness = cv2.cvtColor(resized, cv2.COLOR_RGB2Lab)[:, :, :1]
    grey_lab = np.concatenate((lightness, np.zeros_like(lightness), np.zeros_like(lightness)), axis=-1)
    return lightness[..., 0], cv2.cvtColor(grey_lab, cv2.COLOR_LAB2RGB)


def _photos() -> dict[str, np.ndarray]:
    cubic = cv2.INTER_CUBIC
    return {
        "613x437": cv2.resize(data.coffee(), (613, 437), interpolation=cv2.INTER_AREA),
        "760x1000": cv2.resize(data.astronaut(), (760, 1000), interpolation=cubic),
        "1000x760_grey": np.repeat(cv2.resize(data.camera(), (1000, 760), interpolation=cubic)[..., None], 3, 2),
        "300x170_upscaled": cv2.resize(data.chelsea(), (300, 170), interpolation=cv2.INTER_AREA),
        "1024x1024_exact_half": cv2.resize(data.rocket(), (1024, 1024), interpolation=cubic),
    }


class RecordingInputs:
    """Records what a real (tiny, untrained) DDColor receives: L for ``predict_ab``, grey RGB for the net."""

    def __init__(self, model):
        self.lightness, self.network_input = [], []
        predict_ab = model.predict_ab

        def recording_predict_ab(lightness):
            self.lightness.append(lightness.float().cpu().clone())
            return predict_ab(lightness)

        model.predict_ab = recording_predict_ab
        model.register_forward_pre_hook(lambda module, args: self.network_input.append(args[0].float().cpu().clone()))


@pytest.fixture(scope="module")
def model():
    return build_tiny_model(input_size=INPUT_SIZE)


@pytest.mark.parametrize("path", ["opencv", "torch"])
def test_model_input_equals_upstream_preprocessing(model, path):
    colorizer = Colorizer(model)
    photos = _photos()
    recorded = RecordingInputs(model)
    images = list(photos.values())
    outputs = colorizer.run_batch(images) if path == "opencv" else colorizer._colorize_on_device(images)
    lightness = torch.cat(recorded.lightness)[:, 0].numpy()
    network_input = torch.cat(recorded.network_input).permute(0, 2, 3, 1).numpy()
    for index, (name, image) in enumerate(photos.items()):
        expected_lightness, expected_rgb = upstream_model_input(image, INPUT_SIZE)
        l_error = np.abs(lightness[index] - expected_lightness).max()
        rgb_error = np.abs(network_input[index] - expected_rgb).max()
        print(f"{path} {name}: max |L - upstream L| {l_error:.2e}, max |net input - upstream| {rgb_error:.2e}")
        assert l_error < 1e-4, name
        assert rgb_error < 1e-4, name
        assert outputs[index].shape == image.shape
