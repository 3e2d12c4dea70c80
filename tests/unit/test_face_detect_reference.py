"""The face detector against facenet-pytorch's own MTCNN, both with the real trained weights.

facenet-pytorch 2.6.0 (installed ``--no-deps``) is the reference: its ``detect_face`` defines the
conventions the converted P/R/O-Net weights were used with. Its code imports torchvision only for
``batched_nms`` (and, unused here, ``transforms.functional``), so this test puts a small pure-torch
stand-in package on ``sys.path`` for the import and removes it again afterwards.
"""
from __future__ import annotations

import importlib
import sys
import textwrap
import time

import cv2
import numpy as np
import pytest
from skimage import data

from pipeline.stages.face_detect import DetectorWeightsNotFoundError, FaceDetector

# torchvision.ops.batched_nms semantics: per image index, boxes sorted by score (descending, stable),
# a box is dropped when its IoU (areas without +1) with a kept box is above the threshold; the kept
# indices come back sorted by score.
_TORCHVISION_STAND_IN = {
    "torchvision/__init__.py": "",
    "torchvision/transforms/__init__.py": "",
    "torchvision/transforms/functional.py": "",
    "torchvision/ops/__init__.py": "",
    "torchvision/ops/boxes.py": """
        import torch

        def batched_nms(boxes, scores, idxs, iou_threshold):
            keep = []
            for index in idxs.unique():
                members = torch.nonzero(idxs == index).flatten()
                box, score = boxes[members], scores[members]
                area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
                alive = torch.ones(len(box), dtype=torch.bool)
                for i in torch.sort(score, descending=True, stable=True).indices.tolist():
                    if not alive[i]:
                        continue
                    keep.append(members[i])
                    width = (torch.minimum(box[i, 2], box[:, 2]) - torch.maximum(box[i, 0], box[:, 0])).clamp(min=0)
                    height = (torch.minimum(box[i, 3], box[:, 3]) - torch.maximum(box[i, 1], box[:, 1])).clamp(min=0)
                    overlap = width * height
                    alive &= ~(overlap / (area[i] + area - overlap) > iou_threshold)
            keep = torch.stack(keep) if keep else torch.zeros(0, dtype=torch.long)
            return keep[torch.sort(scores[keep], descending=True, stable=True).indices]
    """,
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """``facenet_pytorch.MTCNN(keep_all=True)`` on the CPU, imported with the torchvision stand-in."""
    if importlib.util.find_spec("facenet_pytorch") is None:
        pytest.skip("facenet-pytorch is not installed (pip install --no-deps facenet-pytorch==2.6.0)")
    root = tmp_path_factory.mktemp("stand_in")
    for name, source in _TORCHVISION_STAND_IN.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(source))
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        pytest.skip("a real torchvision is installed: import facenet-pytorch directly instead")
    sys.path.insert(0, str(root))
    try:
        from facenet_pytorch import MTCNN

        return MTCNN(keep_all=True)
    finally:  # the stand-in must not look like a torchvision to anything imported later
        sys.path.remove(str(root))
        for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    try:
        return FaceDetector()
    except DetectorWeightsNotFoundError as exc:
        pytest.skip(str(exc))


def _grey(rgb: np.ndarray) -> np.ndarray:
    return np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


def _face_mosaic(count: int = 12, columns: int = 4, side: int = 75, gap: int = 40) -> np.ndarray:
    """Real faces (LFW crops, 25 px, upscaled to ``side``) on a grey card: many ~side px faces at once."""
    faces = data.lfw_subset()[:count]
    rows = -(-count // columns)
    card = np.full((gap + rows * (side + gap), gap + columns * (side + gap)), 128, np.uint8)
    for index, face in enumerate(faces):
        row, column = divmod(index, columns)
        y, x = gap + row * (side + gap), gap + column * (side + gap)
        card[y:y + side, x:x + side] = cv2.resize((face * 255).round().astype(np.uint8), (side, side),
                                                  interpolation=cv2.INTER_CUBIC)
    return np.repeat(card[..., None], 3, axis=2)


PHOTOS = {
    "astronaut": lambda: data.astronaut(),
    "astronaut_grey": lambda: _grey(data.astronaut()),
    "camera": lambda: np.repeat(data.camera()[..., None], 3, axis=2),
    "face_cut_by_the_border": lambda: np.ascontiguousarray(data.astronaut()[60:, 215:]),
    "mosaic_of_12_faces": _face_mosaic,
    "coffee": lambda: data.coffee(),
    "cat": lambda: data.chelsea(),
    "rocket": lambda: data.rocket(),
}
EXPECTED_FACES = {"astronaut": 1, "astronaut_grey": 1, "camera": 1, "face_cut_by_the_border": 1,
                  "mosaic_of_12_faces": 12, "coffee": 0, "cat": 0, "rocket": 0}


@pytest.mark.parametrize("name", PHOTOS)
def test_boxes_landmarks_and_scores_equal_facenet_pytorch(reference, detector, name):
    image = PHOTOS[name]()
    boxes, probs, points = reference.detect(image, landmarks=True)
    started = time.perf_counter()
    faces = detector.detect(image)
    elapsed = time.perf_counter() - started
    expected = 0 if boxes is None else len(boxes)
    assert expected == EXPECTED_FACES[name]  # the photos are what they claim to be
    assert len(faces) == expected, f"{len(faces)} faces, facenet-pytorch finds {expected}"
    if not expected:
        return
    ours_boxes = np.array([face.box for face in faces])
    ours_marks = np.stack([face.landmarks for face in faces])
    ours_scores = np.array([face.score for face in faces])
    # Same order too: largest box first, as facenet-pytorch's select_largest.
    np.testing.assert_allclose(ours_boxes, boxes.astype(np.float64), rtol=0, atol=0.01)
    np.testing.assert_allclose(ours_marks, points.astype(np.float64), rtol=0, atol=0.01)
    np.testing.assert_allclose(ours_scores, probs.astype(np.float64), rtol=0, atol=1e-4)
    print(f"{name}: {expected} faces, max |box| {np.abs(ours_boxes - boxes.astype(float)).max():.2e} px, "
          f"max |landmark| {np.abs(ours_marks - points.astype(float)).max():.2e} px, "
          f"max |p| {np.abs(ours_scores - probs.astype(float)).max():.2e}, detect {elapsed * 1000:.0f} ms")


def test_output_is_sorted_largest_first(detector):
    faces = detector.detect(_face_mosaic())
    areas = [(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in (face.box for face in faces)]
    assert len(faces) == 12 and areas == sorted(areas, reverse=True)
