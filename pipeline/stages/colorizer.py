"""Feed-forward colorization of a batch of images of any sizes.

A model is anything with ``input_size`` (square side) and ``predict_ab(L)`` mapping
(N,1,S,S) lightness in [0,100] to (N,2,S,S) Lab ab. The whole batch runs as one forward.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.color.lab import AB_MAX, AB_MIN, lightness, merge_lightness_ab, model_lightness
from pipeline.color.lab_torch import lab_to_rgb, rgb_lightness


class Colorizer:
    # DDColor's decoder at batch 32 x 512 px exceeds 2**31 elements in one tensor (CUDA index limit).
    def __init__(self, model: nn.Module, *, max_forward_batch: int = 16):
        self.model = model.eval()
        self.input_size = int(model.input_size)
        self.max_forward_batch = max_forward_batch
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype

    @torch.inference_mode()
    def predict_ab(self, images: list[np.ndarray]) -> np.ndarray:
        """(N,) uint8 RGB images -> float32 (N, S, S, 2) ab at model resolution."""
        lightness_in = np.stack([model_lightness(image, self.input_size) for image in images])[:, None]
        outputs = []
        for start in range(0, len(images), self.max_forward_batch):
            chunk = torch.from_numpy(lightness_in[start:start + self.max_forward_batch])
            ab = self.model.predict_ab(chunk.to(self.device, self.dtype))
            outputs.append(ab.float().cpu().numpy())
        return np.concatenate(outputs).transpose(0, 2, 3, 1)

    def run_batch(self, images: list[np.ndarray], options: list[dict] | None = None) -> list[np.ndarray]:
        """``options`` (prompt, seed) only steer text-guided models; a feed-forward model has none."""
        if not images:
            return []
        if self.device.type != "cpu":
            return self._colorize_on_device(images)
        ab = self.predict_ab(images)
        return [merge_lightness_ab(lightness(image), ab[i]) for i, image in enumerate(images)]

    @torch.inference_mode()
    def _colorize_on_device(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """The same steps in torch on the accelerator: on a GPU the host-side OpenCV resizes and
        Lab conversions of large photos cost more than the network itself."""
        size = self.input_size
        photos = [torch.from_numpy(image).to(self.device).permute(2, 0, 1)[None].float() / 255.0
                  for image in images]
        smalls = [F.interpolate(photo, size=(size, size), mode="area") if min(photo.shape[-2:]) >= size
                  else F.interpolate(photo, size=(size, size), mode="bicubic", align_corners=False)
                  for photo in photos]
        small_lightness = rgb_lightness(torch.cat(smalls))
        ab = torch.cat([self.model.predict_ab(small_lightness[start:start + self.max_forward_batch].to(self.dtype))
                        for start in range(0, len(images), self.max_forward_batch)]).float()
        outputs = []
        for index, photo in enumerate(photos):
            full_ab = F.interpolate(ab[index:index + 1], size=photo.shape[-2:], mode="bilinear", align_corners=False)
            lab = torch.cat([rgb_lightness(photo), full_ab.clamp(AB_MIN, AB_MAX)], dim=1)
            rgb = (lab_to_rgb(lab) * 255.0).round().clamp(0, 255).to(torch.uint8)
            outputs.append(rgb[0].permute(1, 2, 0).contiguous())
        return [output.cpu().numpy() for output in outputs]

    def colorize(self, image: np.ndarray) -> np.ndarray:
        return self.run_batch([image])[0]
