"""The review stage (training/review/state.py, training/data/decisions.py) against copies of the tiny model's data."""
from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.review.conftest import tree
from tests.tiny_model import make_images
from training.config import Config
from training.data.decisions import ReviewLog, read_log
from training.data.manifest import STATUSES, count_rows, read_manifest
from training.data.stage import build_dataset
from training.errors import StageError
from training.review.actions import DataFolder
from training.review.state import draw_split, open_review, trained_on


@pytest.fixture
def data(tiny_model, tmp_path):
    """A copy of the tiny model's data folder, so changes stay in this test."""
    return Path(shutil.copytree(tiny_model.data, tmp_path / "data"))


@pytest.fixture
def review(tiny_model, data):
    session = open_review(tiny_model.folder, data)
    yield session
    session.close()


def _rows(data: Path) -> dict[str, tuple[str, str, str, str]]:
    """{url: (label, status, reason, file)} from the manifest."""
    return {r.url: (r.label, r.status, r.reason, r.file) for r in read_manifest(data / "manifest.csv")}


def _hard(review, label: str) -> str:
    """The hardest image of a label in the validation split."""
    return review.hardest(label, "valid", 1)[0].original


def test_split_is_the_one_training_drew(tiny_model):
    config = json.loads((tiny_model.folder / "config.json").read_text())
    split, warnings = draw_split(config, tiny_model.data, ReviewLog([]), trained_at=0.0)
    valid = {o for o, s in split.items() if s == "valid"}
    reported = json.loads((tiny_model.folder / "report" / "metrics.json").read_text())["top_losses"]
    assert warnings == [] and len(split) == 60
    assert len(valid) == config["metrics"]["valid_images"] == 12
    assert {"/".join(Path(r["file"]).parts[-3:]) for r in reported} <= valid


def test_losses_are_the_ones_training_reported(tiny_model, review):
    reported = json.loads((tiny_model.folder / "report" / "metrics.json").read_text())["top_losses"]
    cards = {c.original: c for label in review.labels for c in review.hardest(label, "valid", 100)}
    for r in reported:
        card = cards["/".join(Path(r["file"]).parts[-3:])]
        assert (card.predicted, card.label) == (r["predicted"], r["actual"])
        assert card.loss == pytest.approx(r["loss"], rel=1e-3, abs=1e-4)  # ONNX float64 vs fastai float32
        assert card.probability == pytest.approx(r["probability"], abs=1e-4)
    losses = [c.loss for c in review.hardest("circle", "train", 100)]
    train_circles = [o for o, s in review.split.items() if s == "train" and o.startswith("images/circle/")]
    assert len(losses) == len(train_circles) == 20 - sum(c.label == "circle" for c in cards.values())
    assert losses == sorted(losses, reverse=True)


def test_delete_moves_to_trash_and_marks_the_manifest(review, data):
    victim = _hard(review, "circle")
    content = (data / victim).read_bytes()
    change = review.data.delete(victim)
    assert change.after == f"trash/{victim}" and not (data / victim).exists()
    assert (data / "trash" / victim).read_bytes() == content
    rows = _rows(data)
    assert rows[victim] == ("circle", "rejected", "removed_by_review", f"trash/{victim}")
    assert sum(r[1] == "kept" for r in rows.values()) == 59 and len(rows) == 60
    assert victim not in {c.original for c in review.hardest("circle", "valid", 100)}
    assert review.changed_since_training() == {"deleted": 1}
    assert [(c.action, c.before, c.after) for c in read_log(data).changes] == [("delete", victim, f"trash/{victim}")]


def test_relabel_moves_the_file_and_the_loss_follows(review, data):
    image = _hard(review, "circle")
    name = Path(image).name
    review.data.relabel(image, "square")
    assert not (data / image).exists() and (data / "images" / "square" / name).is_file()
    assert _rows(data)[image] == ("square", "kept", "relabelled", f"images/square/{name}")
    moved = {c.original: c for c in review.hardest("square", "valid", 100)}[image]
    assert moved.label == "square" and moved.note == "relabelled (was circle)"
    assert review.changed_since_training() == {"relabelled": 1}
    assert review.images_per_label() == {"circle": 19, "square": 21, "triangle": 20}


def test_the_next_train_sees_the_cleaned_images(review, data):
    from training.train.stage import count_images

    review.data.delete(_hard(review, "triangle"))
    review.data.relabel(_hard(review, "circle"), "triangle")
    assert count_images(data / "images") == {"circle": 19, "square": 20, "triangle": 20}


def test_keep_moves_nothing_and_marks_the_manifest(review, data):
    image = _hard(review, "triangle")
    review.data.keep(image)
    assert (data / image).is_file() and _rows(data)[image] == ("triangle", "kept", "kept_by_review", image)
    assert review.hardest("triangle", "valid", 1)[0].note == "kept"
    assert review.changed_since_training() == {}


def test_undo_reverses_the_latest_change_each_time(review, data):
    before = tree(data / "images")
    deleted, moved = _hard(review, "circle"), _hard(review, "square")
    review.data.delete(deleted)
    review.data.relabel(moved, "triangle")

    review.data.undo()
    assert (data / moved).is_file() and not (data / "images" / "triangle" / Path(moved).name).exists()
    assert _rows(data)[moved] == ("square", "kept", "", moved)
    assert _rows(data)[deleted][2] == "removed_by_review" and review.changed_since_training() == {"deleted": 1}

    review.data.undo()
    assert tree(data / "images") == before and not any((data / "trash").rglob("*.jpg"))
    assert {r[1:3] for r in _rows(data).values()} == {("kept", "")}
    assert [c.action for c in read_log(data).changes] == ["delete", "relabel", "undo", "undo"]  # the audit trail
    with pytest.raises(StageError, match="nothing to undo"):
        review.data.undo()


def test_a_second_page_on_the_same_data_is_refused(tiny_model, review, data):
    with pytest.raises(StageError, match=r"in use by python -m training review \(pid \d+\).*stop it"):
        open_review(tiny_model.folder, data)
    with pytest.raises(StageError, match="in use by"):
        build_dataset(Config(data=data, from_folder=data / "images"))
    review.close()
    open_review(tiny_model.folder, data).close()  # the lock goes with the page


def test_summary_counts_still_add_up_after_review(review, data):
    rows = read_manifest(data / "manifest.csv") if (data / "manifest.csv").exists() else []
    (data / "summary.json").write_text(json.dumps({"name": "tiny", **count_rows(rows, review.labels)}))
    review.data.delete(_hard(review, "circle"))
    review.data.relabel(_hard(review, "square"), "circle")
    summary = json.loads((data / "summary.json").read_text())
    assert summary["name"] == "tiny" and summary["total"]["found"] == 60
    assert sum(summary["total"][s] for s in STATUSES) == 60 and summary["total"]["kept"] == 59
    assert summary["labels"]["circle"]["kept"] == 20 and summary["labels"]["square"]["kept"] == 19
    assert summary["reasons"] == {"rejected:removed_by_review": 1, "kept:relabelled": 1}


@pytest.mark.parametrize("blocked", ["review.csv", "manifest.csv", "summary.json"])
def test_a_failed_write_leaves_nothing_half_applied(review, data, blocked):
    review.data.keep(_hard(review, "triangle"))  # so review.csv, manifest.csv and summary.json all exist
    summary = {"name": "tiny", **count_rows(read_manifest(data / "manifest.csv"), review.labels)}
    (data / "summary.json").write_text(json.dumps(summary))
    before = tree(data, lock=True)
    (data / f"{blocked}.tmp").mkdir()  # the atomic write's temporary file can't be created: a real OSError
    victim = _hard(review, "circle")
    with pytest.raises(StageError, match="nothing was changed"):
        review.data.delete(victim)
    (data / f"{blocked}.tmp").rmdir()
    assert tree(data, lock=True) == before
    review.data.delete(victim)  # and it works once the cause is gone
    assert (data / "trash" / victim).is_file()


def test_a_change_interrupted_before_the_move_is_finished_next_time(tiny_model, review, data):
    image = _hard(review, "circle")
    review.data.keep(_hard(review, "square"))
    review.close()
    with (data / "review.csv").open("a", newline="") as f:  # as a page killed right after recording it
        row = ["2999-01-01T00:00:00+00:00", "delete", image, image, f"trash/{image}"]
        csv.writer(f, lineterminator="\n").writerow(row)
    again = open_review(tiny_model.folder, data)
    try:
        assert not (data / image).exists() and (data / "trash" / image).is_file()
        assert _rows(data)[image][2] == "removed_by_review"
    finally:
        again.close()


def test_models_and_data_that_dont_belong_together_are_refused(tiny_model, data):
    (data / "images" / "square").rename(data / "images" / "box")
    with pytest.raises(StageError, match=r"don't belong together: .* labels circle, square, triangle but .* has "
                                         r"box, circle, triangle\. Pass the data folder"):
        open_review(tiny_model.folder, data)
    (data / "images" / "box").rename(data / "images" / "square")
    for f in (data / "images").glob("*/*.jpg"):
        f.rename(f.with_name("other-" + f.name))  # same labels, other images
    with pytest.raises(StageError, match="none of the images the model's report names"):
        open_review(tiny_model.folder, data)
    assert not (data / ".lock").exists() or (data / ".lock").read_text() == ""
    assert not (data / "review_split.json").exists() and not (data / "manifest.csv").exists()


def test_missing_images_are_refused(tiny_model, tmp_path):
    (tmp_path / "empty" / "images" / "circle").mkdir(parents=True)
    with pytest.raises(StageError, match=r"no images in .*empty/images.*--data"):
        open_review(tiny_model.folder, tmp_path / "empty")


def _unprivileged(fn) -> tuple[int, str]:
    """Run fn() in a child process as user `nobody`, so file permissions bind even when tests run as root."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the StageError message through the pipe
        os.close(read)
        code, message = 0, b""
        try:
            os.setgid(65534)
            os.setuid(65534)
            fn()
        except StageError as exc:
            code, message = 3, str(exc).encode()
        except BaseException as exc:  # noqa: BLE001 - anything else is the test failing
            code, message = 4, repr(exc).encode()
        os.write(write, message)
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        message = f.read().decode()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), message


def test_a_read_only_data_folder_is_refused_before_anything_changes(tiny_model):
    # A folder `nobody` can read (tmp_path is private to root): a copy of the model and of the data.
    root = Path(tempfile.mkdtemp(prefix="review-ro-"))
    try:
        model = shutil.copytree(tiny_model.folder, root / "model")
        data = shutil.copytree(tiny_model.data, root / "data")
        for p in [root, *root.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        for d in [data, *(p for p in data.rglob("*") if p.is_dir())]:
            d.chmod(0o555)
        before = tree(data, lock=True)
        run = _unprivileged if os.geteuid() == 0 else lambda fn: (0, fn())
        code, message = run(lambda: open_review(model, data))
        assert code == 3 and "is read-only" in message and "chmod -R u+w" in message
        assert tree(data, lock=True) == before
        for d in [data, *(p for p in data.rglob("*") if p.is_dir())]:
            d.chmod(0o777)
        assert run(lambda: DataFolder(data, "test").close())[0] == 0  # the same check passes once it's writable
    finally:
        for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
            d.chmod(0o755)
        shutil.rmtree(root)


def test_a_data_rerun_keeps_review_decisions(tmp_path):
    photos = make_images(tmp_path / "photos", per_label=8) / "images"
    cfg = Config(name="shapes", data=tmp_path / "data", from_folder=photos, min_per_label=5)
    build_dataset(cfg)
    data = cfg.data_dir
    kept = sorted(r.file for r in read_manifest(data / "manifest.csv") if r.status == "kept")
    deleted, moved = next(f for f in kept if "/circle/" in f), next(f for f in kept if "/square/" in f)
    folder = DataFolder(data, "test")
    folder.delete(deleted)
    folder.relabel(moved, "triangle")
    folder.close()
    images, trash, manifest = tree(data / "images"), tree(data / "trash"), _rows(data)

    summary = build_dataset(cfg)
    assert tree(data / "images") == images and tree(data / "trash") == trash and _rows(data) == manifest
    assert summary["reasons"]["rejected:removed_by_review"] == 1 and summary["reasons"]["kept:relabelled"] == 1

    folder = DataFolder(data, "test")
    folder.undo()  # the relabel: undo still works after a rerun, and the next rerun keeps that too
    folder.close()
    build_dataset(cfg)
    assert (data / moved).is_file() and not (data / "images" / "triangle" / Path(moved).name).exists()
    assert [r for r in read_manifest(data / "manifest.csv") if r.file == moved][0].reason == ""


def test_a_missing_model_folder_is_named_as_missing(tmp_path):
    with pytest.raises(StageError, match=r"no model folder at .*none; .*python -m training train"):
        trained_on(tmp_path / "none")


def test_cli_says_what_is_wrong_without_a_traceback(tiny_model, tmp_path):
    import subprocess
    import sys

    from tests.live_app import ROOT

    out = subprocess.run([sys.executable, "-m", "training", "review", str(tiny_model.folder), "--data",
                          str(tmp_path / "nothing")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no images in" in out.stderr and "Traceback" not in out.stderr
