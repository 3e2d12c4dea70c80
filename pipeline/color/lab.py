"""CIE Lab helpers (D65, sRGB) shared by every colorizer.

Models predict chroma (ab) at their own resolution; we keep the ORIGINAL full-resolution
lightness so the output has the input's size, aspect ratio and sharpness.

Pixels become floats as DDColor's upstream inference makes them (``(img / 255.0).astype(float32)``):
a float32 division, which equals that for every uint8 value (multiplying by 1/255 does not).

Memory: done in one go, the full-resolution steps hold several float32 (H, W, 3) buffers at once
(2.2 GB peak for a 49 MP photo). Photos above ``STRIP_ABOVE_PIXELS`` are therefore converted in
strips of rows of about ``STRIP_PIXELS`` each; only the (H, W) lightness, the uint8 result and the
chroma widened to the photo's width at model height are full-width. Lightness by strips equals
the one-shot result exactly (every step is per pixel); the merge differs only where the model's
chroma is upsampled (one strip's rows at a time, not OpenCV's whole-image resize): the same taps
and weights, last-bit differences in a few chroma values, at most one 8-bit level in the output.
"""
from __future__ import annotations

import cv2
import numpy as np

AB_MIN, AB_MAX = -128.0, 127.0
STRIP_ABOVE_PIXELS = 1 << 23  # 8 MiP (a 3840x2160 frame is below): smaller photos take the one-shot path
STRIP_PIXELS = 1 << 19        # about 0.5 MP per strip: 6 MB per float32 RGB buffer


def unit_float(rgb: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1], bit-identical to upstream's ``(rgb / 255.0).astype(np.float32)``."""
    return rgb.astype(np.float32) / np.float32(255.0)


def lightness(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> float32 (H, W) L in [0, 100]."""
    height, width = rgb.shape[:2]
    if height * width <= STRIP_ABOVE_PIXELS:
        return _lightness(rgb)
    full = np.empty((height, width), np.float32)
    for rows in _strips(height, width):
        full[rows] = _lightness(rgb[rows])
    return full


def _lightness(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(unit_float(rgb), cv2.COLOR_RGB2Lab)[..., 0]


def model_lightness(rgb: np.ndarray, size: int) -> np.ndarray:
    """L of the image resized to the model's square input as DDColor's upstream inference does it
    (piddnad/DDColor ddcolor/pipeline.py): the float image, ``cv2.resize`` with its default
    INTER_LINEAR (no antialiasing, also when shrinking), then L. The networks were trained and
    published with this input; an area filter gives a different L (up to 16 units at edges)."""
    if rgb.shape[0] * rgb.shape[1] <= STRIP_ABOVE_PIXELS:
        small = cv2.resize(unit_float(rgb), (size, size), interpolation=cv2.INTER_LINEAR)
    else:  # a big scan: only the source rows the vertical taps read are made float (86 MB, not 588, at 49 MP)
        small = _shrink_rows_read(rgb, size)
    return cv2.cvtColor(small, cv2.COLOR_RGB2Lab)[..., 0]


def _shrink_rows_read(rgb: np.ndarray, size: int) -> np.ndarray:
    """``cv2.resize(unit_float(rgb), (size, size), INTER_LINEAR)`` reading only the rows it uses:
    OpenCV's linear resize is separable (along rows, then the vertical taps), so the same taps
    applied to just those rows give the same input within float rounding."""
    first, second, weight = _linear_taps(rgb.shape[0], size)
    rows, index = np.unique(np.concatenate([first, second]), return_inverse=True)
    wide = cv2.resize(unit_float(rgb[rows]), (size, len(rows)), interpolation=cv2.INTER_LINEAR)
    top, bottom = wide[index[:size]], wide[index[size:]]
    return top + (bottom - top) * weight[:, None, None]


def merge_lightness_ab(full_lightness: np.ndarray, ab: np.ndarray, *,
                       strip_above_pixels: int = STRIP_ABOVE_PIXELS) -> np.ndarray:
    """Full-res L (H, W) + model ab (h, w, 2) -> uint8 RGB (H, W, 3)."""
    height, width = full_lightness.shape
    ab = np.clip(ab.astype(np.float32), AB_MIN, AB_MAX)  # at model resolution: clipping is cheap here
    if height * width <= strip_above_pixels:
        if ab.shape[:2] != (height, width):
            ab = cv2.resize(ab, (width, height), interpolation=cv2.INTER_LINEAR)
        return _merge(full_lightness, ab)
    rgb = np.empty((height, width, 3), np.uint8)
    # OpenCV's INTER_LINEAR is separable: resize along rows at model height (small), then take
    # each strip's rows as OpenCV's vertical pass does (same taps and weights, float32).
    wide = cv2.resize(ab, (width, ab.shape[0]), interpolation=cv2.INTER_LINEAR) if ab.shape[1] != width else ab
    top, bottom, weight = _linear_taps(ab.shape[0], height)
    for rows in _strips(height, width):
        if ab.shape[0] == height:
            strip_ab = wide[rows]
        else:
            t = weight[rows, None, None]
            strip_ab = wide[top[rows]]  # first * (1 - t) + second * t, in place: no more temporaries
            strip_ab *= np.float32(1.0) - t
            second = wide[bottom[rows]]
            second *= t
            strip_ab += second
        rgb[rows] = _merge(full_lightness[rows], strip_ab)
    return rgb


def _merge(full_lightness: np.ndarray, ab: np.ndarray) -> np.ndarray:
    # OpenCV's merge and saturating convert: ~4x faster than dstack + rint/clip/astype at 512 px,
    # bit-identical (cvRound and np.rint both round half to even; values are >= 0 when scaled).
    lab = cv2.merge([full_lightness.astype(np.float32, copy=False), ab[..., 0], ab[..., 1]])
    rgb = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
    np.maximum(rgb, 0.0, out=rgb)
    return cv2.convertScaleAbs(rgb, alpha=255.0)


def _strips(height: int, width: int):
    step = max(1, STRIP_PIXELS // max(1, width))
    for start in range(0, height, step):
        yield slice(start, min(height, start + step))


def _linear_taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's INTER_LINEAR taps along one axis: half-pixel centres computed in double, rounded to
    float32, clamped at the edges (weight 0 on the repeated pixel) -> (first, second, weight of second)."""
    position = ((np.arange(target, dtype=np.float64) + 0.5) * (1.0 / (target / source)) - 0.5).astype(np.float32)
    first = np.floor(position)
    weight = (position - first).astype(np.float32)
    first = first.astype(np.int64)
    weight[(first < 0) | (first >= source - 1)] = 0.0
    first = np.clip(first, 0, source - 1)
    return first, np.minimum(first + 1, source - 1), weight
