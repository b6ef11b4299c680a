"""Tests for training/train/distributed.py: `accelerate launch -m training train` on 2 CPU processes (gloo).

The run is the README's multi-GPU command with the GPUs hidden, so the two processes meet over gloo; it
leaves out --lr, so the main process runs the learning-rate finder alone and shares its suggestion. About
45 s on 2 cores.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.model import Classifier
from tests.live_app import free_port
from tests.tiny_model import PER_LABEL, SHAPES, make_images
from training.train import distributed

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 2
MODEL_FILES = {"config.json", "export.pkl", "model.onnx", "model.int8.onnx", "novelty_features.npy", "settings.json",
               "examples", "report"}
REPORT_FILES = {"confusion_matrix.png", "history.csv", "losses.png", "lr_find.png", "metrics.json", "report.md",
                "top_losses.png"}


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One 2-process run; its working folder is a fresh one, so anything written by mistake shows up there.

    Run once: an abort of either process fails the tests (a process that exited while gloo's worker threads
    still held tensors used to abort now and then: see distributed.exit_process).
    """
    root = tmp_path_factory.mktemp("distributed")
    make_images(root / "data")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "training", "train", "--data", "data", "--out", "model", "--no-pretrained",
           "--epochs", str(EPOCHS), "--size", "64", "--batch-size", "8", "--seed", "0"]
    # No GPU even where there is one: two processes cannot share one GPU under NCCL, and CI must match this.
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-4000:]
    return root, run


def test_two_processes_train_together_and_only_the_main_one_reports(launched):
    root, run = launched
    assert "data-parallel training: 2 processes over gloo" in run.stderr
    assert run.stderr.count("INFO training.train.stage: trained resnet18") == 1
    assert f"trained resnet18 for 1 head-only epoch and {EPOCHS} more" in run.stderr and "on 2 processes" in run.stderr
    config = json.loads((root / "model" / "config.json").read_text())
    assert config["training"]["processes"] == 2 and config["training"]["device"] == "cpu"


def test_exactly_one_model_folder_is_written(launched):
    root, _ = launched
    assert {p.name for p in root.iterdir()} == {"data", "model"}  # no models/<name>, no fastai scratch folder
    folder = root / "model"
    assert {p.name for p in folder.iterdir()} == MODEL_FILES
    assert {p.name for p in (folder / "report").iterdir()} == REPORT_FILES


def test_history_is_written_once(launched):
    """Had the second process logged too, its rows would be appended to the main one's."""
    with (launched[0] / "model" / "report" / "history.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["phase"] for r in rows] == ["frozen"] + ["unfrozen"] * EPOCHS
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS + 1))


def test_the_found_learning_rate_is_the_one_trained_with(launched):
    folder = launched[0] / "model"
    lr = json.loads((folder / "settings.json").read_text())["lr"]
    assert isinstance(lr, float) and 1e-7 < lr < 10
    assert json.loads((folder / "config.json").read_text())["training"]["lr"] == lr
    assert (folder / "report" / "lr_find.png").stat().st_size > 0


def test_evaluation_covers_the_whole_validation_split(launched):
    metrics = json.loads((launched[0] / "model" / "report" / "metrics.json").read_text())
    valid = round(0.2 * PER_LABEL * len(SHAPES))
    assert metrics["valid_images"] == valid  # not one process's share of it
    assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) == valid


def test_the_serving_module_predicts_what_the_trained_model_predicted(launched):
    folder = launched[0] / "model"
    clf = Classifier.from_folder(folder)
    assert clf.labels == sorted(SHAPES)
    top = json.loads((folder / "report" / "metrics.json").read_text())["top_losses"]
    for row in top:  # the torch model's own predictions on validation images, from evaluation
        probs = clf.classify(launched[0] / "data" / row["file"])  # the report names files inside the data folder
        assert max(probs, key=probs.get) == row["predicted"]
        assert probs[row["predicted"]] == pytest.approx(row["probability"], abs=1e-4)
    examples = sorted((folder / "examples").iterdir())
    assert examples  # correctly classified validation images of at least one label
    for path in examples:
        probs = clf.classify(path)
        assert max(probs, key=probs.get) == path.stem.rsplit("_", 1)[0]


@pytest.mark.parametrize("env, size, main", [
    ({}, 1, True),
    ({"WORLD_SIZE": "1", "RANK": "0"}, 1, True),
    ({"WORLD_SIZE": "4", "RANK": "0"}, 4, True),
    ({"WORLD_SIZE": "4", "RANK": "3"}, 4, False),
    ({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"}, 2, False),  # mpirun, before joining
    ({"PMI_SIZE": "3", "PMI_RANK": "0"}, 3, True),
])
def test_who_is_who(monkeypatch, env, size, main):
    for name in distributed.SIZE_VARS + distributed.RANK_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert (distributed.world_size(), distributed.is_main()) == (size, main)


def test_a_single_process_started_by_accelerate_cpu_is_pointed_out(monkeypatch, caplog):
    """`accelerate launch --cpu --num_processes 2` without an MPI host file starts one process, silently."""
    for name in distributed.SIZE_VARS + distributed.RANK_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # what accelerate's simple launcher sets for 2 processes
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    assert distributed.join() is None
    assert "accelerate started a single process" in caplog.text and "--multi_gpu" in caplog.text


@pytest.mark.parametrize("before", [None, "2"])
def test_alone_hides_the_other_processes_from_fastai_and_restores_them(monkeypatch, before):
    from fastai.torch_core import num_distrib

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    if before is not None:
        monkeypatch.setenv("WORLD_SIZE", before)
    with distributed.alone():
        assert num_distrib() == 1
    assert os.environ.get("WORLD_SIZE") == before


def test_exit_process_returns_when_no_group_was_joined():
    distributed.exit_process(3)  # still here: a single process ends the usual way


def test_exit_process_ends_a_process_in_a_group_with_its_code_and_output_flushed(tmp_path):
    """After training together, a process ends without Python's shutdown (where gloo's threads abort it)."""
    script = ("import logging, os, sys, torch.distributed as dist\n"
              "from training.train import distributed\n"
              "os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=sys.argv[1], RANK='0', WORLD_SIZE='1')\n"
              "dist.init_process_group('gloo')\n"
              "logging.basicConfig(level=logging.INFO)\n"
              "print('printed', end='')\n"
              "logging.getLogger('t').info('logged')\n"
              "distributed.exit_process(7)\n"
              "print('not reached')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, "-c", script, str(free_port())], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 7, run.stderr[-2000:]
    assert run.stdout == "printed" and "INFO:t:logged" in run.stderr
