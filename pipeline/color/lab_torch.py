"""CIE Lab <-> sRGB in torch, matching OpenCV's float32 ``cv2.COLOR_RGB2Lab`` / ``COLOR_Lab2RGB``.

DDColor's upstream inference builds its grey input with OpenCV on float32 images; doing the
same conversions in torch lets a whole batch's resizing and Lab merge stay on the accelerator
instead of in single-threaded OpenCV on the host.

For RGB -> L, OpenCV does not evaluate the CIE formula on float sRGB input: it rounds each
channel to 1/16384 and interpolates trilinearly (fixed point, 1/16 steps inside a cell) between
Lab values tabulated on a 33x33x33 grid of RGB colours (``RGB2Lab_f`` with
``enableRGB2LabInterpolation`` in OpenCV's color_lab.cpp). That differs from the exact formula
by up to ~0.25 L in dark tones, so ``rgb_lightness`` reproduces it step by step (bit-identical);
the grid's L values are read from OpenCV itself (at grid colours the interpolation returns the
node exactly).
"""

import functools

import cv2
import numpy as np
import torch

# CIE constants as OpenCV spells them (not the exact rationals 216/24389 etc.).
_KAPPA = 903.3
_EPSILON = 0.008856
# OpenCV's XYZ -> sRGB (D65) matrix, columns pre-scaled by the D65 white point
# exactly as cv2's Lab2RGBfloat does (coeffs[i][j] = XYZ2sRGB[i][j] * whitept[j]).
_XYZ_TO_SRGB = (
    (3.240479, -1.53715, -0.498535),
    (-0.969256, 1.875991, 0.041556),
    (0.055648, -0.204043, 1.057311),
)
_D65_WHITE = (0.950456, 1.0, 1.088754)

_SLOPE = 7.787
_OFFSET = 16.0 / 116.0
_L_THRESHOLD = _EPSILON * _KAPPA
_F_THRESHOLD = _SLOPE * _EPSILON + _OFFSET
_GAMMA_TABLE_SIZE = 1024


def _inverse_f(f: torch.Tensor) -> torch.Tensor:
    return torch.where(f <= _F_THRESHOLD, (f - _OFFSET) / _SLOPE, f * f * f)


def _srgb_gamma_exact(linear: np.ndarray) -> np.ndarray:
    curve = 1.055 * np.power(np.maximum(linear, 0.0031308), 1.0 / 2.4) - 0.055
    return np.where(linear <= 0.0031308, 12.92 * linear, curve)


def _build_gamma_spline(size: int = _GAMMA_TABLE_SIZE) -> torch.Tensor:
    """Natural cubic spline through the sRGB gamma curve sampled at i/size (cv2's splineBuild).

    OpenCV's float path interpolates this spline instead of evaluating pow(); the spline
    smooths the kink at 0.0031308 by ~8e-5, so reproducing it keeps us within ~1e-5 of cv2.
    Returns (size, 4) coefficients [c0, c1, c2, c3] per unit interval.
    """
    samples = _srgb_gamma_exact(np.arange(size + 1, dtype=np.float64) / size)
    pivots = np.zeros(size + 1)
    rhs = np.zeros(size + 1)
    for i in range(1, size):  # forward sweep of the tridiagonal solve
        pivots[i] = 1.0 / (4.0 - pivots[i - 1])
        curvature = 3.0 * (samples[i + 1] - 2.0 * samples[i] + samples[i - 1])
        rhs[i] = (curvature - rhs[i - 1]) * pivots[i]
    table = np.zeros((size, 4))
    c_next = 0.0
    for i in range(size - 1, -1, -1):  # back substitution
        c = rhs[i] - pivots[i] * c_next
        table[i] = (
            samples[i],
            samples[i + 1] - samples[i] - (c_next + 2.0 * c) / 3.0,
            c,
            (c_next - c) / 3.0,
        )
        c_next = c
    return torch.from_numpy(table.astype(np.float32))


_GAMMA_SPLINE = _build_gamma_spline()


def _srgb_gamma(linear: torch.Tensor) -> torch.Tensor:
    """Gamma-encode linear [0,1] values with OpenCV's spline (cv2 splineInterpolate)."""
    table = _GAMMA_SPLINE.to(linear.device)
    position = linear * _GAMMA_TABLE_SIZE
    index = position.long().clamp(0, _GAMMA_TABLE_SIZE - 1)
    t = position - index
    c0, c1, c2, c3 = table[index].unbind(-1)
    return ((c3 * t + c2) * t + c1) * t + c0


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Convert (N,3,H,W) Lab (L in [0,100], a/b roughly [-127,127]) to sRGB in [0,1].

    Computed in float32 whatever the input dtype; out-of-gamut values are clipped to
    [0,1] before gamma encoding, as OpenCV does.
    """
    if lab.dim() != 4 or lab.shape[1] != 3:
        raise ValueError(f"lab_to_rgb expects a (N,3,H,W) tensor, got shape {tuple(lab.shape)}")
    lab = lab.float()
    lightness, a, b = lab[:, 0], lab[:, 1], lab[:, 2]

    is_dark = lightness <= _L_THRESHOLD
    fy_bright = (lightness + 16.0) / 116.0
    y = torch.where(is_dark, lightness / _KAPPA, fy_bright * fy_bright * fy_bright)
    fy = torch.where(is_dark, _SLOPE * y + _OFFSET, fy_bright)
    x = _inverse_f(fy + a / 500.0)
    z = _inverse_f(fy - b / 200.0)
    xyz = torch.stack((x, y, z), dim=1)

    matrix = torch.tensor(_XYZ_TO_SRGB, dtype=torch.float32, device=lab.device)
    matrix = matrix * torch.tensor(_D65_WHITE, dtype=torch.float32, device=lab.device)
    linear = torch.einsum("ij,njhw->nihw", matrix, xyz).clamp(0.0, 1.0)
    return _srgb_gamma(linear)


def grey_rgb_from_lightness(lightness: torch.Tensor) -> torch.Tensor:
    """(N,1,H,W) Lab L in [0,100] -> (N,3,H,W) RGB of the same L with a=b=0 (DDColor's input)."""
    if lightness.dim() != 4 or lightness.shape[1] != 1:
        raise ValueError(
            f"expected Lab lightness of shape (N,1,H,W), got {tuple(lightness.shape)}"
        )
    lightness = lightness.float()
    zeros = torch.zeros_like(lightness)
    return lab_to_rgb(torch.cat((lightness, zeros, zeros), dim=1))


_BASE_SHIFT = 14               # channels are rounded to 1/2**14 (LAB_BASE)
_GRID = 33                     # nodes per axis (LAB_LUT_DIM), cells of 2**9 steps
_CELL_SHIFT = _BASE_SHIFT - 5
_FRACTION_SHIFT = _BASE_SHIFT - 9  # position inside a cell in 16 steps
_STEPS = 16                    # per axis; the 8 corner weights sum to 16**3 = 2**12



@functools.lru_cache(maxsize=None)
def _grid_lightness(device: torch.device) -> torch.Tensor:
    """Tabulated L (in 1/16384 of 100) at the 33**3 grid colours, read back from OpenCV, as a flat
    int32 table indexed ((R * 34) + G) * 34 + B; the 34th node repeats the 33rd, so a cell's +1
    corner needs no clamping (its weight is 0 there)."""
    steps = np.arange(_GRID, dtype=np.float32) / np.float32(_GRID - 1)
    red, green, blue = np.meshgrid(steps, steps, steps, indexing="ij")
    colours = np.stack([red, green, blue], axis=-1).reshape(-1, 1, 3)
    lightness = cv2.cvtColor(colours, cv2.COLOR_RGB2Lab)[:, 0, 0].astype(np.float64)
    nodes = np.rint(lightness * (1 << _BASE_SHIFT) / 100.0).astype(np.int32).reshape(_GRID, _GRID, _GRID)
    nodes = np.pad(nodes, ((0, 1), (0, 1), (0, 1)), mode="edge")
    return torch.from_numpy(nodes.reshape(-1)).to(device)


def rgb_lightness(rgb: torch.Tensor) -> torch.Tensor:
    """(N,3,H,W) sRGB in [0,1] -> (N,1,H,W) L in [0,100], as OpenCV's float RGB2Lab computes it."""
    table = _grid_lightness(rgb.device)
    fixed = torch.round(rgb.float().clamp(0.0, 1.0) * float(1 << _BASE_SHIFT)).to(torch.int32)  # half to even
    cell = fixed >> _CELL_SHIFT
    fraction = (fixed >> _FRACTION_SHIFT) & (_STEPS - 1)
    side = _GRID + 1
    origin = (cell[:, 0] * side + cell[:, 1]) * side + cell[:, 2]
    fx, fy, fz = fraction[:, 0], fraction[:, 1], fraction[:, 2]

    def node(dx: int, dy: int, dz: int) -> torch.Tensor:
        index = origin + ((dx * side + dy) * side + dz)
        return table.index_select(0, index.reshape(-1)).reshape(origin.shape)

    def lerp(low: torch.Tensor, high: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return low * (_STEPS - weight) + high * weight

    # Integer arithmetic is exact, so interpolating axis by axis gives OpenCV's 8-corner sum exactly.
    along_b = [[lerp(node(dx, dy, 0), node(dx, dy, 1), fz) for dy in (0, 1)] for dx in (0, 1)]
    along_g = [lerp(along_b[dx][0], along_b[dx][1], fy) for dx in (0, 1)]
    total = lerp(along_g[0], along_g[1], fx)  # weights sum to 16**3 = 2**12
    lightness = (total + (1 << 11)) >> 12  # OpenCV's rounding descale
    return (lightness.float() * (100.0 / (1 << _BASE_SHIFT)))[:, None]  # exact: 100/16384 is a short binary fraction
