"""Which files a `colorize` run picks up, where results go, and how they are written."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from colorize_client.files import find_photos, is_complete_png, looks_like_complete_png, write_atomically
from tests.client_standin import png_bytes

JPEG = b"\xff\xd8\xff\xe0" + b"x" * 50


def tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def test_folders_are_walked_keeping_the_layout_and_non_images_are_noted(tmp_path):
    tree(tmp_path / "box", {"a.jpg": JPEG, "1962/b.JPG": JPEG, "1962/summer/c.png": png_bytes(),
                            "1962/scan-without-extension": JPEG, "notes.txt": b"grandma's notes",
                            ".DS_Store": b"\0\0", ".thumbs/t.jpg": JPEG, "old/a.colorized.png": png_bytes()})
    out = tmp_path / "out"
    photos, skipped = find_photos([tmp_path / "box"], out)
    assert {p.relative.as_posix(): p.output.relative_to(out).as_posix() for p in photos} == {
        "a.jpg": "a.colorized.png", "1962/b.JPG": "1962/b.colorized.png",
        "1962/summer/c.png": "1962/summer/c.colorized.png",
        "1962/scan-without-extension": "1962/scan-without-extension.colorized.png"}
    assert [(s.source.name, s.reason.split(" (")[0]) for s in skipped] == [("notes.txt", "not an image")]


def test_a_file_argument_goes_to_the_top_of_the_output(tmp_path):
    tree(tmp_path, {"deep/x/photo.jpg": JPEG})
    photos, _ = find_photos([tmp_path / "deep/x/photo.jpg"], tmp_path / "out")
    assert photos[0].output == tmp_path / "out" / "photo.colorized.png"


def test_names_that_would_collide_keep_their_extension(tmp_path):
    tree(tmp_path / "box", {"p.jpg": JPEG, "p.png": png_bytes(), "q.jpg": JPEG})
    photos, _ = find_photos([tmp_path / "box"], tmp_path / "out")
    assert sorted(p.output.name for p in photos) == ["p.jpg.colorized.png", "p.png.colorized.png",
                                                     "q.colorized.png"]


def test_two_folders_with_the_same_layout_do_not_overwrite_each_other(tmp_path):
    tree(tmp_path, {"one/a.jpg": JPEG, "two/a.jpg": JPEG})
    photos, skipped = find_photos([tmp_path / "one", tmp_path / "two"], tmp_path / "out")
    assert [p.source for p in photos] == [tmp_path / "one/a.jpg"]
    assert skipped[0].source == tmp_path / "two/a.jpg" and "already the output of" in skipped[0].reason


def test_an_output_folder_inside_the_input_is_not_walked(tmp_path):
    tree(tmp_path / "box", {"a.jpg": JPEG, "colorized/a.jpg": JPEG})
    photos, _ = find_photos([tmp_path / "box"], tmp_path / "box" / "colorized")
    assert [p.relative.as_posix() for p in photos] == ["a.jpg"]


def test_complete_pngs_are_told_from_cut_ones(tmp_path):
    data = png_bytes()
    path = tmp_path / "r.png"
    path.write_bytes(data)
    assert is_complete_png(path) and looks_like_complete_png(data)
    for cut in (data[:-1], data[: len(data) // 2], data[:8], b""):
        path.write_bytes(cut)
        assert not is_complete_png(path) and not looks_like_complete_png(cut)
    path.write_bytes(JPEG)
    assert not is_complete_png(path)
    assert not is_complete_png(tmp_path / "missing.png")


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "a.colorized.png"
    write_atomically(target, b"first")
    assert target.read_bytes() == b"first"

    def fail(descriptor):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        write_atomically(target, b"second, never seen half written")
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.colorized.png"]
