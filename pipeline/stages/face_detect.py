"""Face detection with 5 landmarks: the MTCNN cascade (P-Net proposals -> R-Net -> O-Net).

Weights: the MTCNN state dicts shipped inside the facenet-pytorch wheel (MIT). That package's own code
needs torchvision and an old torch, so it is installed with `pip install --no-deps facenet-pytorch==2.6.0`
and only its data files are read (never imported). The cascade follows the original MTCNN recipe
(image pyramid, per-stage thresholds, NMS, square boxes, zero padding at image borders).
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.errors import ModelLoadError
from pipeline.models.mtcnn import load_mtcnn_nets

WEIGHTS_DIR_ENV = "MTCNN_WEIGHTS_DIR"
WEIGHTS_PACKAGE = "facenet_pytorch"
INSTALL_HINT = "pip install --no-deps facenet-pytorch==2.6.0"


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


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best first. mode "min" divides the overlap by
    the smaller area (MTCNN's final pass, which removes boxes nested inside a larger one)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(x1 - x0, 0) * np.maximum(y1 - y0, 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        inter_w = np.maximum(0.0, np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest]))
        inter_h = np.maximum(0.0, np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest]))
        inter = inter_w * inter_h
        if mode == "min":
            denom = np.minimum(areas[best], areas[rest])
        else:
            denom = areas[best] + areas[rest] - inter
        overlap = inter / np.maximum(denom, 1e-9)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def apply_box_deltas(boxes: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """Shift box corners by regression deltas expressed in box widths/heights."""
    size = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, axis=1)
    return boxes[:, :4] + deltas * size


def square_boxes(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (the next net expects square crops)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    cx, cy = boxes[:, 0] + w / 2, boxes[:, 1] + h / 2
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1)


def crop_patches(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop integer-rounded boxes (zero padding outside the image) resized to size x size.
    Returns (patches (N, size, size, 3) float32, the integer boxes used)."""
    h, w = image.shape[:2]
    int_boxes = np.round(boxes).astype(np.int64)
    int_boxes[:, 2:] = np.maximum(int_boxes[:, 2:], int_boxes[:, :2] + 1)  # at least one pixel
    patches = np.zeros((len(boxes), size, size, 3), np.float32)
    for i, (x0, y0, x1, y1) in enumerate(int_boxes):
        canvas = np.zeros((y1 - y0, x1 - x0, 3), np.float32)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if sx1 > sx0 and sy1 > sy0:
            canvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
        patches[i] = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    return patches, int_boxes.astype(np.float32)


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

    def _run(self, net: torch.nn.Module, patches: np.ndarray) -> list[np.ndarray]:
        x = torch.from_numpy(patches).permute(0, 3, 1, 2).to(self.device)
        with torch.inference_mode():
            outputs = net((x - 127.5) * 0.0078125)
        return [out.float().cpu().numpy() for out in outputs]

    def _proposals(self, image: np.ndarray) -> np.ndarray:
        """Stage 1: P-Net over an image pyramid -> candidate boxes (N, 5: x0, y0, x1, y1, score)."""
        h, w = image.shape[:2]
        scale = 12.0 / self.min_face_size
        candidates = []
        while min(h, w) * scale >= 12:
            size = (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale)))
            scaled = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            deltas, probs = self._run(self.pnet, scaled[None])
            ys, xs = np.nonzero(probs[0, 1] >= self.thresholds[0])
            if len(ys):
                # each P-Net output cell sees a 12x12 window at stride 2 of the scaled image
                boxes = np.stack([xs * 2, ys * 2, xs * 2 + 12, ys * 2 + 12], axis=1) / scale
                scores = probs[0, 1, ys, xs]
                keep = nms(boxes, scores, 0.5)
                candidates.append(np.concatenate([boxes, scores[:, None], deltas[0][:, ys, xs].T], axis=1)[keep])
            scale *= self.pyramid_factor
        if not candidates:
            return np.zeros((0, 5), np.float32)
        # rows: x0, y0, x1, y1, score, 4 deltas; as in MTCNN, NMS runs on the windows before regression
        merged = np.concatenate(candidates)
        merged = merged[nms(merged[:, :4], merged[:, 4], 0.7)]
        boxes = apply_box_deltas(merged[:, :4], merged[:, 5:9])
        return np.concatenate([square_boxes(boxes), merged[:, 4:5]], axis=1)

    def _refine(self, image: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Stage 2: R-Net rescoring and box regression on 24x24 crops."""
        patches, int_boxes = crop_patches(image, candidates[:, :4], 24)
        deltas, probs = self._run(self.rnet, patches)
        passed = probs[:, 1] > self.thresholds[1]
        boxes, scores = int_boxes[passed], probs[passed, 1]
        keep = nms(boxes, scores, 0.7)
        boxes = apply_box_deltas(boxes[keep], deltas[passed][keep])
        return np.concatenate([square_boxes(boxes), scores[keep, None]], axis=1)

    def _output(self, image: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stage 3: O-Net final score, box and landmarks on 48x48 crops."""
        patches, int_boxes = crop_patches(image, candidates[:, :4], 48)
        deltas, points, probs = self._run(self.onet, patches)
        passed = probs[:, 1] > self.thresholds[2]
        boxes, scores, points, deltas = int_boxes[passed], probs[passed, 1], points[passed], deltas[passed]
        size = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
        landmarks = np.stack([points[:, :5], points[:, 5:]], axis=2) * size[:, None, :] + boxes[:, None, :2]
        boxes = apply_box_deltas(boxes, deltas)
        keep = nms(boxes, scores, 0.7, mode="min")
        return np.concatenate([boxes[keep], scores[keep, None]], axis=1), landmarks[keep]

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 (H, W, 3) image, best score first; [] when there is none."""
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {rgb.dtype} {rgb.shape}")
        h, w = rgb.shape[:2]
        shrink = min(1.0, self.max_side / max(h, w)) if self.max_side else 1.0
        image = rgb.astype(np.float32)
        if shrink < 1.0:
            image = cv2.resize(image, (round(w * shrink), round(h * shrink)), interpolation=cv2.INTER_AREA)
        candidates = self._proposals(image)
        if len(candidates):
            candidates = self._refine(image, candidates)
        if not len(candidates):
            return []
        boxes, landmarks = self._output(image, candidates)
        boxes[:, :4] /= shrink
        landmarks /= shrink
        return [
            Face(box=tuple(float(v) for v in box[:4]), score=float(box[4]), landmarks=marks.astype(np.float32))
            for box, marks in zip(boxes, landmarks)
        ]
