"""Tests for training/train/stage.py: the `python -m training train` stage."""
from __future__ import annotations

import csv
import json
import os
import pickletools
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.tiny_model import PER_LABEL, SHAPES, make_images, tiny_config
from training.errors import StageError
from training.train.stage import build_dataloaders, count_images, train

REPO = Path(__file__).resolve().parents[2]


def test_writes_the_whole_model_folder(tiny_model):
    folder = tiny_model.folder
    for name in ("export.pkl", "model.onnx", "config.json", "settings.json", "examples"):
        assert (folder / name).exists(), name
    for name in ("metrics.json", "confusion_matrix.png", "top_losses.png", "losses.png", "report.md", "history.csv"):
        assert (folder / "report" / name).stat().st_size > 0, name
    assert not (folder / "report" / "lr_find.png").exists()  # the learning rate was given
    assert not (folder / "models").exists()  # nothing of fastai's scratch files left behind


def test_settings_are_the_resolved_ones(tiny_model):
    settings = json.loads((tiny_model.folder / "settings.json").read_text())
    assert settings["lr"] == tiny_model.cfg.lr
    assert settings["data"] == str(tiny_model.data) and settings["out"] == str(tiny_model.folder)
    assert settings["arch"] == "resnet18" and settings["pretrained"] is False and settings["seed"] == 0


def test_history_has_the_frozen_epoch_and_every_fine_tuning_epoch(tiny_model):
    with (tiny_model.folder / "report" / "history.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["phase"] for r in rows] == ["frozen"] + ["unfrozen"] * tiny_model.cfg.epochs
    assert [int(r["epoch"]) for r in rows] == list(range(tiny_model.cfg.epochs + 1))
    assert all(float(r["train_loss"]) > 0 and float(r["valid_loss"]) > 0 for r in rows)


def test_history_has_each_epochs_mean_train_loss(tiny_model):
    with (tiny_model.folder / "report" / "history.csv").open(newline="") as f:
        header, *rows = list(csv.reader(f))
    assert header[:5] == ["epoch", "phase", "train_loss", "train_loss_mean", "valid_loss"]
    assert all(float(r[3]) > 0 for r in rows)


def test_epoch_mean_loss_is_the_plain_mean_of_the_training_batches():
    from fastai.callback.core import Callback
    from fastai.test_utils import synth_learner

    from training.train.stage import EpochMeanLoss

    class Batches(Callback):  # each training batch's mean loss and size, epoch by epoch
        def before_fit(self):
            self.epochs = []

        def before_epoch(self):
            self.epochs.append([])

        def after_batch(self):
            if self.training:
                self.epochs[-1].append((float(self.learn.loss), len(self.learn.yb[0])))

    learn = synth_learner(n_trn=5, lr=0.1)  # 5 batches of 16 a epoch, a loss that falls fast
    mean, batches = EpochMeanLoss(), Batches()
    learn.fit(3, cbs=[mean, batches])
    want = [sum(loss * n for loss, n in e) / sum(n for _, n in e) for e in batches.epochs]
    assert mean.means == pytest.approx(want, rel=1e-6)
    running = [row[0] for row in learn.recorder.values]  # fastai's train_loss column
    assert running[-1] > mean.means[-1]  # the running average still carries the first epoch's losses


def test_export_pkl_references_no_notebook_or_project_code(tiny_model):
    """Loading export.pkl must need only fastai/torch: no lambda, nothing from __main__ or our own modules."""
    with zipfile.ZipFile(tiny_model.folder / "export.pkl") as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    strings = {arg for op, arg, _ in pickletools.genops(data) if isinstance(arg, str)}
    # fastai's export uses cloudpickle, which would store such functions by value, naming their module.
    assert "__main__" not in strings and "<lambda>" not in strings
    assert not [s for s in strings if s.startswith(("training.", "tests.", "serving."))]


@pytest.mark.parametrize("seed_b, same", [(0, True), (1, False)])
def test_the_seed_fixes_the_validation_split(tiny_model, seed_b, same):
    images = tiny_model.data / "images"
    a = build_dataloaders(tiny_config(tiny_model.data, Path("unused"), seed=0), images)
    b = build_dataloaders(tiny_config(tiny_model.data, Path("unused"), seed=seed_b), images)
    assert (list(a.valid_ds.items) == list(b.valid_ds.items)) is same
    assert len(a.valid_ds) == len(b.valid_ds) == round(0.2 * PER_LABEL * len(SHAPES))


def test_counts_images_per_label(tiny_model):
    assert count_images(tiny_model.data / "images") == {label: PER_LABEL for label in sorted(SHAPES)}


def _one_label(root: Path) -> Path:
    return make_images(root, per_label=4, labels=("circle",))


def _one_image_label(root: Path) -> Path:
    make_images(root, per_label=4, labels=("circle", "square"))
    make_images(root / "more", per_label=1, labels=("triangle",))
    (root / "more" / "images" / "triangle").rename(root / "images" / "triangle")
    return root


def test_an_out_that_is_a_file_is_refused_before_training(tiny_model, tmp_path):
    (tmp_path / "model").write_text("not a folder")
    with pytest.raises(StageError, match="is a file; give a folder"):
        train(tiny_config(tiny_model.data, tmp_path / "model"))


@pytest.mark.parametrize("make, changes, words", [
    (lambda root: root, {}, ["no images folder", "python -m training data"]),
    (lambda root: (root / "images").mkdir(parents=True) or root, {}, ["no images in", "python -m training data"]),
    (_one_label, {}, ["only one label", "circle", "at least two"]),
    (_one_image_label, {}, ["too few images", "'triangle' has 1", "at least 2"]),
    (lambda root: make_images(root, per_label=2, labels=("circle", "square")), {"valid_pct": 0.01},
     ["no validation image", "--valid-pct"]),
    (lambda root: make_images(root, per_label=3, labels=("circle", "square")), {"arch": "resnet_nope"},
     ["unknown arch 'resnet_nope'", "resnet18"]),
])
def test_clear_errors(tmp_path, make, changes, words):
    data = make(tmp_path / "data")
    with pytest.raises(StageError) as err:
        train(tiny_config(data, tmp_path / "model", **changes))
    for word in words:
        assert word in str(err.value)
    assert not (tmp_path / "model").exists()  # nothing half-made


def test_cli_finds_the_learning_rate_when_none_is_given(tiny_model, tmp_path):
    out = tmp_path / "model"
    cmd = [sys.executable, "-m", "training", "train", "--data", str(tiny_model.data), "--out", str(out),
           "--no-pretrained", "--epochs", "1", "--size", "64", "--batch-size", "8"]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=_env())
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "report" / "lr_find.png").stat().st_size > 0
    lr = json.loads((out / "settings.json").read_text())["lr"]
    assert isinstance(lr, float) and 1e-7 < lr < 10  # the finder's range
    assert json.loads((out / "config.json").read_text())["training"]["lr"] == lr
    assert lr == float(f"{lr:.3g}")  # not the finder's float32 noise, 0.0010000000474974513
    assert "trained resnet18 for 1 head-only epoch and 1 more" in run.stderr
    # Into a file (not a terminal), fastai's per-epoch table is kept and its progress bars are not drawn.
    assert "epoch     train_loss  valid_loss  error_rate" in run.stdout
    assert "Epoch 1/" not in run.stdout and "█" not in run.stdout and "|--" not in run.stdout


def test_an_interrupted_run_leaves_the_previous_model_as_it_was(tiny_model, tmp_path):
    """Ctrl-C in the middle of training: the model folder (and its report) stay the last complete run's."""
    out = tmp_path / "model"
    shutil.copytree(tiny_model.folder, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    cmd = [sys.executable, "-m", "training", "train", "--data", str(tiny_model.data), "--out", str(out),
           "--no-pretrained", "--epochs", "50", "--size", "64", "--batch-size", "8", "--lr", "1e-3"]
    run = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    history = out / ".partial" / "report" / "history.csv"  # where train writes until it is done
    deadline = time.monotonic() + 240
    while not history.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert history.exists(), "training never started"
    time.sleep(1)  # into the first epoch
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr[-3000:]
    assert "the model folder is as it was before this run" in stderr and "Traceback" not in stderr
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not history.parent.parent.exists()  # the unfinished run's files are gone


def test_cli_reports_a_missing_dataset_and_exits_2(tmp_path):
    cmd = [sys.executable, "-m", "training", "train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "m")]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=_env())
    assert run.returncode == 2
    assert f"`python -m training data --data {tmp_path / 'nothing'}`" in run.stderr
    assert "check --name or --data" in run.stderr and "Traceback" not in run.stderr


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}
