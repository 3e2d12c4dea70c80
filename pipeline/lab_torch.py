"""sRGB -> Lab lightness in torch, equal to OpenCV's float32 ``cv2.COLOR_RGB2Lab`` L channel.

With ``pipeline.models.ddcolor_lab.lab_to_rgb`` this lets the colorizer keep a whole batch's
resizing and Lab merge on the accelerator instead of in single-threaded OpenCV on the host.

OpenCV does not evaluate the CIE formula for float sRGB input: it rounds each channel to
1/16384, and interpolates trilinearly (fixed point, 1/16 steps inside a cell) between Lab
values tabulated on a 33x33x33 grid of RGB colours (``RGB2Lab_f`` with
``enableRGB2LabInterpolation``, OpenCV's color_lab.cpp). That differs from the exact formula by
up to ~0.25 L in dark tones, so it is reproduced here step by step; the grid's L values are
read from OpenCV itself (at grid colours the interpolation returns the node exactly).
"""
from __future__ import annotations

import functools

import cv2
import numpy as np
import torch

from .models.ddcolor_lab import lab_to_rgb

__all__ = ["lab_to_rgb", "rgb_lightness"]

_BASE_SHIFT = 14               # channels are rounded to 1/2**14 (LAB_BASE)
_GRID = 33                     # nodes per axis (LAB_LUT_DIM), cells of 2**9 steps
_CELL_SHIFT = _BASE_SHIFT - 5
_FRACTION_SHIFT = _BASE_SHIFT - 9  # position inside a cell in 16 steps
_STEPS = 16                    # per axis; the 8 corner weights sum to 16**3 = 2**12


@functools.lru_cache(maxsize=None)
def _grid_lightness(device: torch.device) -> torch.Tensor:
    """(33, 33, 33) int32 tabulated L (in 1/16384 of 100) indexed [R, G, B], read back from OpenCV."""
    steps = np.arange(_GRID, dtype=np.float32) / np.float32(_GRID - 1)
    red, green, blue = np.meshgrid(steps, steps, steps, indexing="ij")
    colours = np.stack([red, green, blue], axis=-1).reshape(-1, 1, 3)
    lightness = cv2.cvtColor(colours, cv2.COLOR_RGB2Lab)[:, 0, 0].astype(np.float64)
    nodes = np.rint(lightness * (1 << _BASE_SHIFT) / 100.0).astype(np.int32).reshape(_GRID, _GRID, _GRID)
    return torch.from_numpy(nodes).to(device)


def rgb_lightness(rgb: torch.Tensor) -> torch.Tensor:
    """(N,3,H,W) sRGB in [0,1] -> (N,1,H,W) L in [0,100], as OpenCV's float RGB2Lab computes it."""
    nodes = _grid_lightness(rgb.device)
    fixed = torch.round(rgb.float().clamp(0.0, 1.0) * float(1 << _BASE_SHIFT)).to(torch.int32)  # half to even
    cell = fixed >> _CELL_SHIFT
    fraction = (fixed >> _FRACTION_SHIFT) & (_STEPS - 1)
    total = torch.zeros_like(fixed[:, :1])
    for offset in range(8):  # corners: +1 on R if offset & 4, on G if & 2, on B if & 1
        index, weight = [], 1
        for axis, bit in enumerate((4, 2, 1)):
            step = 1 if offset & bit else 0
            index.append((cell[:, axis:axis + 1] + step).clamp(max=_GRID - 1))
            weight = weight * (fraction[:, axis:axis + 1] if step else _STEPS - fraction[:, axis:axis + 1])
        total = total + nodes[index[0], index[1], index[2]] * weight
    lightness = (total + (1 << 11)) >> 12  # OpenCV's rounding descale of the 2**12 weight sum
    return lightness.float() * (100.0 / (1 << _BASE_SHIFT))  # exact: 100/16384 is a short binary fraction
