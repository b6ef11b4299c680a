"""`python -m training data --from-feedback` (training/data/feedback.py), then review, then train: the visitors'
photos a reviewer kept, and only those, are trained on. The feedback folder is written by the app's own store
(serving/feedback.py), as a FEEDBACK_DIR would be."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from serving.feedback import FeedbackStore
from serving.model import Classifier
from tests.tiny_model import draw_shape, draw_unrelated, make_images, tiny_config
from training.cli import main
from training.config import Config
from training.data.manifest import read_manifest
from training.data.stage import build_dataset
from training.review.page import PENDING, _act, build_page
from training.review.state import open_review

# (what the photo shows, what the visitor said): A kept, B moved, C deleted, D kept as none of these, E left pending.
SENT = [("circle", "circle"), ("square", "triangle"), ("triangle", "circle"), (None, "none of these"),
        ("square", "square")]


def _photo(shows: str | None, seed: int):
    return draw_unrelated(3) if shows is None else draw_shape(shows, random.Random(seed))


def _send(folder: Path, clf: Classifier, items, seed: int = 100) -> None:
    store = FeedbackStore(folder, "alice/shapes@abc1234")
    for n, (shows, said) in enumerate(items):
        path = folder.parent / f"upload-{seed + n}.png"
        _photo(shows, seed + n).save(path)
        store.add(path, clf.judge(path), said)


@pytest.fixture
def sent(tiny_model, tmp_path) -> Path:
    folder = tmp_path / "sent" / "feedback"
    clf = Classifier.from_folder(tiny_model.folder)
    _send(folder, clf, SENT)
    _send(folder, clf, [SENT[0]])  # the same photo again, from another app process (a second rows file)
    return folder


@pytest.fixture
def data(tiny_model, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_model.data, tmp_path / "data"))


def _feedback_rows(data: Path):
    return [r for r in read_manifest(data / "manifest.csv") if r.source == "feedback"]


def test_rows_come_in_pending_outside_images_and_a_rerun_brings_only_new_ones(tiny_model, sent, data):
    assert main(["data", "--from-feedback", str(sent), "--data", str(data)]) == 0
    rows = _feedback_rows(data)
    assert [r.status for r in rows] == ["pending_review"] * 5 + ["duplicate"]
    assert [r.label for r in rows] == [said for _, said in SENT] + ["circle"]
    assert rows[5].file == rows[0].file and rows[5].reason == "same_pixels"
    assert all(r.file.startswith(f"feedback/{r.label}/") and (data / r.file).is_file() for r in rows[:5])
    assert all(r.url.startswith(f"feedback:{sent}#") for r in rows)
    assert len(list((data / "images").glob("*/*"))) == 60  # nothing under images/ until review keeps it
    before = (data / "manifest.csv").read_bytes()
    assert main(["data", "--from-feedback", str(sent), "--data", str(data)]) == 0
    assert (data / "manifest.csv").read_bytes() == before
    _send(sent, Classifier.from_folder(tiny_model.folder), [("triangle", "triangle")], seed=200)
    assert main(["data", "--from-feedback", str(sent), "--data", str(data)]) == 0
    assert [r.label for r in _feedback_rows(data)][6:] == ["triangle"] and len(_feedback_rows(data)) == 7


def test_a_folder_that_is_no_dataset_or_a_name_that_is_no_repo_is_refused(sent, data, tmp_path, caplog):
    assert main(["data", "--from-feedback", str(sent), "--data", str(tmp_path / "nothing")]) == 2
    assert "no data folder at" in caplog.text
    assert main(["data", "--from-feedback", "not a repo", "--data", str(data)]) == 2
    assert "neither a folder nor a Hub dataset repo" in caplog.text


def test_import_review_then_train_uses_exactly_the_kept_photos(tiny_model, sent, data, tmp_path):
    from training.train.stage import train

    assert main(["data", "--from-feedback", str(sent), "--data", str(data)]) == 0
    review = open_review(tiny_model.folder, data)
    try:
        page = build_page(review, count=24)
        split = next(c for c in page.config["components"] if c["props"].get("elem_id") == "split")
        assert split["props"]["value"] == PENDING  # pending feedback first, while any waits
        cards = review.pending(24)
        assert [c.label for c in cards] == [said for _, said in SENT]
        sent_rows = [json.loads(line) for line in (data / "feedback" / "rows.jsonl").read_text().splitlines()]
        assert [c.predicted for c in cards] == [r["predicted"] for r in sent_rows]
        a, b, c, d, _ = (card.original for card in cards)
        _act(review, "keep", a, 0)  # the page's Keep: under the visitor's label
        review.data.admit(b, "square")  # the page's "Move to label" menu
        _act(review, "delete", c, 0)
        _act(review, "keep", d, 0)  # "none of these": joins the photos that measure the check
        assert [card.original for card in review.pending(24)] == [cards[4].original]
    finally:
        review.close()
    rows = {r.url: r for r in _feedback_rows(data)}
    statuses = [(r.status, r.reason, r.label) for r in rows.values()]
    assert statuses == [("kept", "kept_by_review", "circle"), ("kept", "relabelled", "square"),
                        ("rejected", "removed_by_review", "circle"), ("kept", "kept_by_review", "none of these"),
                        ("pending_review", "", "square"), ("duplicate", "same_pixels", "circle")]
    model = train(tiny_config(data, tmp_path / "model", epochs=1, size=32))
    config = json.loads((model / "config.json").read_text())
    assert config["dataset"]["images_per_label"] == {"circle": 21, "square": 21, "triangle": 20}
    assert config["novelty"]["others"]["images"] == 1  # the "none of these" photo, from other/feedback/


def test_a_data_rerun_keeps_the_reviewed_feedback(tiny_model, sent, tmp_path):
    source = make_images(tmp_path / "mine")
    cfg = Config(name="shapes", data=tmp_path / "data", from_folder=source / "images", min_per_label=5)
    build_dataset(cfg)
    assert main(["data", "--from-feedback", str(sent), "--data", str(cfg.data_dir)]) == 0
    from training.review.actions import DataFolder

    folder = DataFolder(cfg.data_dir, "test")
    try:
        first = _feedback_rows(cfg.data_dir)[0].file
        kept = folder.admit(first, "circle").after
    finally:
        folder.close()
    build_dataset(cfg)  # a plain rerun: feedback is no input of it, and stays as review left it
    assert (cfg.data_dir / kept).is_file()
    rows = _feedback_rows(cfg.data_dir)
    assert len(rows) == 6 and rows[0].file == kept and rows[0].status == "kept"
    assert [r.status for r in rows[1:5]] == ["pending_review"] * 4


def test_rows_come_in_from_a_private_hub_dataset_with_a_token(tiny_model, sent, data, tmp_path):
    import subprocess
    import sys

    from tests.hub_server import StandInHub
    from tests.live_app import ROOT

    files = {p.relative_to(sent).as_posix(): p.read_bytes() for p in sent.rglob("*") if p.is_file()}
    with StandInHub(tokens={"hf_good": "alice"}) as hub:
        hub.create("dataset", "alice/shapes-feedback", private=True)
        hub.commit("dataset", "alice/shapes-feedback", files, "Scheduled Commit")
        command = [sys.executable, "-m", "training", "data", "--from-feedback", "alice/shapes-feedback",
                   "--data", str(data)]
        refused = subprocess.run(command, cwd=ROOT, env=hub.client_env(tmp_path / "hf"), capture_output=True,
                                 text=True, timeout=120)
        assert refused.returncode == 2 and "private and HF_TOKEN" in refused.stderr
        assert not (data / "feedback").exists()
        done = subprocess.run(command, cwd=ROOT, env=hub.client_env(tmp_path / "hf", token="hf_good"),
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _feedback_rows(data)
    assert [r.status for r in rows] == ["pending_review"] * 5 + ["duplicate"]
    assert all(r.url.startswith("feedback:alice/shapes-feedback#") for r in rows)
