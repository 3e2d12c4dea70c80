"""Large photos cost memory in proportion to their size, not to a full-size float copy per step:
the Lab merge and lightness by strips of rows (exactly the one-shot pixels, or within one 8-bit
level where the chroma is upsampled), PNG written strip by strip, decoding without extra copies.
Peak memory is measured in a fresh subprocess (Linux ``VmHWM``, reset before each step)."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import pipeline.color.lab as lab
import pipeline.encode as encode
from pipeline.color.lab import lightness, merge_lightness_ab
from pipeline.encode import encode_image
from tests.helpers import photo

MIB = 1 << 20


def _random_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _ab(height: int, width: int, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((height, width, 2)) * 60).astype(np.float32)


def test_lightness_by_strips_is_exactly_the_one_shot_lightness(monkeypatch):
    rgb = _random_photo(701, 1203)
    one_shot = lightness(rgb)
    monkeypatch.setattr(lab, "STRIP_ABOVE_PIXELS", 0)
    monkeypatch.setattr(lab, "STRIP_PIXELS", 50_000)  # 41 rows a strip
    np.testing.assert_array_equal(lightness(rgb), one_shot)


@pytest.mark.parametrize("size, ab_size", [((1001, 1500), (512, 512)), ((2000, 1300), (64, 48)),
                                           ((300, 3000), (512, 512)), ((520, 500), (512, 512))])
def test_merge_by_strips_matches_one_shot(size, ab_size, monkeypatch):
    """Upsampled chroma one strip at a time: within one 8-bit level of OpenCV's whole-image resize
    (measured: no pixel differs on these photos), including shrinking and odd sizes."""
    rgb, ab = _random_photo(*size), _ab(*ab_size)
    full = lightness(rgb)
    one_shot = merge_lightness_ab(full, ab, strip_above_pixels=1 << 40)
    monkeypatch.setattr(lab, "STRIP_PIXELS", 100_000)
    strips = merge_lightness_ab(full, ab, strip_above_pixels=0)
    assert strips.dtype == np.uint8 and strips.shape == one_shot.shape
    assert np.abs(strips.astype(int) - one_shot.astype(int)).max() <= 1


def test_photos_up_to_8_mp_take_the_one_shot_path(monkeypatch):
    """Normal photos keep today's pixels: below the threshold nothing goes through the strips."""
    assert lab.STRIP_ABOVE_PIXELS >= 3840 * 2160
    rgb, ab = photo(640, 480), _ab(512, 512)
    expected = merge_lightness_ab(lightness(rgb), ab, strip_above_pixels=1 << 40)
    monkeypatch.setattr(lab, "_strips", None)  # would raise if called
    np.testing.assert_array_equal(merge_lightness_ab(lightness(rgb), ab), expected)


@pytest.mark.parametrize("alpha", [False, True])
@pytest.mark.parametrize("size", [(1, 1), (7, 3), (333, 517)])
def test_png_by_strips_is_lossless(size, alpha, monkeypatch):
    monkeypatch.setattr(encode, "STRIP_PIXELS", 4000)  # several strips, and strips of one row
    rgb = _random_photo(*size)
    transparency = np.random.default_rng(2).integers(0, 256, size, dtype=np.uint8) if alpha else None
    data = encode_image(rgb, "PNG", alpha=transparency)
    Image.open(io.BytesIO(data)).verify()  # chunk CRCs and structure
    decoded = np.asarray(Image.open(io.BytesIO(data)))
    expected = rgb if transparency is None else np.dstack([rgb, transparency])
    np.testing.assert_array_equal(decoded, expected)
    # a second, independent decoder (libpng)
    flags = cv2.IMREAD_UNCHANGED
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), flags)[..., [2, 1, 0, 3][:expected.shape[2]]],
                                  expected)


def test_jpeg_alpha_composited_by_strips_as_before(monkeypatch):
    rgb = _random_photo(90, 70)
    alpha = np.random.default_rng(3).integers(0, 256, (90, 70), dtype=np.uint8)
    weight = alpha[..., None].astype(np.float32) / 255.0
    composited = np.rint(rgb * weight + 255.0 * (1.0 - weight)).astype(np.uint8)
    expected = io.BytesIO()
    Image.fromarray(composited).save(expected, format="JPEG", quality=95, subsampling=0, optimize=False)
    monkeypatch.setattr(encode, "STRIP_PIXELS", 700)
    assert encode_image(rgb, "JPEG", alpha=alpha) == expected.getvalue()


# -- peak memory, in a fresh process per step ------------------------------------------------

_MEASURE = r"""
import json, sys
import numpy as np, cv2
step, height, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
import pipeline.color.lab as lab
from pipeline.encode import encode_image
from pipeline.inputs.decode import decode_image
small = np.random.default_rng(0).integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
rgb = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)  # photo-like, compresses
ab = (np.random.default_rng(1).standard_normal((512, 512, 2)) * 60).astype(np.float32)
png = encode_image(rgb, "PNG") if step == "decode" else None
if step == "one-shot merge":
    lab.STRIP_ABOVE_PIXELS = 1 << 40

def vm(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field))

with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # peak RSS := current RSS
before = vm("VmRSS:")
if step in ("merge", "one-shot merge"):
    result = lab.merge_lightness_ab(lab.lightness(rgb), ab)
elif step == "png":
    result = encode_image(rgb, "PNG")
elif step == "decode":
    result = decode_image(png, max_pixels=1 << 30).rgb
print(json.dumps({"growth": vm("VmHWM:") - before, "result": result.nbytes if hasattr(result, "nbytes") else len(result)}))
"""


def _peak_growth(step: str, height: int, width: int) -> dict:
    done = subprocess.run([sys.executable, "-c", _MEASURE, step, str(height), str(width)], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_peak_memory_of_a_20_mp_photo_is_bounded_by_its_size():
    height, width = 4000, 5000  # 20 MP: 60 MB as uint8 RGB, 240 MB as float32 RGB
    pixels = height * width
    strips = _peak_growth("merge", height, width)
    one_shot = _peak_growth("one-shot merge", height, width)
    # strips: the (H, W) float32 lightness + the uint8 result + a few 1 MP strips
    assert strips["growth"] <= pixels * (4 + 3) + 96 * MIB, strips
    assert one_shot["growth"] >= 2 * strips["growth"], (one_shot, strips)  # what the strips save
    png = _peak_growth("png", height, width)
    assert png["growth"] <= png["result"] + 32 * MIB, png  # the output and one strip, no full copy
    decoded = _peak_growth("decode", height, width)
    # Pillow's decoded image (4 bytes a pixel) + our uint8 RGB + a strip
    assert decoded["growth"] <= pixels * (4 + 3) + 32 * MIB, decoded


def test_a_big_scans_model_input_reads_only_the_rows_it_needs_and_equals_upstreams():
    """Above the strip threshold model_lightness makes only the rows the resize reads float; the
    network still gets exactly upstream's input (float image, cv2 INTER_LINEAR, then L)."""
    import cv2

    from pipeline.color.lab import STRIP_ABOVE_PIXELS, model_lightness, unit_float

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:3100, 0:2900].astype(np.float32)
    grey = np.clip(128 + 60 * np.sin(x / 97) * np.cos(y / 53) + rng.normal(0, 8, x.shape), 0, 255).astype(np.uint8)
    rgb = np.dstack([grey, (grey * 0.9).astype(np.uint8), grey])
    assert rgb.shape[0] * rgb.shape[1] > STRIP_ABOVE_PIXELS
    upstream = cv2.cvtColor(cv2.resize(unit_float(rgb), (512, 512), interpolation=cv2.INTER_LINEAR),
                            cv2.COLOR_RGB2Lab)[..., 0]
    np.testing.assert_array_equal(model_lightness(rgb, 512), upstream)
