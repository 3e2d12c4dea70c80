"""The key API's ``image`` field may be text: an http(s) URL, base64, or a data URL."""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from pipeline.errors import ImageTooLargeError, InvalidImageError

_DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                       re.IGNORECASE)
_BASE64_CHARS = re.compile(r"^[A-Za-z0-9+/_\-=\s]+$")


@dataclass(frozen=True)
class ImageText:
    url: str | None = None     # fetch this
    data: bytes | None = None  # or these are the image bytes


def parse_image_text(text: str, *, max_bytes: int) -> ImageText:
    """Auto-detect the form of a text ``image`` value; raise InvalidImageError if it is none."""
    value = text.strip()
    if not value:
        raise InvalidImageError("image is empty")
    lowered = value[:8].lower()
    if lowered.startswith(("http://", "https://")):
        return ImageText(url=value)
    if lowered.startswith("data:"):
        return ImageText(data=_decode_data_url(value, max_bytes))
    if "://" in value[:16]:
        raise InvalidImageError("image URL must use http or https")
    return ImageText(data=_decode_base64(value, max_bytes))


def _decode_data_url(value: str, max_bytes: int) -> bytes:
    match = _DATA_URL.match(value)
    if not match:
        raise InvalidImageError("image data URL is malformed (expected data:<type>;base64,<data>)")
    mime = (match.group("type") or "").lower()
    if mime and not mime.startswith("image/") and mime != "application/octet-stream":
        raise InvalidImageError(f"image data URL has media type {mime!r}, not an image")
    payload = value[match.end():]
    if match.group("b64"):
        return _decode_base64(payload, max_bytes)
    data = unquote_to_bytes(payload)
    if not data:
        raise InvalidImageError("image is empty")
    _check_size(len(data), max_bytes)
    return data


def _decode_base64(value: str, max_bytes: int) -> bytes:
    _check_size(len(value) * 3 // 4 - 2, max_bytes)
    if not _BASE64_CHARS.match(value):
        raise InvalidImageError("image text is not an http(s) URL, a data URL, or base64")
    compact = re.sub(r"\s+", "", value).rstrip("=")
    compact += "=" * (-len(compact) % 4)
    altchars = b"-_" if ("-" in compact or "_" in compact) else None
    try:
        data = base64.b64decode(compact, altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImageError("image text is not valid base64") from None
    if not data:
        raise InvalidImageError("image is empty")
    _check_size(len(data), max_bytes)
    return data


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ImageTooLargeError(f"image is larger than {max_bytes // (1 << 20)} MB")
