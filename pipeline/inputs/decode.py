"""Decoding client images into one canonical form.

Everything downstream sees ``uint8`` RGB arrays of shape (H, W, 3); alpha, when the
source has one, travels beside it so it can be put back on PNG outputs.
"""
from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import InvalidImageError

# Formats a photo arrives in; EPS/PDF-style formats are refused (they run interpreters).
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")  # JPEG also opens MPO
EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "TIFF": "tif", "BMP": "bmp", "GIF": "gif"}

# Pillow refuses images above 2x this at open(); we apply our own, lower limit after
# reading the header, so this only guards against headers that lie wildly.
Image.MAX_IMAGE_PIXELS = 1 << 30
STRIP_PIXELS = 1 << 20  # rows converted at a time: about 1 MP


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray            # uint8 (H, W, 3)
    alpha: np.ndarray | None   # uint8 (H, W), or None when fully opaque / absent
    format: str                # Pillow format name, e.g. "JPEG"

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]


def image_size(data: bytes, *, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the image's header alone, nothing decoded; raise InvalidImageError for
    what ``decode_image`` would refuse before decoding (empty, unsupported, over ``max_pixels``)."""
    with _opened(data, max_pixels=max_pixels) as image:
        return image.size


def decode_image(data: bytes, *, max_pixels: int) -> DecodedImage:
    """Decode, orient (EXIF) and normalise any supported image; raise InvalidImageError."""
    with _opened(data, max_pixels=max_pixels) as image:
        fmt = image.format or "PNG"
        image.seek(0)  # first frame of animations
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy when already upright
    rgb, alpha = _to_rgb(image)
    return DecodedImage(rgb=rgb, alpha=alpha, format=fmt)


@contextmanager
def _opened(data: bytes, *, max_pixels: int) -> Iterator[Image.Image]:
    """The image opened (header read, pixels not decoded) and checked against ``max_pixels``; Pillow's
    failures inside the block become InvalidImageError."""
    if not data:
        raise InvalidImageError("image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
            width, height = image.size
            if width < 1 or height < 1:
                raise InvalidImageError("image has no pixels")
            if width * height > max_pixels:
                raise InvalidImageError(
                    f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
            yield image
    except InvalidImageError:
        raise
    except UnidentifiedImageError:
        raise InvalidImageError(
            "image is not a supported format (" + ", ".join(sorted(set(EXTENSIONS.values()))) + ")") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImageError(f"image rejected as a decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
        raise InvalidImageError(f"image data is truncated or corrupt ({exc})") from None


def _to_rgb(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Converted one strip of rows at a time into the result arrays: converting the whole image
    at once holds two more full-size copies (Pillow's converted image and its bytes) beside
    Pillow's decoded one. Every conversion here is per pixel, so strips give the same pixels."""
    width, height = image.size
    mode = image.mode
    rgb = np.empty((height, width, 3), np.uint8)
    if mode.startswith("I") or mode == "F":
        peak = max(float(np.asarray(strip).max()) for strip in _strips(image))
        for rows, strip in zip(_rows(image), _strips(image)):
            rgb[rows] = _high_depth_to_rgb(np.asarray(strip), peak)
        return rgb, None
    has_alpha = "A" in mode or "a" in mode or (mode in ("P", "L", "RGB") and "transparency" in image.info)
    alpha = np.empty((height, width), np.uint8) if has_alpha else None
    for rows, strip in zip(_rows(image), _strips(image)):
        if alpha is not None:
            rgba = np.asarray(strip.convert("RGBA"))
            rgb[rows], alpha[rows] = rgba[..., :3], rgba[..., 3]
        else:
            rgb[rows] = np.asarray(strip if strip.mode == "RGB" else strip.convert("RGB"))
    if alpha is not None and alpha.min() == 255:
        alpha = None
    return rgb, alpha


def _rows(image: Image.Image) -> Iterator[slice]:
    width, height = image.size
    step = max(1, STRIP_PIXELS // width)
    return (slice(top, min(height, top + step)) for top in range(0, height, step))


def _strips(image: Image.Image) -> Iterator[Image.Image]:
    return (image.crop((0, rows.start, image.width, rows.stop)) for rows in _rows(image))


def _high_depth_to_rgb(values: np.ndarray, peak: float) -> np.ndarray:
    """16/32-bit integer and float greyscale -> 8 bits, by the range the data can hold (``peak``:
    the whole image's largest value).

    Pillow's convert("L") clips I;16 at 255, which turns most 16-bit scans white.
    """
    kind = values.dtype.kind
    values = values.astype(np.float64)
    if kind == "f" and peak <= 1.0:
        scale = 255.0
    elif peak <= 255:
        scale = 1.0
    elif peak <= 65535:
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / peak
    grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)
