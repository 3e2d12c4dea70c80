"""Face detector (MTCNN, real shipped weights) and the FaceRemaster align/restore/paste stage.

Detector tests need the MTCNN weights from `pip install --no-deps facenet-pytorch==2.6.0` (or
$MTCNN_WEIGHTS_DIR) and are skipped without them. Remaster geometry tests drive the stage with
landmarks measured once by that detector on skimage's astronaut, so they run everywhere.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from pipeline.errors import ModelNotLoadedError
from pipeline.stages.face_detect import DetectorWeightsNotFoundError, Face, FaceDetector, locate_mtcnn_weights, nms, nms_min
from pipeline.stages.face_remaster import FFHQ_TEMPLATE_512, FaceRemaster, similarity_transform
from pipeline.models.gfpgan import GFPGANv1Clean, tiny_config

# MTCNN (facenet-pytorch's conventions) on skimage.data.astronaut(): box, then landmarks (image-left eye, image-right eye, nose, mouth corners).
ASTRONAUT_BOX = (181.1, 62.2, 267.7, 172.1)
ASTRONAUT_LANDMARKS = np.array(
    [[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]], np.float32
)


class MeasuredFaces:
    """Detector stand-in replaying faces measured on a known photo (keyed by image shape)."""

    def __init__(self, faces_by_shape: dict[tuple[int, ...], list[Face]]) -> None:
        self.faces_by_shape = faces_by_shape

    def detect(self, rgb: np.ndarray) -> list[Face]:
        return self.faces_by_shape.get(rgb.shape, [])


def astronaut_face(scale: float = 1.0, flip_width: int | None = None) -> Face:
    box = np.array(ASTRONAUT_BOX) * scale
    marks = ASTRONAUT_LANDMARKS * scale
    if flip_width is not None:  # mirror: x -> w - x, and left/right landmarks swap
        box = np.array([flip_width - box[2], box[1], flip_width - box[0], box[3]])
        marks = marks[[1, 0, 2, 4, 3]] * [-1, 1] + [flip_width, 0]
    return Face(box=tuple(box), score=0.999, landmarks=marks.astype(np.float32))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


@pytest.fixture(scope="module")
def restorer() -> GFPGANv1Clean:
    torch.manual_seed(0)
    return GFPGANv1Clean(**tiny_config()).eval()


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    try:
        return FaceDetector()
    except DetectorWeightsNotFoundError as exc:
        pytest.skip(str(exc))


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b).max(axis=2) > 0


# --- detector -----------------------------------------------------------------------------------


def test_detector_finds_the_astronaut_face_with_plausible_landmarks(detector: FaceDetector, astronaut) -> None:
    faces = [f for f in detector.detect(astronaut) if f.score >= 0.97]
    assert len(faces) == 1
    face = faces[0]
    x0, y0, x1, y1 = face.box
    assert 150 < (x0 + x1) / 2 < 300 and 60 < (y0 + y1) / 2 < 170 and 60 < x1 - x0 < 140
    marks = face.landmarks
    assert marks.shape == (5, 2) and marks.dtype == np.float32
    assert np.all((marks[:, 0] > x0) & (marks[:, 0] < x1) & (marks[:, 1] > y0) & (marks[:, 1] < y1))
    left_eye, right_eye, nose, mouth_left, mouth_right = marks
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    np.testing.assert_allclose(marks, ASTRONAUT_LANDMARKS, atol=3)


@pytest.mark.parametrize("name", ["coffee", "gradient"])
def test_detector_finds_no_face_in_face_free_images(detector: FaceDetector, name: str) -> None:
    if name == "coffee":
        image = data.coffee()
    else:
        ramp = np.linspace(0, 255, 320, dtype=np.float32)
        image = np.stack([np.tile(ramp, (240, 1)), np.tile(ramp[:240, None], (1, 320)), np.full((240, 320), 90)], -1)
    assert detector.detect(image.astype(np.uint8)) == []


def test_detector_maps_landmarks_back_from_a_downscaled_search(astronaut) -> None:
    try:
        detector = FaceDetector(max_side=512)
    except DetectorWeightsNotFoundError as exc:
        pytest.skip(str(exc))
    big = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    best = detector.detect(big)[0]
    np.testing.assert_allclose(best.landmarks, ASTRONAUT_LANDMARKS * 2, atol=8)


def test_detector_rejects_non_rgb_uint8(detector: FaceDetector) -> None:
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(np.zeros((32, 32, 3), np.float32))


def test_missing_weights_dir_gives_an_install_hint(tmp_path) -> None:
    with pytest.raises(DetectorWeightsNotFoundError, match="facenet-pytorch"):
        locate_mtcnn_weights(tmp_path)


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [2, 2, 8, 8]], np.float32)
    scores = np.array([0.8, 0.9, 0.7, 0.95], np.float32)
    # [3] is nested in [1]: IoU 0.36 keeps it; [0] overlaps [1] with IoU 0.68
    assert nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).tolist() == [3, 1, 2]
    # "Min": overlap over the smaller box; [3] lies inside [0] and [1], so both go
    assert nms_min(boxes, scores, 0.5).tolist() == [3, 2]


# --- alignment ----------------------------------------------------------------------------------


def test_similarity_transform_recovers_a_known_rotation_scale_shift() -> None:
    angle, scale, shift = np.deg2rad(17), 2.5, np.array([30.0, -12.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = FFHQ_TEMPLATE_512 @ (scale * rotation).T + shift
    matrix = similarity_transform(FFHQ_TEMPLATE_512, dst)
    np.testing.assert_allclose(matrix[:, :2], scale * rotation, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-7)


def test_alignment_puts_the_astronaut_landmarks_on_the_template(astronaut) -> None:
    template = FFHQ_TEMPLATE_512 / 8  # the tiny restorer's 64 px crop
    matrix = similarity_transform(ASTRONAUT_LANDMARKS, template)
    mapped = ASTRONAUT_LANDMARKS @ matrix[:, :2].T + matrix[:, 2]
    assert np.abs(mapped - template).max() < 2.0


# --- remaster -----------------------------------------------------------------------------------


def test_missing_restorer_raises_instead_of_passing_images_through(astronaut) -> None:
    stage = FaceRemaster(None, MeasuredFaces({}))
    with pytest.raises(ModelNotLoadedError, match="GFPGAN"):
        stage.run_batch([astronaut])
    with pytest.raises(RuntimeError):
        stage.remaster(data.coffee())


def test_image_without_faces_comes_back_bit_exact(restorer) -> None:
    coffee = data.coffee()
    (out,) = FaceRemaster(restorer, MeasuredFaces({})).run_batch([coffee])
    assert out is not coffee and out.dtype == np.uint8 and np.array_equal(out, coffee)


def test_restored_face_is_pasted_only_around_the_face(restorer, astronaut) -> None:
    stage = FaceRemaster(restorer, MeasuredFaces({astronaut.shape: [astronaut_face()]}))
    out = stage.remaster(astronaut)
    assert out.shape == astronaut.shape and out.dtype == np.uint8
    diff = changed(out, astronaut)
    x0, y0, x1, y1 = (int(v) for v in ASTRONAUT_BOX)
    assert diff[y0 + 20 : y1 - 20, x0 + 20 : x1 - 20].mean() > 0.9  # the face itself was replaced
    w, h = x1 - x0, y1 - y0
    near = np.zeros_like(diff)
    near[max(0, y0 - h) : y1 + h, max(0, x0 - w) : x1 + w] = True
    assert not diff[~near].any()
    assert diff.mean() < 0.2


def test_blend_controls_how_much_of_the_restored_face_shows(restorer, astronaut) -> None:
    detector = MeasuredFaces({astronaut.shape: [astronaut_face()]})
    full = FaceRemaster(restorer, detector, blend=1.0).remaster(astronaut).astype(np.int16)
    half = FaceRemaster(restorer, detector, blend=0.5).remaster(astronaut).astype(np.int16)
    none = FaceRemaster(restorer, detector, blend=0.0).remaster(astronaut)
    assert np.array_equal(none, astronaut)
    assert np.abs(half - astronaut).sum() < 0.6 * np.abs(full - astronaut).sum()


@pytest.mark.parametrize("option", [{"min_face": 200}, {"min_score": 0.9999}])
def test_small_or_doubtful_faces_are_left_alone(restorer, astronaut, option) -> None:
    stage = FaceRemaster(restorer, MeasuredFaces({astronaut.shape: [astronaut_face()]}), **option)
    assert np.array_equal(stage.remaster(astronaut), astronaut)


def test_upscale_crop_false_skips_faces_smaller_than_the_crop(restorer, astronaut) -> None:
    small = cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA)  # eyes ~11 px apart < crop's 16
    detector = MeasuredFaces({small.shape: [astronaut_face(scale=0.25)]})
    assert np.array_equal(FaceRemaster(restorer, detector, min_face=0, upscale_crop=False).remaster(small), small)
    assert changed(FaceRemaster(restorer, detector, min_face=0, upscale_crop=True).remaster(small), small).any()


class CountingRestorer:
    """Wraps the real restorer to record how many crops each forward receives."""

    def __init__(self, inner: GFPGANv1Clean) -> None:
        self.inner, self.out_size, self.batch_sizes = inner, inner.out_size, []

    def restore(self, faces: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(len(faces))
        return self.inner.restore(faces)


def shifted(face: Face, dx: float) -> Face:
    x0, y0, x1, y1 = face.box
    return Face((x0 + dx, y0, x1 + dx, y1), face.score, face.landmarks + np.float32([dx, 0]))


def test_batch_runs_every_crop_in_one_forward_and_matches_single_images(restorer, astronaut) -> None:
    pair = np.concatenate([astronaut, astronaut[:, ::-1]], axis=1)  # two faces, 512 x 1024
    mirrored_face = shifted(astronaut_face(flip_width=512), 512)
    detector = MeasuredFaces({astronaut.shape: [astronaut_face()], pair.shape: [astronaut_face(), mirrored_face]})
    images = [astronaut, data.coffee(), pair]
    counting = CountingRestorer(restorer)
    stage = FaceRemaster(counting, detector)  # type: ignore[arg-type]
    batch = stage.run_batch(images)
    assert counting.batch_sizes == [3]
    singles = [stage.remaster(image) for image in images]
    assert counting.batch_sizes[1:] == [1, 2]  # the face-free coffee image never reaches the network
    assert np.array_equal(batch[1], images[1])
    for together, alone in zip(batch, singles):
        assert together.shape == alone.shape
        # CPU conv kernels block differently per batch size (~1e-7 apart), which can flip a rare
        # rounding by one level; anything more would mean faces leaking between batch items.
        delta = np.abs(together.astype(np.int16) - alone)
        assert delta.max() <= 1 and (delta > 0).mean() < 1e-4


def test_chunked_forwards_give_the_same_pictures(restorer, astronaut) -> None:
    detector = MeasuredFaces({astronaut.shape: [astronaut_face(), astronaut_face(flip_width=512)]})
    one_pass = FaceRemaster(restorer, detector).remaster(astronaut).astype(np.int16)
    chunked = FaceRemaster(restorer, detector, max_faces_per_forward=1).remaster(astronaut)
    assert np.abs(one_pass - chunked).max() <= 1


def test_max_faces_restores_only_the_largest_faces(restorer, astronaut) -> None:
    """A crowd photo costs what a portrait does: past ``max_faces``, the smaller faces stay as they were."""
    canvas = np.zeros((512, 768, 3), np.uint8)
    canvas[:, :512] = astronaut
    canvas[:256, 512:] = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    large, small = astronaut_face(), shifted(astronaut_face(scale=0.5), 512)
    detector = MeasuredFaces({canvas.shape: [small, large]})  # the smaller face first: size decides, not order
    x0, y0, x1, y1 = (int(v) for v in small.box)
    near_small = (slice(max(0, y0 - 30), y1 + 30), slice(x0 - 30, x1 + 30))

    one = changed(FaceRemaster(restorer, detector, max_faces=1).remaster(canvas), canvas)
    both = changed(FaceRemaster(restorer, detector, max_faces=2).remaster(canvas), canvas)
    assert both[near_small].any() and both[:, :512].any()  # each face is restorable on its own
    assert not one[near_small].any(), "max_faces=1 restored the smaller face too"
    assert np.array_equal(one[:, :512], both[:, :512])  # the largest face, restored the same way
    with pytest.raises(ValueError, match="max_faces"):
        FaceRemaster(restorer, detector, max_faces=0)


def test_the_stage_table_passes_max_faces_to_the_stage(tmp_path, detector) -> None:
    from pipeline.weights.settings import ModelRuntime
    from service.stages import FaceRemasterSection, stage
    from tools.build_demo import DEMO_MODELS

    DEMO_MODELS["face"](tmp_path / "face", 0)
    section = FaceRemasterSection(restorer={"architecture": "gfpgan", "source": str(tmp_path / "face")}, max_faces=2)
    loaded = stage("face_remaster").load(section, ModelRuntime(cache_dir=tmp_path / "cache"))
    assert loaded.max_faces == 2


def test_rejects_images_that_are_not_rgb_uint8(restorer) -> None:
    with pytest.raises(ValueError, match="image 1"):
        FaceRemaster(restorer, MeasuredFaces({})).run_batch([data.coffee(), data.camera()])


def test_end_to_end_with_the_real_detector_touches_only_the_face(detector, restorer, astronaut) -> None:
    out = FaceRemaster(restorer, detector).remaster(astronaut)
    diff = changed(out, astronaut)
    assert diff.any()
    ys, xs = np.nonzero(diff)
    x0, y0, x1, y1 = ASTRONAUT_BOX
    assert xs.min() > x0 - (x1 - x0) and xs.max() < x1 + (x1 - x0)
    assert ys.min() > y0 - (y1 - y0) and ys.max() < y1 + (y1 - y0)
    assert np.array_equal(FaceRemaster(restorer, detector).remaster(data.coffee()), data.coffee())
