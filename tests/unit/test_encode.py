"""The PNG writer (pipeline/encode.py): lossless and readable by libpng and Pillow with either
compressor, strip by strip; ISA-L is the one used where it is installed."""
from __future__ import annotations

import io
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline import encode


def _photo(height: int, width: int) -> np.ndarray:
    """A colorized-looking photo: grey structure plus smooth chroma, and some noise."""
    rng = np.random.default_rng(height * width)
    yy, xx = np.mgrid[0:height, 0:width]
    grey = (128 + 60 * np.sin(xx / 17.0) * np.cos(yy / 23.0))[..., None]
    tint = np.stack([np.sin(xx / 90.0) * 25, np.cos(yy / 70.0) * 20, -np.sin((xx + yy) / 120.0) * 25], -1)
    return np.clip(grey + tint + rng.normal(0, 3, (height, width, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(params=["isal", "zlib"])
def compressor(request, monkeypatch):
    if request.param == "zlib":
        monkeypatch.setattr(encode, "isal_zlib", None)
    elif encode.isal_zlib is None:
        pytest.skip("isal is not installed")
    return request.param


@pytest.mark.parametrize("alpha", [False, True])
def test_png_is_lossless_for_libpng_and_pillow(compressor, alpha, monkeypatch):
    monkeypatch.setattr(encode, "STRIP_PIXELS", 20_000)  # many strips, each its own IDAT chunk
    rgb = _photo(301, 257)
    mask = (np.arange(301 * 257, dtype=np.uint32).reshape(301, 257) % 251).astype(np.uint8) if alpha else None
    png = encode.encode_image(rgb, "PNG", alpha=mask)
    expected = rgb if mask is None else np.dstack([rgb, mask])
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), expected)
    by_libpng = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)  # BGR(A)
    np.testing.assert_array_equal(by_libpng[..., [2, 1, 0, 3][:expected.shape[2]]], expected)


def test_isal_is_used_where_installed_and_compresses_about_as_well_as_zlib(monkeypatch):
    if encode.isal_zlib is None:
        pytest.skip("isal is not installed")
    rgb = _photo(512, 512)
    assert type(encode.deflater()).__module__.startswith("isal")
    with_isal = encode.encode_png(rgb)
    monkeypatch.setattr(encode, "isal_zlib", None)
    assert isinstance(encode.deflater(), type(zlib.compressobj()))
    with_zlib = encode.encode_png(rgb)
    assert len(with_isal) <= 1.1 * len(with_zlib)  # bench photos: 16% smaller in all, -29% to +42% each
