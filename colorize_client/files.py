"""The photos a run works on: which files, where each result goes, whether it is already
there, and writing it so that a reader never sees half a file."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .protocol import sniff_image_type

OUTPUT_SUFFIX = ".colorized.png"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk every complete PNG ends with


@dataclass(frozen=True)
class Photo:
    source: Path
    relative: Path   # where it sits under the folder it was found in (just its name for a file argument)
    output: Path


@dataclass(frozen=True)
class Skipped:
    source: Path
    reason: str


def find_photos(paths: Iterable[Path], out_dir: Path) -> tuple[list[Photo], list[Skipped]]:
    """Photos under ``paths`` (folders walked recursively, in name order) and what was passed over.

    Each result keeps the photo's place relative to the folder it was found in:
    ``shoebox/1962/a.jpg`` -> ``OUT/1962/a.colorized.png``. Files are recognised by their first
    bytes, not their extension. Hidden files and folders, the output folder, and earlier results
    are passed over silently; other files that are not images are listed as skipped.
    """
    out_resolved = out_dir.resolve()
    found: list[tuple[Path, Path]] = []
    skipped: list[Skipped] = []
    for root in paths:
        if root.is_dir():
            for folder, subfolders, names in os.walk(root):
                folder_path = Path(folder)
                subfolders[:] = sorted(name for name in subfolders if not name.startswith(".")
                                       and (folder_path / name).resolve() != out_resolved)
                for name in sorted(names):
                    _consider(folder_path / name, (folder_path / name).relative_to(root), found, skipped)
        elif root.is_file():
            _consider(root, Path(root.name), found, skipped)
        else:
            skipped.append(Skipped(root, "no such file or folder"))
    return _name_outputs(found, out_dir, skipped), skipped


def _consider(path: Path, relative: Path, found: list, skipped: list) -> None:
    if path.name.startswith(".") or path.name.endswith(OUTPUT_SUFFIX):
        return
    try:
        with path.open("rb") as handle:
            head = handle.read(12)
    except OSError as exc:
        skipped.append(Skipped(path, f"cannot read: {exc.strerror or exc}"))
        return
    if sniff_image_type(head) is None:
        skipped.append(Skipped(path, "not an image (JPEG, PNG, WebP, TIFF, BMP or GIF)"))
        return
    found.append((path, relative))


def _name_outputs(found: list[tuple[Path, Path]], out_dir: Path, skipped: list[Skipped]) -> list[Photo]:
    # photo.jpg -> photo.colorized.png; when photo.jpg and photo.png share a folder, both keep their
    # extension (photo.jpg.colorized.png), so the name depends only on that folder's contents.
    stems: dict[Path, int] = {}
    for _, relative in found:
        stems[relative.with_suffix("")] = stems.get(relative.with_suffix(""), 0) + 1
    photos, taken = [], {}
    for source, relative in found:
        base = relative if stems[relative.with_suffix("")] > 1 else relative.with_suffix("")
        output = out_dir / base.parent / (base.name + OUTPUT_SUFFIX)
        if output in taken:
            skipped.append(Skipped(source, f"its output {output} is already the output of {taken[output]}"))
            continue
        taken[output] = source
        photos.append(Photo(source, relative, output))
    return photos


def is_complete_png(path: Path) -> bool:
    """An earlier run's result that is whole: a PNG signature at the start and IEND at the end."""
    try:
        with path.open("rb") as handle:
            if handle.read(8) != _PNG_SIGNATURE:
                return False
            handle.seek(0, os.SEEK_END)
            if handle.tell() < 8 + len(_PNG_END):
                return False
            handle.seek(-len(_PNG_END), os.SEEK_END)
            return handle.read() == _PNG_END
    except OSError:
        return False


def looks_like_complete_png(data: bytes) -> bool:
    return data.startswith(_PNG_SIGNATURE) and data.endswith(_PNG_END) and len(data) > 8 + len(_PNG_END)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` so that it appears whole or not at all, also across a crash or power loss:
    a hidden temporary file in the same folder, flushed to disk, then renamed over the target.
    The folder itself is not flushed: after a power loss a result may be missing (and is redone,
    replayed by the service, on the next run), but never cut short."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
