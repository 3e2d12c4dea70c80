"""Weight-free repair of scratches, dust and hairline tears in old photos.

Detection works on luminance with morphology. A white top-hat (bright damage) and a black-hat
(dark damage) with a disk a little wider than the widest scratch isolate thin features. A pixel
counts as damage when its response beats a robust global threshold (median + k * MAD) plus a
penalty for local image structure, so texture and object edges need far more contrast than a
scratch on a smooth area. Of those pixels we keep components that lie on straight runs (grey-level
openings with line-shaped elements at several angles) adding up to a minimum length, plus small
high-contrast specks (dust); blobs and short wiggles are real content. Found scratches are then
extended along weaker line evidence, the mask is dilated a little, and cv2.inpaint fills it (or a
learned inpainter such as pipeline.stages.inpainting.LamaInpainter, when one is given).
All sizes are fractions of the shorter image side, so settings hold at any resolution.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import cv2
import numpy as np

_MIN_SIDE = 16  # below this there is no room to tell a scratch from image content
_INPAINT_METHODS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}

# (images, masks with 255 = hole) -> filled images of the same shapes; one call per batch.
Inpainter = Callable[[list[np.ndarray], list[np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class ScratchRepairSettings:
    """Detection and inpainting knobs; *_fraction values are relative to the shorter image side."""

    scratch_width_fraction: float = 0.01  # disk for top-/black-hat; 5 px at 512 (min 5)
    line_length_fraction: float = 0.03  # line elements for straightness; clamped to 9..41 px
    line_angles: int = 12
    min_scratch_length_fraction: float = 0.06  # straight evidence a kept component needs
    contrast_floor: float = 30.0  # grey levels a scratch must at least stand out by
    contrast_mads: float = 6.0  # ... and at least median + this * MAD of the response
    structure_weight: float = 1.3  # extra contrast demanded per unit of local image structure
    line_weight: float = 1.3  # straight-run response needed, relative to the pixel threshold
    growth_fraction: float = 0.05  # how far found scratches extend along weaker evidence
    growth_structure_weight: float = 0.3  # structure penalty while extending
    speck_contrast: float = 60.0  # dust: minimum response ...
    speck_threshold_ratio: float = 2.5  # ... and at least this times the pixel threshold
    dilation_fraction: float = 0.002  # mask growth to cover soft edges; 1 px at 512 (min 1)
    inpaint_radius_fraction: float = 0.006  # 3 px at 512 (min 2)
    method: Literal["telea", "ns"] = "telea"

    def __post_init__(self) -> None:
        if self.method not in _INPAINT_METHODS:
            raise ValueError(f"method must be one of {sorted(_INPAINT_METHODS)}, got {self.method!r}")
        if self.line_angles < 4:
            raise ValueError(f"line_angles must be at least 4, got {self.line_angles}")
        positive = ("scratch_width_fraction", "line_length_fraction", "contrast_floor", "speck_contrast")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class _Scale:
    """Pixel sizes for one image."""

    disk: int
    line: int
    min_length: float
    growth: float
    dilation: int
    inpaint_radius: int

    @classmethod
    def for_side(cls, side: int, s: ScratchRepairSettings) -> _Scale:
        return cls(
            disk=_odd(max(5, side * s.scratch_width_fraction)),
            line=_odd(float(np.clip(side * s.line_length_fraction, 9, 41))),
            min_length=side * s.min_scratch_length_fraction,
            growth=side * s.growth_fraction,
            dilation=max(1, round(side * s.dilation_fraction)),
            inpaint_radius=max(2, round(side * s.inpaint_radius_fraction)),
        )


class ScratchRepairer:
    """Finds thin bright/dark damage and inpaints it; everything else stays bit-exact."""

    def __init__(self, settings: ScratchRepairSettings = ScratchRepairSettings(),
                 inpainter: Inpainter | None = None) -> None:
        self.settings = settings
        self.inpainter = inpainter  # None: cv2.inpaint with settings.method

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 HxWx3 RGB -> uint8 HxW mask, 255 where the photo looks damaged."""
        _check_rgb(rgb)
        height, width = rgb.shape[:2]
        mask = np.zeros((height, width), np.uint8)
        if min(height, width) < _MIN_SIDE:
            return mask
        scale = _Scale.for_side(min(height, width), self.settings)
        luminance = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
        structure = _local_structure(luminance, scale)
        disk = _disk(scale.disk)
        for operation in (cv2.MORPH_TOPHAT, cv2.MORPH_BLACKHAT):  # bright damage, then dark damage
            response = cv2.morphologyEx(luminance, operation, disk)
            mask |= _damage_of_one_polarity(response, structure, scale, self.settings)
        mask = cv2.dilate(mask, _disk(2 * scale.dilation + 1))
        return mask

    def repair(self, rgb: np.ndarray) -> np.ndarray:
        """Same shape and dtype; only pixels inside the detected mask change."""
        return self.run_batch([rgb])[0]

    def run_batch(self, images: list[np.ndarray], options: list[dict] | None = None) -> list[np.ndarray]:
        """repair() for each image (no per-request options); a learned inpainter gets all damaged images in one call."""
        masks = [self.detect(image) for image in images]
        damaged = [index for index, mask in enumerate(masks) if mask.any()]
        outputs = [image.copy() for image in images]
        if not damaged:
            return outputs
        if self.inpainter is None:
            filled = [self._cv2_inpaint(images[index], masks[index]) for index in damaged]
        else:
            filled = self.inpainter([images[index] for index in damaged], [masks[index] for index in damaged])
        for index, fill in zip(damaged, filled):
            mask = masks[index]
            # guarantee untouched pixels stay bit-exact, whatever the inpainter does
            outputs[index] = np.where(mask[..., None] > 0, fill, images[index])
        return outputs

    def _cv2_inpaint(self, rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        scale = _Scale.for_side(min(rgb.shape[:2]), self.settings)
        return cv2.inpaint(np.ascontiguousarray(rgb), mask, scale.inpaint_radius, _INPAINT_METHODS[self.settings.method])


def _damage_of_one_polarity(
    response: np.ndarray, structure: np.ndarray, scale: _Scale, s: ScratchRepairSettings
) -> np.ndarray:
    """Mask (0/255) of scratches and specks in one top-hat or black-hat response."""
    response_f = response.astype(np.float32)
    median = float(np.median(response_f))
    mad = 1.4826 * float(np.median(np.abs(response_f - median)))  # robust std of the response
    base = max(s.contrast_floor, median + s.contrast_mads * mad)
    threshold = base + s.structure_weight * structure
    straight = _straight_run_response(response, scale, s.line_angles)
    candidates = (response_f > threshold).astype(np.uint8)
    on_line = (straight > threshold * s.line_weight) & (candidates > 0)

    count, labels, stats, _ = cv2.connectedComponentsWithStats(candidates, connectivity=8)
    straight_pixels = np.bincount(labels[on_line], minlength=count)
    is_scratch = straight_pixels >= scale.min_length
    very_strong = response_f > np.maximum(s.speck_contrast, s.speck_threshold_ratio * threshold)
    is_speck = (stats[:, cv2.CC_STAT_AREA] <= scale.disk**2) & (np.bincount(labels[very_strong], minlength=count) > 0)
    keep = is_scratch | is_speck
    keep[0] = False  # background label
    found = keep[labels]

    # Extend scratches through busier areas where the full structure penalty hid them.
    weaker = base + s.growth_structure_weight * structure
    extendable = (straight > weaker * s.line_weight) & (response_f > weaker)
    found = _grow_within(found, extendable, scale.growth)
    return found.astype(np.uint8) * 255


def _straight_run_response(response: np.ndarray, scale: _Scale, angles: int) -> np.ndarray:
    """Per pixel, the strongest response sustained along a straight segment through it."""
    # Widening first lets a 1 px line at an angle between two kernels still fit one of them.
    widened = cv2.dilate(response, np.ones((3, 3), np.uint8))
    best = np.zeros_like(response)
    for kernel in _line_kernels(scale.line, angles):
        np.maximum(best, cv2.morphologyEx(widened, cv2.MORPH_OPEN, kernel), out=best)
    return best.astype(np.float32)


def _local_structure(luminance: np.ndarray, scale: _Scale) -> np.ndarray:
    """How busy the image is around each pixel once thin features are removed (grey levels)."""
    background = cv2.medianBlur(luminance, _odd(2 * scale.disk))  # wide enough to erase scratches
    step = _odd(0.6 * scale.disk)  # 3 px at 512: the gradient must span the same share of the image
    gradient = cv2.morphologyEx(background, cv2.MORPH_GRADIENT, np.ones((step, step), np.uint8))
    neighbourhood = _odd(3 * scale.disk)
    return cv2.dilate(gradient, np.ones((neighbourhood, neighbourhood), np.uint8)).astype(np.float32)


def _grow_within(seeds: np.ndarray, allowed: np.ndarray, max_distance: float) -> np.ndarray:
    """Seeds plus the parts of `allowed` near them (within max_distance) connected to them."""
    if not seeds.any():
        return seeds
    distance = cv2.distanceTransform((~seeds).astype(np.uint8), cv2.DIST_L2, 3)
    region = (seeds | (allowed & (distance <= max_distance))).astype(np.uint8)
    count, labels = cv2.connectedComponents(region, connectivity=8)
    touched = np.zeros(count, bool)
    touched[np.unique(labels[seeds])] = True
    touched[0] = False
    return touched[labels]


@lru_cache(maxsize=16)
def _line_kernels(length: int, angles: int) -> tuple[np.ndarray, ...]:
    centre = (length - 1) / 2
    kernels = []
    for index in range(angles):
        angle = np.pi * index / angles
        dx, dy = np.cos(angle) * centre, np.sin(angle) * centre
        kernel = np.zeros((length, length), np.uint8)
        start = (int(round(centre - dx)), int(round(centre - dy)))
        end = (int(round(centre + dx)), int(round(centre + dy)))
        cv2.line(kernel, start, end, 1, 1)
        kernels.append(kernel)
    return tuple(kernels)


def _disk(size: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def _odd(value: float) -> int:
    return max(3, int(round(value)) | 1)


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        dtype = getattr(rgb, "dtype", type(rgb).__name__)
        raise ValueError(f"expected a uint8 HxWx3 RGB array, got shape {shape} and dtype {dtype}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"image is empty: shape {rgb.shape}")
