"""The storage contract shared by every backend: names, kinds, errors and the ObjectStore ABC."""

from __future__ import annotations

import re
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Final, Literal, get_args

Kind = Literal["uploads", "results"]
KINDS: Final[tuple[str, ...]] = get_args(Kind)

# The extension decides the content type: user-chosen content types are an XSS vector
# (an "image" served as text/html), so stores never keep one that disagrees with the name.
CONTENT_TYPES: Final[dict[str, str]] = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "tif": "image/tiff",
    "bmp": "image/bmp",
    "gif": "image/gif",
}
ALLOWED_EXTENSIONS: Final[frozenset[str]] = frozenset(CONTENT_TYPES)
# Spellings callers get from Pillow's format names; names themselves only use the short form.
_EXTENSION_ALIASES: Final[dict[str, str]] = {"jpeg": "jpg", "tiff": "tif"}

# Lowercase canonical uuid4 only; [0-9a-f] is literal ASCII, so unicode digits cannot sneak in.
_NAME_PATTERN: Final = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    r"\.(?:" + "|".join(sorted(ALLOWED_EXTENSIONS)) + r")"
)


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    content_type: str


class StorageError(RuntimeError):
    """The backend failed (I/O error, S3 error, unreachable); the message says what and where."""


class InvalidObjectName(ValueError):
    """An object name failed validation (it is never used to build a path or key)."""


def new_object_name(extension: str) -> str:
    """A fresh, unguessable object name such as '<uuid4>.png' ('jpeg'/'tiff' become 'jpg'/'tif')."""
    ext = extension.lower().lstrip(".")
    ext = _EXTENSION_ALIASES.get(ext, ext)
    if ext not in ALLOWED_EXTENSIONS:
        raise InvalidObjectName(
            f"extension {extension!r} is not allowed; use one of {sorted(ALLOWED_EXTENSIONS)}"
        )
    return f"{uuid.uuid4()}.{ext}"


def validate_object_name(name: str) -> str:
    """Return `name` unchanged if it is '<lowercase uuid4>.<allowed ext>', else raise InvalidObjectName."""
    if not isinstance(name, str) or _NAME_PATTERN.fullmatch(name) is None:
        raise InvalidObjectName(
            f"invalid object name {name!r}: expected '<lowercase uuid4>.<ext>' "
            f"with ext in {sorted(ALLOWED_EXTENSIONS)}"
        )
    return name


def validate_kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise ValueError(f"invalid object kind {kind!r}: expected one of {list(KINDS)}")
    return kind  # type: ignore[return-value]


def content_type_for(name: str) -> str:
    """The content type implied by a (validated) object name's extension."""
    return CONTENT_TYPES[validate_object_name(name).rsplit(".", 1)[1]]


def checked_content_type(name: str, content_type: str) -> str:
    """The canonical content type for `name`; raise ValueError if `content_type` disagrees with it."""
    expected = content_type_for(name)
    media_type = content_type.split(";", 1)[0].strip().lower() if isinstance(content_type, str) else ""
    if media_type != expected:
        raise ValueError(
            f"content type {content_type!r} does not match object {name!r} (expected {expected!r})"
        )
    return expected


class ObjectStore(ABC):
    """Stores uploads and results. Every method validates `kind` and `name` before touching anything."""

    @abstractmethod
    def put(self, kind: Kind, name: str, data: bytes, content_type: str) -> None:
        """Store atomically: after a failure, no partial object is visible."""

    @abstractmethod
    def get(self, kind: Kind, name: str) -> StoredObject | None:
        """The object, or None when it is missing or expired."""

    @abstractmethod
    def delete(self, kind: Kind, name: str) -> None:
        """Remove the object; deleting a missing object is not an error."""

    @abstractmethod
    def public_url(self, kind: Kind, name: str, service_base_url: str) -> str:
        """A public, time-limited URL a browser can GET."""

    @abstractmethod
    def check(self) -> None:
        """Raise StorageError when the store is unusable (startup and health checks)."""
