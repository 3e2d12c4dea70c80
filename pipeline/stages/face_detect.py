"""Face detection with 5 landmarks: the MTCNN cascade (P-Net proposals -> R-Net -> O-Net).

Weights: the MTCNN state dicts shipped inside the facenet-pytorch wheel (MIT). That package's own code
needs torchvision and an old torch, so it is installed with `pip install --no-deps facenet-pytorch==2.6.0`
and only its data files are read (never imported).

The cascade follows facenet-pytorch's ``detect_face`` step for step, because those are the conventions
the converted weights were used with (tests/unit/test_face_detect_reference.py compares the two on real
photos): P-Net pyramid resampled with torch ``interpolate(mode="area")`` at ``int(side * scale + 1)``,
windows mapped back with floor rounding, R/O-Net crops 1-based and clipped to the image (no zero
padding), box regression and landmarks with MATLAB's ``x2 - x1 + 1`` widths, torchvision-style NMS
(areas without +1) except the final "Min" pass (areas with +1), and the output sorted largest box first.
The arithmetic is float32 torch, in facenet-pytorch's order of operations, so results match to ~1e-5 px.

One deliberate departure: photos larger than ``max_side`` are searched at reduced size (None: never).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import ModelLoadError
from pipeline.models.mtcnn import load_mtcnn_nets

WEIGHTS_DIR_ENV = "MTCNN_WEIGHTS_DIR"
WEIGHTS_PACKAGE = "facenet_pytorch"
INSTALL_HINT = "pip install --no-deps facenet-pytorch==2.6.0"
# facenet-pytorch runs R-Net and O-Net over candidates in chunks of this size; the same chunks give
# bit-identical network outputs (a batch's size can change which kernels run).
_NET_CHUNK = 512


class DetectorWeightsNotFoundError(ModelLoadError):
    """The MTCNN weight files could not be located."""


@dataclass(frozen=True, eq=False)
class Face:
    """A detected face. `landmarks` (5, 2) float32 in image (x, y) pixels, ordered: image-left eye,
    image-right eye, nose tip, image-left mouth corner, image-right mouth corner (the FFHQ template order)."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float
    landmarks: np.ndarray


def locate_mtcnn_weights(weights_dir: str | Path | None = None) -> Path:
    """Explicit dir, else $MTCNN_WEIGHTS_DIR, else the installed facenet_pytorch package's data/ folder."""
    if weights_dir is None and os.environ.get(WEIGHTS_DIR_ENV):
        weights_dir = os.environ[WEIGHTS_DIR_ENV]
    if weights_dir is None:
        # find_spec locates the package without importing it (its __init__ would import torchvision).
        spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not locations:
            raise DetectorWeightsNotFoundError(
                f"MTCNN weights not found: set ${WEIGHTS_DIR_ENV} or install them with `{INSTALL_HINT}`"
            )
        weights_dir = Path(locations[0]) / "data"
    path = Path(weights_dir)
    missing = [name for name in ("pnet.pt", "rnet.pt", "onet.pt") if not (path / name).is_file()]
    if missing:
        raise DetectorWeightsNotFoundError(f"MTCNN weights dir {path} lacks {missing} (install with `{INSTALL_HINT}`)")
    return path


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS as torchvision.ops.nms: best score first (stable for ties), a box goes when its IoU with
    a kept box is above ``threshold``; areas are ``(x1 - x0) * (y1 - y0)``. Returns kept indices, best first."""
    order = torch.sort(scores, descending=True, stable=True).indices
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x1 - x0) * (y1 - y0)
    keep = []
    while order.numel():
        best, rest = order[0], order[1:]
        keep.append(best)
        width = (torch.minimum(x1[best], x1[rest]) - torch.maximum(x0[best], x0[rest])).clamp(min=0)
        height = (torch.minimum(y1[best], y1[rest]) - torch.maximum(y0[best], y0[rest])).clamp(min=0)
        overlap = width * height
        order = rest[~(overlap / (area[best] + area[rest] - overlap) > threshold)]  # NaN (empty boxes) stays
    return torch.stack(keep) if keep else torch.zeros(0, dtype=torch.long, device=boxes.device)


def nms_min(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """MTCNN's final NMS ("Min": overlap over the smaller box, inclusive-pixel areas with +1), in numpy
    with numpy's default argsort, as facenet-pytorch's ``nms_numpy`` (so ties resolve the same way)."""
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = np.argsort(scores)  # ascending: the best is last
    keep = []
    while order.size:
        best, rest = order[-1], order[:-1]
        keep.append(best)
        width = np.maximum(0.0, np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest]) + 1)
        height = np.maximum(0.0, np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest]) + 1)
        order = rest[width * height / np.minimum(area[best], area[rest]) <= threshold]
    return np.asarray(keep, dtype=np.int64)


def square_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Each box grown (or shrunk) to a square of its longer side about its centre (MATLAB ``rerec``)."""
    boxes = boxes.clone()
    height, width = boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]
    side = torch.maximum(width, height)
    boxes[:, 0] = boxes[:, 0] + width * 0.5 - side * 0.5
    boxes[:, 1] = boxes[:, 1] + height * 0.5 - side * 0.5
    boxes[:, 2:4] = boxes[:, :2] + side[:, None]
    return boxes


def regress_boxes(boxes: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Corners shifted by deltas in units of inclusive-pixel width/height (``x1 - x0 + 1``)."""
    width = boxes[:, 2] - boxes[:, 0] + 1
    height = boxes[:, 3] - boxes[:, 1] + 1
    moved = torch.stack([boxes[:, 0] + deltas[:, 0] * width, boxes[:, 1] + deltas[:, 1] * height,
                         boxes[:, 2] + deltas[:, 2] * width, boxes[:, 3] + deltas[:, 3] * height], dim=1)
    return torch.cat([moved, boxes[:, 4:]], dim=1)


class FaceDetector:
    """MTCNN face detector with 5-point landmarks, CPU or GPU, weights from facenet-pytorch's wheel."""

    def __init__(
        self,
        weights_dir: str | Path | None = None,
        *,
        min_face_size: float = 20.0,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        pyramid_factor: float = 0.709,
        max_side: int | None = 1280,
        device: str | torch.device = "cpu",
    ) -> None:
        if not 0.0 < pyramid_factor < 1.0:
            raise ValueError(f"pyramid_factor must be in (0, 1), got {pyramid_factor}")
        if min_face_size < 12:
            raise ValueError(f"min_face_size must be >= 12 pixels (P-Net's window), got {min_face_size}")
        self.device = torch.device(device)
        weights = locate_mtcnn_weights(weights_dir)
        try:
            self.pnet, self.rnet, self.onet = load_mtcnn_nets(weights, self.device)
        except Exception as exc:  # corrupt or mismatched files raise many types
            raise ModelLoadError(f"cannot load MTCNN weights from {weights}: {exc}") from None
        self.min_face_size = min_face_size
        self.thresholds = thresholds
        self.pyramid_factor = pyramid_factor
        # Big photos are searched at reduced resolution: the pyramid cost grows with pixel count, and
        # faces too small to find there are too small to be worth restoring.
        self.max_side = max_side

    def _scales(self, height: int, width: int) -> list[float]:
        """Pyramid scales: the smallest face maps to P-Net's 12 px window, down to a 12 px short side."""
        scale = 12.0 / self.min_face_size
        short_side = min(height, width) * scale
        scales = []
        while short_side >= 12:
            scales.append(scale)
            scale *= self.pyramid_factor
            short_side *= self.pyramid_factor
        return scales

    def _proposals(self, image: torch.Tensor) -> torch.Tensor:
        """Stage 1: P-Net over the pyramid -> squared candidate boxes (N, 5: x0, y0, x1, y1, score)."""
        height, width = image.shape[2:]
        per_scale = []
        for scale in self._scales(height, width):
            scaled = F.interpolate(image, size=(int(height * scale + 1), int(width * scale + 1)), mode="area")
            deltas, probs = self.pnet((scaled - 127.5) * 0.0078125)
            hits = probs[0, 1] >= self.thresholds[0]
            cells = hits.nonzero().to(deltas.dtype).flip(1)  # (x, y) of each output cell, row-major order
            # Each cell is a 12x12 window at stride 2 of the scaled image; 1-based, floored back to the photo.
            windows = torch.cat([((2 * cells + 1) / scale).floor(), ((2 * cells + 12) / scale).floor()], dim=1)
            found = torch.cat([windows, probs[0, 1][hits][:, None], deltas[0][:, hits].T], dim=1)
            per_scale.append(found[nms(found[:, :4], found[:, 4], 0.5)])
        # rows: x0, y0, x1, y1, score, 4 deltas; NMS runs on the windows, before regression
        candidates = torch.cat(per_scale) if per_scale else torch.zeros(0, 9, device=image.device)
        candidates = candidates[nms(candidates[:, :4], candidates[:, 4], 0.7)]
        width_, height_ = candidates[:, 2] - candidates[:, 0], candidates[:, 3] - candidates[:, 1]
        boxes = torch.stack([candidates[:, 0] + candidates[:, 5] * width_, candidates[:, 1] + candidates[:, 6] * height_,
                             candidates[:, 2] + candidates[:, 7] * width_, candidates[:, 3] + candidates[:, 8] * height_,
                             candidates[:, 4]], dim=1)
        return square_boxes(boxes)

    def _crops(self, image: torch.Tensor, boxes: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes truncated to integers, read as 1-based inclusive and clipped to the photo, resized
        (area) to size x size. Returns (normalised crops, mask of the boxes that overlap the photo)."""
        height, width = image.shape[2:]
        corners = boxes[:, :4].trunc().int().cpu().numpy()
        x0, y0 = np.maximum(corners[:, 0], 1), np.maximum(corners[:, 1], 1)
        x1, y1 = np.minimum(corners[:, 2], width), np.minimum(corners[:, 3], height)
        inside = (x1 > x0 - 1) & (y1 > y0 - 1)
        crops = [F.interpolate(image[:, :, top - 1:bottom, left - 1:right], size=(size, size), mode="area")
                 for left, top, right, bottom, keep in zip(x0, y0, x1, y1, inside) if keep]
        crops = torch.cat(crops) if crops else image.new_zeros(0, 3, size, size)
        return (crops - 127.5) * 0.0078125, torch.from_numpy(inside).to(boxes.device)

    @staticmethod
    def _run(net: torch.nn.Module, crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = [net(crops[start:start + _NET_CHUNK]) for start in range(0, len(crops), _NET_CHUNK)]
        return tuple(torch.cat(parts) for parts in zip(*outputs))

    def _refine(self, image: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Stage 2: R-Net rescoring and box regression on 24x24 crops."""
        crops, inside = self._crops(image, candidates, 24)
        candidates = candidates[inside]
        if not len(candidates):
            return candidates
        deltas, probs = self._run(self.rnet, crops)
        passed = probs[:, 1] > self.thresholds[1]
        boxes = torch.cat([candidates[passed, :4], probs[passed, 1:2]], dim=1)
        keep = nms(boxes[:, :4], boxes[:, 4], 0.7)
        return square_boxes(regress_boxes(boxes[keep], deltas[passed][keep]))

    def _output(self, image: torch.Tensor, candidates: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Stage 3: O-Net final score, box and landmarks on 48x48 crops -> (N, 5) boxes, (N, 5, 2) points."""
        crops, inside = self._crops(image, candidates, 48)
        candidates = candidates[inside]
        if not len(candidates):
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        deltas, points, probs = self._run(self.onet, crops)
        passed = probs[:, 1] > self.thresholds[2]
        boxes = torch.cat([candidates[passed, :4], probs[passed, 1:2]], dim=1)
        points = points[passed]
        width = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        height = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        # Landmarks are fractions of the inclusive-pixel box, offset by -1 (MATLAB's 1-based pixels).
        landmarks = torch.stack([width * points[:, :5] + boxes[:, 0:1] - 1,
                                 height * points[:, 5:] + boxes[:, 1:2] - 1], dim=2)
        boxes = regress_boxes(boxes, deltas[passed]).cpu().numpy()
        landmarks = landmarks.cpu().numpy()
        keep = nms_min(boxes[:, :4], boxes[:, 4], 0.7)
        return boxes[keep], landmarks[keep]

    @torch.inference_mode()
    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 (H, W, 3) image, largest box first; [] when there is none."""
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {rgb.dtype} {rgb.shape}")
        h, w = rgb.shape[:2]
        shrink = min(1.0, self.max_side / max(h, w)) if self.max_side else 1.0
        pixels = rgb
        if shrink < 1.0:  # our departure (max_side): shrunk from uint8, no full-size float copy of a big scan
            pixels = cv2.resize(rgb, (round(w * shrink), round(h * shrink)), interpolation=cv2.INTER_AREA)
        dtype = next(self.pnet.parameters()).dtype
        # Plain NCHW (facenet-pytorch keeps the HWC array's channels-last strides): pooling and convs run
        # ~2x faster on a CPU, and the results still match it (tests/unit/test_face_detect_reference.py).
        image = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device).permute(2, 0, 1)[None].to(dtype).contiguous()
        candidates = self._proposals(image)
        if len(candidates):
            candidates = self._refine(image, candidates)
        if not len(candidates):
            return []
        boxes, landmarks = self._output(image, candidates)
        # Largest first, as facenet-pytorch's MTCNN(select_largest=True) (same argsort, same tie order).
        order = np.argsort((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[::-1]
        boxes, landmarks = boxes[order], landmarks[order]
        if shrink < 1.0:
            boxes[:, :4] /= shrink
            landmarks /= shrink
        return [
            Face(box=tuple(float(v) for v in box[:4]), score=float(box[4]), landmarks=marks.astype(np.float32))
            for box, marks in zip(boxes, landmarks)
        ]
