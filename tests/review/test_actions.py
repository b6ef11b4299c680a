"""training/review/actions.py's DataFolder acts only inside its data folder, whoever calls it (issue #15).

Each test puts hostile input straight into DataFolder, the lowest level that moves files, and checks that
nothing anywhere around the data folder changed: not a file, not a folder.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from tests.review.conftest import tree
from tests.tiny_model import make_images
from training.errors import StageError
from training.review.actions import DataFolder

IMAGE = "images/circle/circle000.jpg"


@pytest.fixture
def data(tmp_path) -> Path:
    """A small data folder (3 labels, 3 images each) with folders beside it that a path could escape to."""
    for name in ("outside", "abs", "elsewhere"):
        (tmp_path / name).mkdir()
    (tmp_path / "victim.jpg").write_bytes(b"not the data folder's")
    return make_images(tmp_path / "data", per_label=3)


@pytest.mark.parametrize("label", ["../../outside", "ABS", ".", "..", "", "circle/../square", "square/", "Square",
                                   None, ["square"]])
def test_a_move_goes_only_to_one_of_the_datasets_labels(data, label):
    label = str(data.parent / "abs") if label == "ABS" else label  # an absolute path that exists
    before = tree(data.parent)
    folder = DataFolder(data, "test")
    try:
        with pytest.raises(StageError, match=r"is not a label of this dataset, so nothing was changed: move "
                                             r"images to one of circle, square, triangle"):
            folder.relabel(IMAGE, label)
    finally:
        folder.close()
    assert tree(data.parent) == before


@pytest.mark.parametrize("original", ["images/../../victim.jpg", "VICTIM", "images/circle/../../../victim.jpg",
                                      "trash/../../victim.jpg", "../victim.jpg", "images/circle/./circle000.jpg",
                                      "images//circle/circle000.jpg", "trash/images/circle/circle000.jpg"])
@pytest.mark.parametrize("action", ["keep", "delete", "relabel"])
def test_an_image_named_outside_the_label_folders_is_refused(data, original, action):
    original = str(data.parent / "victim.jpg") if original == "VICTIM" else original
    if original.startswith("trash/images/"):  # a real file there, that review didn't put there
        (data / "trash" / "images" / "circle").mkdir(parents=True)
        (data / "images" / "circle" / "circle001.jpg").rename(data / original)
    before = tree(data.parent)
    folder = DataFolder(data, "test")
    try:
        with pytest.raises(StageError, match="is not an image in .*, so nothing was changed"):
            folder.keep(original) if action == "keep" else folder.delete(original) if action == "delete" else \
                folder.relabel(original, "square")
    finally:
        folder.close()
    assert tree(data.parent) == before


def test_a_symlinked_trash_folder_leading_out_is_not_followed(data):
    (data / "trash").symlink_to(data.parent / "elsewhere", target_is_directory=True)
    before = tree(data.parent)
    folder = DataFolder(data, "test")
    try:
        with pytest.raises(StageError, match=r"would be in .*elsewhere.*, outside .*data \(a symlink\?\), so "
                                             r"nothing was changed"):
            folder.delete(IMAGE)
    finally:
        folder.close()
    assert tree(data.parent) == before and not any((data.parent / "elsewhere").iterdir())


def test_a_symlinked_label_folder_leading_out_is_not_followed(data):
    outside = data.parent / "outside" / "square"
    (data / "images" / "square").rename(outside)
    (data / "images" / "square").symlink_to(outside, target_is_directory=True)
    before = tree(data.parent)
    folder = DataFolder(data, "test")
    try:
        assert folder.labels == ["circle", "square", "triangle"]
        with pytest.raises(StageError, match=r"would be in .*outside/square, outside .*data \(a symlink\?\)"):
            folder.relabel(IMAGE, "square")
    finally:
        folder.close()
    assert tree(data.parent) == before


@pytest.mark.parametrize("row", [
    ["delete", IMAGE, IMAGE, "trash/../../outside/circle000.jpg"],  # finishing it would move the image out
    ["relabel", IMAGE, IMAGE, "images/../../outside/circle000.jpg"],
    ["relabel", "images/../../victim.jpg", "images/../../victim.jpg", "images/circle/victim.jpg"],  # pull one in
    ["relabel", IMAGE, IMAGE, "/OUTSIDE/circle000.jpg"],
])
def test_a_review_log_naming_paths_outside_the_data_folder_is_refused(data, row):
    row = [p.replace("/OUTSIDE", str(data.parent / "outside")) for p in row]
    with (data / "review.csv").open("w", newline="") as f:  # as a page killed right after recording the change
        csv.writer(f, lineterminator="\n").writerows([["time", "action", "original", "before", "after"],
                                                      ["2999-01-01T00:00:00+00:00", *row]])
    before = tree(data.parent)
    with pytest.raises(StageError, match=r"review.csv line 2 names .*, which is not an image in .*; review never "
                                         r"writes such a line, so nothing was changed: fix or remove it"):
        DataFolder(data, "test")
    assert tree(data.parent) == before
    assert not (data / ".lock").exists() or (data / ".lock").read_text() == ""


def test_undo_leaves_no_folder_it_made(data):
    before = tree(data)
    folder = DataFolder(data, "test")
    try:
        folder.delete(IMAGE)  # makes trash/images/circle/
        folder.relabel("images/square/square000.jpg", "triangle")
        folder.undo()
        folder.undo()
    finally:
        folder.close()
    after = tree(data)
    assert {p: v for p, v in after.items() if p not in ("review.csv", "manifest.csv")} == before
    assert not (data / "trash").exists()


def test_a_folder_of_trash_kept_by_other_images_stays(data):
    folder = DataFolder(data, "test")
    try:
        folder.delete(IMAGE)
        folder.delete("images/circle/circle001.jpg")
        folder.undo()
        assert sorted(os.listdir(data / "trash" / "images" / "circle")) == ["circle000.jpg"]
        folder.undo()
        assert not (data / "trash").exists()
    finally:
        folder.close()
