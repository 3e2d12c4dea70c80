"""Decoding client images into one canonical form.

Everything downstream sees ``uint8`` RGB arrays of shape (H, W, 3); alpha, when the
source has one, travels beside it so it can be put back on PNG outputs.
"""
from __future__ import annotations

import io
import struct
import warnings
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


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray            # uint8 (H, W, 3)
    alpha: np.ndarray | None   # uint8 (H, W), or None when fully opaque / absent
    format: str                # Pillow format name, e.g. "JPEG"

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]


def decode_image(data: bytes, *, max_pixels: int) -> DecodedImage:
    """Decode, orient (EXIF) and normalise any supported image; raise InvalidImageError."""
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
            fmt = image.format or "PNG"
            image.seek(0)  # first frame of animations
            image.load()
            image = ImageOps.exif_transpose(image)
    except InvalidImageError:
        raise
    except UnidentifiedImageError:
        raise InvalidImageError(
            "image is not a supported format (" + ", ".join(sorted(set(EXTENSIONS.values()))) + ")") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImageError(f"image rejected as a decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
        raise InvalidImageError(f"image data is truncated or corrupt ({exc})") from None
    rgb, alpha = _to_rgb(image)
    return DecodedImage(rgb=rgb, alpha=alpha, format=fmt)


def _to_rgb(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_rgb(np.asarray(image)), None
    alpha = None
    has_alpha = "A" in mode or "a" in mode or (mode in ("P", "L", "RGB") and "transparency" in image.info)
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"))
        alpha = np.ascontiguousarray(rgba[..., 3])
        if alpha.min() == 255:
            alpha = None
        rgb = np.ascontiguousarray(rgba[..., :3])
    else:
        rgb = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(rgb, dtype=np.uint8), alpha


def _high_depth_to_rgb(values: np.ndarray) -> np.ndarray:
    """16/32-bit integer and float greyscale -> 8 bits, by the range the data can hold.

    Pillow's convert("L") clips I;16 at 255, which turns most 16-bit scans white.
    """
    values = values.astype(np.float64)
    peak = float(values.max()) if values.size else 0.0
    if values.dtype.kind == "f" and peak <= 1.0:
        scale = 255.0
    elif peak <= 255:
        scale = 1.0
    elif peak <= 65535:
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / peak
    grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
