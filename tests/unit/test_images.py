"""pipeline.inputs.decode and pipeline.color.lab: decoding every format/mode, encoding, the Lab merge."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.errors import InvalidImageError
from pipeline.encode import encode_image
from pipeline.inputs.decode import decode_image
from pipeline.color.lab import lightness, merge_lightness_ab, model_lightness
from tests.helpers import encode, photo

LIMIT = 10_000_000


def save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"])
def test_formats_decode_to_rgb(fmt):
    decoded = decode_image(encode(photo(40, 30), fmt), max_pixels=LIMIT)
    assert decoded.rgb.shape == (30, 40, 3) and decoded.rgb.dtype == np.uint8
    assert decoded.format == fmt and decoded.alpha is None


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I", "F"])
def test_modes_normalise(mode):
    image = Image.fromarray(photo(20, 10)).convert(mode)
    fmt = "TIFF" if mode in ("I", "F", "CMYK") else "PNG"
    decoded = decode_image(save(image, fmt), max_pixels=LIMIT)
    assert decoded.rgb.shape == (10, 20, 3)
    assert decoded.alpha is None  # no alpha, or a fully opaque one (dropped)


def test_sixteen_bit_keeps_its_range():
    values = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    decoded = decode_image(save(Image.fromarray(values), "PNG"), max_pixels=LIMIT)
    assert decoded.rgb[..., 0].max() == 255 and decoded.rgb[..., 0].min() == 0  # not clipped to white


def test_alpha_and_palette_transparency():
    rgba = np.dstack([photo(16, 8), np.linspace(0, 255, 128, dtype=np.uint8).reshape(8, 16)])
    decoded = decode_image(encode(rgba, "PNG"), max_pixels=LIMIT)
    np.testing.assert_array_equal(decoded.alpha, rgba[..., 3])
    png = encode_image(decoded.rgb, "PNG", alpha=decoded.alpha)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), rgba)


def test_exif_orientation_applied():
    image = Image.fromarray(photo(40, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    decoded = decode_image(save(image, "JPEG", exif=exif), max_pixels=LIMIT)
    assert decoded.rgb.shape == (40, 20, 3)


def test_gif_first_frame():
    frames = [Image.fromarray(np.full((8, 8, 3), value, np.uint8)) for value in (10, 250)]
    data = save(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert abs(int(decode_image(data, max_pixels=LIMIT).rgb.mean()) - 10) <= 2


@pytest.mark.parametrize("data,message", [
    (b"", "empty"), (b"GIF89a" + b"\x00" * 10, "supported format"), (b"plain text", "supported format"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n", "supported format"),
])
def test_bad_data(data, message):
    with pytest.raises(InvalidImageError, match=message):
        decode_image(data, max_pixels=LIMIT)


def test_truncated_and_too_many_pixels():
    jpeg = encode(photo(64, 64))
    with pytest.raises(InvalidImageError, match="truncated"):
        decode_image(jpeg[:300], max_pixels=LIMIT)
    with pytest.raises(InvalidImageError, match="pixels"):
        decode_image(jpeg, max_pixels=64 * 63)


def test_jpeg_composites_alpha_on_white():
    rgb = np.zeros((4, 4, 3), np.uint8)
    data = encode_image(rgb, "JPEG", alpha=np.zeros((4, 4), np.uint8))
    assert np.asarray(Image.open(io.BytesIO(data))).min() > 245


def test_merge_keeps_full_resolution_lightness():
    rgb = photo(300, 170)
    full = lightness(rgb)
    ab = np.zeros((64, 64, 2), np.float32)
    ab[..., 0] = 30.0  # reddish everywhere
    merged = merge_lightness_ab(full, ab)
    assert merged.shape == rgb.shape
    error = np.abs(lightness(merged) - full)
    assert np.median(error) < 0.5 and error.max() < 3  # 8-bit rounding; gamut clipping at the brightest
    assert (merged[..., 0].astype(int) - merged[..., 1]).mean() > 10  # and the chroma arrived


def test_ab_is_clamped_and_model_input_square():
    merged = merge_lightness_ab(np.full((4, 4), 50, np.float32), np.full((2, 2, 2), 1e9, np.float32))
    assert merged.dtype == np.uint8
    assert model_lightness(photo(300, 170), 256).shape == (256, 256)


def test_merge_matches_the_plain_numpy_formula_bit_for_bit():
    # Out-of-gamut ab on purpose: the fast path must clip exactly like rint/clip/astype would.
    rng = np.random.default_rng(3)
    full = rng.uniform(0, 100, (97, 131)).astype(np.float32)
    ab = rng.uniform(-140, 140, (97, 131, 2)).astype(np.float32)
    rgb = cv2.cvtColor(np.dstack([full, np.clip(ab, -128, 127)]), cv2.COLOR_Lab2RGB)
    expected = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(merge_lightness_ab(full, ab), expected)
