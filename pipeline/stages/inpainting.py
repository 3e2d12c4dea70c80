"""Learned inpainting with a LaMa generator (pipeline/models/lama.py), batched.

Pre- and post-processing follow advimman/lama's bin/predict.py with configs/prediction/default.yaml:
image in [0, 1], mask binarised (> 0 is a hole), both padded on the bottom/right to a multiple of 8
with numpy's 'symmetric' mode (saicinpainting/evaluation/data.py pad_img_to_modulo), the generator
fed [image * (1 - mask), mask], its output cropped back and converted with clip(x * 255) truncated
to uint8 as upstream does. One deliberate difference: pixels outside the mask are copied from the
input, not recomposed in float, so they stay bit-exact.

Images of different sizes in one call are grouped by padded size and each group runs as ONE
forward. Padding everything to the largest size instead would change the results: LaMa's Fourier
units see the whole canvas, so extra padding alters every output pixel.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torch import nn

PAD_MODULO = 8  # upstream's pad_out_to_modulo for Big-LaMa (3 stride-2 stages)
MIN_SIDE = 16  # smallest padded side the reflect-padded convs accept (bottleneck at least 2x2)


def _ceil_to(value: int, modulo: int) -> int:
    return max(MIN_SIDE, -(-value // modulo) * modulo)


def _check_pair(index: int, image: np.ndarray, mask: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image {index}: expected an RGB uint8 (H, W, 3) array, got {got}")
    if not isinstance(mask, np.ndarray) or mask.shape != image.shape[:2]:
        got = getattr(mask, "shape", type(mask).__name__)
        raise ValueError(f"mask {index}: expected an (H, W) array matching image {image.shape[:2]}, got {got}")


class LamaInpainter:
    """Fills the holes of RGB uint8 images with a LaMa generator; usable as ScratchRepairer's inpainter.

    generator: an FFCResNetGenerator (or any module with the same 4-in / 3-out contract) in eval mode;
        inputs go to the device and dtype of its parameters.
    max_images_per_forward: None runs each same-size group in one forward; a number caps the chunk
        (bounds accelerator memory).
    """

    def __init__(self, generator: nn.Module, *, max_images_per_forward: int | None = None) -> None:
        if max_images_per_forward is not None and max_images_per_forward < 1:
            raise ValueError(f"max_images_per_forward must be >= 1 or None, got {max_images_per_forward}")
        multiple = getattr(generator, "size_multiple", PAD_MODULO)
        if PAD_MODULO % multiple:
            raise ValueError(f"generator needs sizes divisible by {multiple}; inputs are padded to {PAD_MODULO}")
        self.generator = generator.eval()
        self.max_images_per_forward = max_images_per_forward

    def __call__(self, images: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        return self.inpaint_batch(images, masks)

    def inpaint_batch(self, images: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        """uint8 (H, W, 3) images and (H, W) masks (non-zero = hole) -> new uint8 images, same shapes.
        Only pixels inside a mask can change."""
        if len(images) != len(masks):
            raise ValueError(f"got {len(images)} images but {len(masks)} masks")
        for index, (image, mask) in enumerate(zip(images, masks)):
            _check_pair(index, image, mask)
        holes = [np.asarray(mask) > 0 for mask in masks]
        outputs = [image.copy() for image in images]
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, (image, hole) in enumerate(zip(images, holes)):
            if hole.any():  # nothing to fill: no forward at all
                height, width = image.shape[:2]
                groups[(_ceil_to(height, PAD_MODULO), _ceil_to(width, PAD_MODULO))].append(index)
        chunk = self.max_images_per_forward
        for padded_size, members in groups.items():
            for start in range(0, len(members), chunk or len(members)):
                part = members[start : start + (chunk or len(members))]
                predicted = self.predict([images[i] for i in part], [holes[i] for i in part], padded_size)
                for index, prediction in zip(part, predicted):
                    hole = holes[index]
                    outputs[index][hole] = prediction[hole]
        return outputs

    @torch.inference_mode()
    def predict(self, images: list[np.ndarray], holes: list[np.ndarray], padded_size: tuple[int, int]) -> list[np.ndarray]:
        """The generator's uint8 prediction for every pixel (not composited), one forward for all."""
        parameter = next(self.generator.parameters())
        batch = np.stack([_network_input(image, hole, padded_size) for image, hole in zip(images, holes)])
        inputs = torch.from_numpy(batch).to(device=parameter.device, dtype=parameter.dtype)
        predicted = self.generator(inputs).float().cpu().numpy()
        results = []
        for image, prediction in zip(images, predicted):
            height, width = image.shape[:2]
            cropped = prediction[:, :height, :width].transpose(1, 2, 0)
            results.append(np.clip(cropped * 255, 0, 255).astype(np.uint8))  # truncation, as upstream
        return results


def _network_input(image: np.ndarray, hole: np.ndarray, padded_size: tuple[int, int]) -> np.ndarray:
    """(4, H', W') float32: [masked image, mask], symmetric-padded at the bottom/right like upstream."""
    pixels = image.astype(np.float32).transpose(2, 0, 1) / 255
    mask = hole.astype(np.float32)[None]
    height, width = image.shape[:2]
    pad = ((0, 0), (0, padded_size[0] - height), (0, padded_size[1] - width))
    pixels = np.pad(pixels, pad, mode="symmetric")  # upstream pads image and mask, then masks
    mask = np.pad(mask, pad, mode="symmetric")
    return np.concatenate([pixels * (1 - mask), mask])
