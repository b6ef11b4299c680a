"""training/data/sources.py: URL lists, folders and archives (local and fetched over loopback HTTP)."""
from __future__ import annotations

import functools
import http.server
import io
import shutil
import tarfile
import threading
import zipfile

import pytest
from PIL import Image

from training.data.sources import archive_items, folder_items, read_url_list
from training.errors import StageError


def _jpeg(colour) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (80, 80), colour).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture
def photo_folder(tmp_path):
    root = tmp_path / "photos"
    for label, colour in (("grizzly", "brown"), ("teddy", "orange")):
        (root / label / "nested").mkdir(parents=True)
        (root / label / "a.jpg").write_bytes(_jpeg(colour))
        (root / label / "nested" / "b.JPEG").write_bytes(_jpeg(colour))
        (root / label / "notes.txt").write_text("not an image")
        (root / label / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # the system's, not the person's
        (root / label / ".ipynb_checkpoints").mkdir()
        (root / label / ".ipynb_checkpoints" / "a-checkpoint.jpg").write_bytes(_jpeg(colour))
    (root / ".hidden").mkdir()
    return root


@pytest.mark.parametrize("text,labels,expected", [
    ("label,url\ngrizzly,http://x/1.jpg\nteddy, http://x/2.jpg\n", (), [("grizzly", "http://x/1.jpg"), ("teddy", "http://x/2.jpg")]),
    ("label,url\ngrizzly,http://x/1.jpg\nteddy,http://x/2.jpg\n", ("teddy",), [("teddy", "http://x/2.jpg")]),
    ("\ufefflabel,url\r\ngrizzly,http://x/1.jpg\r\n", (), [("grizzly", "http://x/1.jpg")]),
    ("http://x/1.jpg\n\n# a comment\nhttp://x/2.jpg\n", ("grizzly",), [("grizzly", "http://x/1.jpg"), ("grizzly", "http://x/2.jpg")]),
])
def test_url_lists(tmp_path, text, labels, expected):
    path = tmp_path / "urls.txt"
    path.write_text(text, encoding="utf-8")
    assert read_url_list(path, labels) == expected


@pytest.mark.parametrize("text,labels,message", [
    ("http://x/1.jpg\n", (), "pass exactly one --labels"),
    ("http://x/1.jpg\n", ("a", "b"), "pass exactly one --labels"),
    ("label,url\ngrizzly,http://x/1.jpg\n", ("grizzly", "panda"), "no images for label.*'panda'"),
])
def test_url_list_errors_say_what_to_do(tmp_path, text, labels, message):
    path = tmp_path / "urls.txt"
    path.write_text(text)
    with pytest.raises(StageError, match=message):
        read_url_list(path, labels)


def test_missing_url_file(tmp_path):
    with pytest.raises(StageError, match="does not exist"):
        read_url_list(tmp_path / "nope.csv", ())


def test_folder_lists_every_file_per_label_recursively(photo_folder):
    """Every file, whatever its name: the clean stage reads each by content and gives each a manifest row."""
    items = folder_items(photo_folder, ())
    assert [(label, p.split("photos/")[1]) for label, p in items] == [
        ("grizzly", "grizzly/a.jpg"), ("grizzly", "grizzly/nested/b.JPEG"), ("grizzly", "grizzly/notes.txt"),
        ("teddy", "teddy/a.jpg"), ("teddy", "teddy/nested/b.JPEG"), ("teddy", "teddy/notes.txt")]


def test_the_folder_above_the_label_folders_gets_a_hint(photo_folder, tmp_path, caplog):
    (tmp_path / "images").mkdir()
    shutil.copytree(photo_folder, tmp_path / "images" / "photos")
    items = folder_items(tmp_path / "images", ())
    assert {label for label, _ in items} == {"photos"}  # what it would take the labels to be
    assert f"use --from-folder {tmp_path / 'images' / 'photos'}" in caplog.text and "grizzly, teddy" in caplog.text


def test_no_hint_for_label_folders(photo_folder, caplog):
    folder_items(photo_folder, ())
    assert "use --from-folder" not in caplog.text


@pytest.mark.parametrize("make", ["not_a_folder", "empty"])
def test_folder_errors(tmp_path, make):
    target = tmp_path / "x"
    if make == "empty":
        target.mkdir()
    with pytest.raises(StageError, match="not a folder|no files found"):
        folder_items(target, ())


@pytest.mark.parametrize("fmt", ["zip", "gztar"])
def test_local_archive_with_a_wrapping_folder(photo_folder, tmp_path, fmt):
    archive = shutil.make_archive(str(tmp_path / "bears"), fmt, root_dir=photo_folder.parent, base_dir="photos")
    items = archive_items(archive, tmp_path / "data", ())
    assert sorted({label for label, _ in items}) == ["grizzly", "teddy"] and len(items) == 6
    assert all(p.startswith(str(tmp_path / "data" / "archive")) for _, p in items)


def test_archive_that_escapes_its_folder_is_refused(tmp_path):
    evil = tmp_path / "evil.tgz"
    with tarfile.open(evil, "w:gz") as tar:
        data = _jpeg("red")
        info = tarfile.TarInfo("../../escaped.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(StageError, match="could not extract"):
        archive_items(str(evil), tmp_path / "data", ())
    assert not (tmp_path / "escaped.jpg").exists() and not (tmp_path / "data" / "archive").exists()


def test_archive_fetched_over_http(photo_folder, tmp_path):
    with zipfile.ZipFile(tmp_path / "bears.zip", "w") as z:
        for f in photo_folder.rglob("*.jpg"):
            z.write(f, f.relative_to(photo_folder))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        items = archive_items(f"http://127.0.0.1:{server.server_port}/bears.zip", tmp_path / "data", ("teddy",))
    finally:
        server.shutdown()
    assert [label for label, _ in items] == ["teddy"]
    assert (tmp_path / "data" / "downloads" / "bears.zip").is_file()


def test_archive_that_is_neither_file_nor_url(tmp_path):
    with pytest.raises(StageError, match="neither an existing file nor an http"):
        archive_items("ftp://somewhere/x.zip", tmp_path, ())
