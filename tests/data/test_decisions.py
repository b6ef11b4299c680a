"""training/data/decisions.py: review.csv, which every `data` rerun replays, names only images in the data folder."""
from __future__ import annotations

import csv

import pytest

from training.data.decisions import image_path, read_log
from training.errors import StageError


@pytest.mark.parametrize("path,expected", [
    ("images/grizzly/0a1b.jpg", ("grizzly", "0a1b.jpg")),
    ("trash/images/teddy/ff.jpg", ("teddy", "ff.jpg")),
    ("images/../../outside.jpg", None), ("images/grizzly/../x.jpg", None), ("/etc/images/a/b.jpg", None),
    ("images/./x.jpg", None), ("images/.hidden/x.jpg", None), ("images/a/b/c.jpg", None), ("trash/x.jpg", None),
    ("images/a\\b/x.jpg", None), ("images/a/x\0.jpg", None), ("images//x.jpg", None), (None, None), (3, None),
])
def test_image_path_accepts_only_the_places_review_writes(path, expected):
    assert image_path(path) == expected


@pytest.mark.parametrize("row", [
    ["delete", "images/a/x.jpg", "images/a/x.jpg", "trash/../../outside/x.jpg"],
    ["relabel", "images/a/x.jpg", "images/a/x.jpg", "/tmp/x.jpg"],
    ["relabel", "images/../../victim.jpg", "images/../../victim.jpg", "images/a/victim.jpg"],
    ["keep", "trash/images/a/x.jpg", "trash/images/a/x.jpg", "trash/images/a/x.jpg"],
])
def test_a_log_naming_other_paths_is_refused_before_any_stage_acts_on_it(tmp_path, row):
    """The data stage replays review.csv on every rerun and writes images where it says: a planted line must
    not make it write outside the data folder."""
    with (tmp_path / "review.csv").open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([["time", "action", "original", "before", "after"],
                                                      ["2026-01-01T00:00:00+00:00", *row]])
    with pytest.raises(StageError, match=r"review.csv line 2 names .*; review never writes such a line"):
        read_log(tmp_path)
