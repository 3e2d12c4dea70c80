"""CIE Lab helpers (D65, sRGB) shared by every colorizer.

Models predict chroma (ab) at their own resolution; we keep the ORIGINAL full-resolution
lightness so the output has the input's size, aspect ratio and sharpness.

Pixels become floats as DDColor's upstream inference makes them (``(img / 255.0).astype(float32)``):
a float32 division, which equals that for every uint8 value (multiplying by 1/255 does not).
"""
from __future__ import annotations

import cv2
import numpy as np

AB_MIN, AB_MAX = -128.0, 127.0


def unit_float(rgb: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1], bit-identical to upstream's ``(rgb / 255.0).astype(np.float32)``."""
    return rgb.astype(np.float32) / np.float32(255.0)


def lightness(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> float32 (H, W) L in [0, 100]."""
    return cv2.cvtColor(unit_float(rgb), cv2.COLOR_RGB2Lab)[..., 0]


def model_lightness(rgb: np.ndarray, size: int) -> np.ndarray:
    """L of the image resized to the model's square input as DDColor's upstream inference does it
    (piddnad/DDColor ddcolor/pipeline.py): the float image, ``cv2.resize`` with its default
    INTER_LINEAR (no antialiasing, also when shrinking), then L. The networks were trained and
    published with this input; an area filter gives a different L (up to 16 units at edges)."""
    small = cv2.resize(unit_float(rgb), (size, size), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(small, cv2.COLOR_RGB2Lab)[..., 0]


def merge_lightness_ab(full_lightness: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """Full-res L (H, W) + model ab (h, w, 2) -> uint8 RGB (H, W, 3)."""
    height, width = full_lightness.shape
    ab = np.clip(ab.astype(np.float32), AB_MIN, AB_MAX)  # at model resolution: clipping is cheap here
    if ab.shape[:2] != (height, width):
        ab = cv2.resize(ab, (width, height), interpolation=cv2.INTER_LINEAR)
    # OpenCV's merge and saturating convert: ~4x faster than dstack + rint/clip/astype at 512 px,
    # bit-identical (cvRound and np.rint both round half to even; values are >= 0 when scaled).
    lab = cv2.merge([full_lightness.astype(np.float32, copy=False), ab[..., 0], ab[..., 1]])
    rgb = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
    np.maximum(rgb, 0.0, out=rgb)
    return cv2.convertScaleAbs(rgb, alpha=255.0)
