"""Face remaster stage: detect faces, align each to the FFHQ template, restore with GFPGAN, paste back.

Follows GFPGANer / facexlib FaceRestoreHelper (align with a similarity transform from 5 landmarks,
restore, warp back with the inverse transform, blend through an eroded + Gaussian-feathered mask),
at the input's own resolution. All crops of a batch go through the network in one forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import torch

from pipeline.errors import ModelNotLoadedError
from pipeline.stages.face_detect import Face
from pipeline.models.gfpgan import GFPGANv1Clean

# facexlib's 5-point FFHQ template for a 512x512 crop (image-left eye, image-right eye, nose, mouth corners).
FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.19360],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float64,
)
# facexlib pads outside the photo with this grey (it is (135, 133, 132) in its BGR images).
CROP_BORDER_RGB = (132, 133, 135)

__all__ = ["FFHQ_TEMPLATE_512", "FaceRemaster", "ModelNotLoadedError", "similarity_transform", "feathered_mask"]


class FaceDetectorLike(Protocol):
    def detect(self, rgb: np.ndarray) -> list[Face]: ...


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation mapping src points onto dst (Umeyama, no
    reflection); returns a 2x3 float64 matrix for cv2.warpAffine. Deterministic, unlike RANSAC/LMEDS."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var < 1e-12:
        raise ValueError("landmarks are degenerate (all at one point)")
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(s) @ sign) / src_var
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def feathered_mask(crop_size: int, inverse_affine: np.ndarray, canvas: tuple[int, int]) -> np.ndarray:
    """facexlib's soft paste mask: the crop square warped into the canvas (w, h), eroded 2 px to drop the
    interpolated black rim, then eroded and Gaussian-blurred by ~1/20 of the face's side."""
    square = np.ones((crop_size, crop_size), np.float32)
    mask = cv2.warpAffine(square, inverse_affine, canvas)
    mask = cv2.erode(mask, np.ones((2, 2), np.uint8))
    edge = max(1, int(float(mask.sum()) ** 0.5) // 20)  # >= 1: a 0x0 kernel would mean 3x3 to OpenCV
    center = cv2.erode(mask, np.ones((2 * edge, 2 * edge), np.uint8))
    return cv2.GaussianBlur(center, (2 * edge + 1, 2 * edge + 1), 0)


@dataclass(frozen=True)
class _AlignedFace:
    image_index: int
    affine: np.ndarray  # image -> crop, 2x3


class FaceRemaster:
    """Restore every sufficiently large, confidently detected face in a batch of RGB uint8 photos.

    restorer: a loaded GFPGANv1Clean, or None when its weights are unavailable (every call then raises
        ModelNotLoadedError: the stage never passes images through pretending to have enhanced them).
    upscale_crop: restore faces smaller than the network crop by magnifying them into it (GFPGAN's
        behaviour). False leaves faces that would need magnification untouched.
    min_face: faces whose detected box is narrower or shorter than this many pixels are left as they are.
    min_score: detector confidence needed (0.97 is the threshold GFPGANer uses with facexlib's detector).
    blend: opacity of the restored face inside its feathered mask, 0 (none) .. 1 (fully restored).
    max_faces_per_forward: None runs all crops of a batch in one forward; a number caps the chunk size
        (bounds accelerator memory on crowded batches).
    max_faces: the most faces restored per photo (the largest ones); None restores all. Bounds the
        work a crowd photo costs for the same price as a portrait.
    """

    def __init__(
        self,
        restorer: GFPGANv1Clean | None,
        detector: FaceDetectorLike,
        *,
        upscale_crop: bool = True,
        min_face: float = 24.0,
        min_score: float = 0.97,
        blend: float = 1.0,
        max_faces_per_forward: int | None = None,
        max_faces: int | None = None,
    ) -> None:
        if not 0.0 <= blend <= 1.0:
            raise ValueError(f"blend must be within [0, 1], got {blend}")
        if max_faces_per_forward is not None and max_faces_per_forward < 1:
            raise ValueError(f"max_faces_per_forward must be >= 1 or None, got {max_faces_per_forward}")
        if max_faces is not None and max_faces < 1:
            raise ValueError(f"max_faces must be >= 1 or None, got {max_faces}")
        self.restorer = restorer
        self.detector = detector
        self.upscale_crop = upscale_crop
        self.min_face = min_face
        self.min_score = min_score
        self.blend = blend
        self.max_faces_per_forward = max_faces_per_forward
        self.max_faces = max_faces

    @property
    def crop_size(self) -> int:
        return self._require_restorer().out_size

    def _require_restorer(self) -> GFPGANv1Clean:
        if self.restorer is None:
            raise ModelNotLoadedError("face remaster is unavailable: the GFPGAN restorer weights are not loaded")
        return self.restorer

    def remaster(self, image: np.ndarray) -> np.ndarray:
        """Remaster one RGB uint8 (H, W, 3) image; see run_batch."""
        return self.run_batch([image])[0]

    def run_batch(self, images: list[np.ndarray], options: list[dict] | None = None) -> list[np.ndarray]:
        """No per-request options. RGB uint8 (H, W, 3) images in, same shapes out. Images without a usable face come back as
        unchanged copies; pixels away from restored faces are never modified."""
        restorer = self._require_restorer()
        for i, image in enumerate(images):
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
                raise ValueError(f"image {i}: expected an RGB uint8 (H, W, 3) array, got {got}")
        faces = [face for i, image in enumerate(images) for face in self._align(i, image, restorer.out_size)]
        outputs = [image.copy() for image in images]
        if not faces:
            return outputs
        crops = np.stack(
            [
                cv2.warpAffine(
                    images[face.image_index], face.affine, (restorer.out_size,) * 2,
                    flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=CROP_BORDER_RGB,
                )
                for face in faces
            ]
        )
        restored = self._restore(restorer, crops)
        for face, crop in zip(faces, restored):
            self._paste(outputs[face.image_index], crop, face.affine)
        return outputs

    def _align(self, index: int, image: np.ndarray, crop_size: int) -> list[_AlignedFace]:
        template = FFHQ_TEMPLATE_512 * (crop_size / 512.0)
        aligned = []
        faces = [face for face in self.detector.detect(image) if face.score >= self.min_score
                 and min(face.box[2] - face.box[0], face.box[3] - face.box[1]) >= self.min_face]
        if self.max_faces is not None and len(faces) > self.max_faces:  # keep the largest, in detector order
            areas = [(face.box[2] - face.box[0]) * (face.box[3] - face.box[1]) for face in faces]
            keep = set(sorted(range(len(faces)), key=lambda i: -areas[i])[:self.max_faces])
            faces = [face for i, face in enumerate(faces) if i in keep]
        for face in faces:
            affine = similarity_transform(face.landmarks, template)
            magnification = float(np.sqrt(abs(np.linalg.det(affine[:, :2]))))
            if magnification > 1.0 and not self.upscale_crop:
                continue
            aligned.append(_AlignedFace(index, affine))
        return aligned

    def _restore(self, restorer: GFPGANv1Clean, crops: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 crops -> (N, S, S, 3) float32 restored faces in 0..255."""
        chunk = self.max_faces_per_forward or len(crops)
        batch = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div_(255.0)
        restored = torch.cat([restorer.restore(batch[i : i + chunk]) for i in range(0, len(batch), chunk)])
        return restored.float().mul_(255.0).permute(0, 2, 3, 1).cpu().numpy()

    def _paste(self, output: np.ndarray, restored: np.ndarray, affine: np.ndarray) -> None:
        """Blend one restored crop into `output` in place, touching only the region the crop covers."""
        h, w = output.shape[:2]
        size = restored.shape[0]
        inverse = cv2.invertAffineTransform(affine)
        corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64) @ inverse.T
        margin = 4  # the mask only shrinks inside the warped square; a few px absorb interpolation
        x0 = max(0, int(np.floor(corners[:, 0].min())) - margin)
        y0 = max(0, int(np.floor(corners[:, 1].min())) - margin)
        x1 = min(w, int(np.ceil(corners[:, 0].max())) + margin)
        y1 = min(h, int(np.ceil(corners[:, 1].max())) + margin)
        if x1 <= x0 or y1 <= y0:
            return
        # Warping into the region only (shifted translation) costs O(face), not O(photo), per face.
        local = inverse.copy()
        local[:, 2] -= (x0, y0)
        canvas = (x1 - x0, y1 - y0)
        # replicate, not black, beyond the crop edge: no dark rim can bleed in through the feathering
        pasted = cv2.warpAffine(restored, local, canvas, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        mask = (feathered_mask(size, local, canvas) * self.blend)[:, :, None]
        region = output[y0:y1, x0:x1].astype(np.float32)
        blended = mask * pasted + (1.0 - mask) * region
        output[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
