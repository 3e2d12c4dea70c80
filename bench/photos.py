"""The benchmark's input: real black-and-white photos, 512x512, pre-encoded once.

Photos come from scikit-image's bundled samples (no download), turned grey, centre-cropped
and resized; most are JPEG (old photos are mostly scanned to JPEG), every fourth is PNG.
Multipart bodies are built once too, so the load generator spends no CPU encoding them.
"""
from __future__ import annotations

import io
import uuid
from dataclasses import dataclass

import numpy as np
from PIL import Image

SAMPLES = ("camera", "astronaut", "coffee", "moon", "chelsea", "rocket", "brick", "immunohistochemistry")


@dataclass(frozen=True)
class Photo:
    name: str
    data: bytes          # encoded file, as a client would upload it
    content_type: str


def grey_square(array: np.ndarray, size: int) -> Image.Image:
    image = Image.fromarray(array).convert("L")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)


def load_photos(size: int = 512, count: int = len(SAMPLES)) -> list[Photo]:
    import skimage.data  # ships with the test extra

    photos = []
    for index, name in enumerate(SAMPLES[:count]):
        image = grey_square(getattr(skimage.data, name)(), size)
        buffer = io.BytesIO()
        if index % 4 == 3:
            image.save(buffer, format="PNG")
            photos.append(Photo(f"{name}.png", buffer.getvalue(), "image/png"))
        else:
            image.save(buffer, format="JPEG", quality=90)
            photos.append(Photo(f"{name}.jpg", buffer.getvalue(), "image/jpeg"))
    return photos


def multipart_body(photo: Photo, fields: dict[str, str], file_field: str = "image") -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data POST carrying ``photo`` and text ``fields``."""
    boundary = uuid.uuid4().hex
    chunks = []
    for name, value in fields.items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{photo.name}"\r\n'
                  f"Content-Type: {photo.content_type}\r\n\r\n".encode() + photo.data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"
