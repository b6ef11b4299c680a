"""Tests for training/evaluate.py: metrics.json, the plots and report.md under MODEL_DIR/report/."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastai.learner import load_learner
from PIL import Image

from training.evaluate import compute_metrics, confusions, diagnose, read_history
from training.train import build_dataloaders


@pytest.fixture(scope="module")
def predictions(tiny_model):
    """The exported learner's validation predictions, recomputed on the same seeded split."""
    learn = load_learner(tiny_model.folder / "export.pkl")
    learn.dls = build_dataloaders(tiny_model.cfg, tiny_model.data / "images")
    probs, targets, losses = learn.get_preds(dl=learn.dls.valid, with_loss=True)
    metrics = json.loads((tiny_model.folder / "report" / "metrics.json").read_text())
    return learn, probs.numpy(), targets.numpy(), losses.numpy(), metrics


def test_confusion_matrix_and_rates_match_a_recount(predictions):
    learn, probs, targets, _, metrics = predictions
    labels = list(learn.dls.vocab)
    cm = [[0] * len(labels) for _ in labels]
    for p, t in zip(probs.argmax(1), targets):
        cm[t][p] += 1
    assert metrics["confusion_matrix"]["labels"] == labels
    assert metrics["confusion_matrix"]["matrix"] == cm
    right = sum(cm[i][i] for i in range(len(labels)))
    assert metrics["accuracy"] == pytest.approx(right / len(targets))
    assert metrics["error_rate"] == pytest.approx(1 - right / len(targets))
    for i, label in enumerate(labels):
        row, col = sum(cm[i]), sum(r[i] for r in cm)
        assert metrics["per_class"][label]["support"] == row
        assert metrics["per_class"][label]["recall"] == pytest.approx(cm[i][i] / row if row else 0)
        assert metrics["per_class"][label]["precision"] == pytest.approx(cm[i][i] / col if col else 0)


def test_error_rate_and_loss_match_fastai_validate(predictions):
    learn, _, _, losses, metrics = predictions
    valid_loss, error_rate = learn.validate()
    assert metrics["error_rate"] == pytest.approx(error_rate, abs=1e-6)
    assert metrics["valid_loss"] == pytest.approx(valid_loss, rel=1e-5)
    assert metrics["valid_loss"] == pytest.approx(float(losses.mean()), rel=1e-5)


def test_top_losses_are_the_highest_losses_with_file_names(predictions):
    learn, probs, targets, losses, metrics = predictions
    order = np.argsort(-losses, kind="stable")[:9]
    files = ["/".join(Path(learn.dls.valid.items[i]).parts[-3:]) for i in order]  # relative to the data folder
    assert [r["file"] for r in metrics["top_losses"]] == files
    for r, i in zip(metrics["top_losses"], order):
        assert r["loss"] == pytest.approx(float(losses[i]), rel=1e-5)
        assert r["actual"] == learn.dls.vocab[targets[i]] == Path(r["file"]).parent.name
        assert r["predicted"] == learn.dls.vocab[probs[i].argmax()]
        assert r["probability"] == pytest.approx(float(probs[i].max()), rel=1e-5)


def test_epochs_in_metrics_are_the_history(tiny_model):
    metrics = json.loads((tiny_model.folder / "report" / "metrics.json").read_text())
    history = read_history(tiny_model.folder / "report" / "history.csv")
    assert metrics["epochs"] == history and len(history) == tiny_model.cfg.epochs + 1


def test_report_names_confusions_verdict_and_files(tiny_model):
    report = (tiny_model.folder / "report" / "report.md").read_text()
    metrics = json.loads((tiny_model.folder / "report" / "metrics.json").read_text())
    assert f"Accuracy {100 * metrics['accuracy']:.1f}%" in report
    for actual, predicted, n in confusions(metrics)[:5]:
        assert f"{n} '{actual}' image" in report and f"predicted as '{predicted}'" in report
    assert diagnose(metrics["epochs"]) in report
    assert all(r["file"] in report for r in metrics["top_losses"])


@pytest.mark.parametrize("name", ["confusion_matrix.png", "top_losses.png", "losses.png"])
def test_plots_are_pngs(tiny_model, name):
    with Image.open(tiny_model.folder / "report" / name) as img:
        assert img.format == "PNG" and min(img.size) > 100


@pytest.mark.parametrize("probs, targets, accuracy, precision, recall", [
    ([[.9, .1], [.8, .2], [.3, .7], [.4, .6]], [0, 0, 1, 1], 1.0, [1, 1], [1, 1]),
    ([[.9, .1], [.8, .2], [.6, .4], [.4, .6]], [0, 0, 1, 1], 0.75, [2 / 3, 1], [1, .5]),
    ([[.9, .1], [.8, .2]], [0, 1], 0.5, [.5, 0], [1, 0]),  # label 1 never predicted: precision 0, not NaN
])
def test_compute_metrics_table(probs, targets, accuracy, precision, recall):
    m = compute_metrics(np.array(probs), np.array(targets), ["a", "b"])
    assert m["accuracy"] == pytest.approx(accuracy) and m["error_rate"] == pytest.approx(1 - accuracy)
    assert [m["per_class"][k]["precision"] for k in "ab"] == pytest.approx(precision)
    assert [m["per_class"][k]["recall"] for k in "ab"] == pytest.approx(recall)
    assert np.array(m["confusion_matrix"]["matrix"]).sum() == len(targets)


def _history(*pairs):
    return [{"epoch": i, "phase": "", "train_loss": t, "valid_loss": v} for i, (t, v) in enumerate(pairs)]


@pytest.mark.parametrize("history, verdict", [
    (_history((1.0, 0.8), (0.6, 0.5), (0.3, 0.6), (0.1, 0.9)), "Overfitting"),
    (_history((2.0, 1.0), (1.8, 0.9), (1.5, 0.8)), "Underfitting"),
    (_history((1.0, 1.2), (0.7, 0.9), (0.5, 0.6)), "No sign"),
    (_history((1.0, 0.8)), "Too few epochs"),
    ([], "Too few epochs"),
])
def test_diagnose_table(history, verdict):
    assert diagnose(history).startswith(verdict)


def test_confusions_are_largest_first():
    metrics = {"confusion_matrix": {"labels": ["a", "b", "c"], "matrix": [[5, 1, 0], [3, 4, 2], [0, 0, 6]]}}
    assert confusions(metrics) == [("b", "a", 3), ("b", "c", 2), ("a", "b", 1)]
