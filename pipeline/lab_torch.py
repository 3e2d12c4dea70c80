"""sRGB -> Lab lightness in torch, matching OpenCV's float32 ``cv2.COLOR_RGB2Lab`` L channel.

With ``pipeline.models.ddcolor_lab.lab_to_rgb`` this lets the colorizer keep a whole batch's
resizing and Lab merge on the accelerator instead of in single-threaded OpenCV on the host.
"""
from __future__ import annotations

import torch

from .models.ddcolor_lab import lab_to_rgb

__all__ = ["lab_to_rgb", "rgb_lightness", "srgb_to_linear"]

# Linear sRGB -> Y (D65), as OpenCV's RGB2Lab (the white point's Y is 1).
_Y_FROM_LINEAR = (0.212671, 0.715160, 0.072169)
_EPSILON, _KAPPA = 0.008856, 903.3


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    return torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def rgb_lightness(rgb: torch.Tensor) -> torch.Tensor:
    """(N,3,H,W) sRGB in [0,1] -> (N,1,H,W) L in [0,100]."""
    linear = srgb_to_linear(rgb.float().clamp(0.0, 1.0))
    weights = torch.tensor(_Y_FROM_LINEAR, dtype=torch.float32, device=rgb.device).view(1, 3, 1, 1)
    y = (linear * weights).sum(dim=1, keepdim=True)
    return torch.where(y > _EPSILON, 116.0 * torch.pow(y.clamp_min(1e-12), 1.0 / 3.0) - 16.0, _KAPPA * y)
