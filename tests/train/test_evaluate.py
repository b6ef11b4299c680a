"""Tests for training/train/evaluate.py: metrics.json, the plots and report.md under MODEL_DIR/report/."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from fastai.learner import load_learner
from PIL import Image

from training.train.evaluate import (Evaluation, compute_metrics, confusions, diagnose, read_history, report_markdown,
                                      top_losses, write_report)
from training.train.stage import build_dataloaders


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
        assert metrics["per_class"][label]["recall"] == (pytest.approx(cm[i][i] / row) if row else None)
        assert metrics["per_class"][label]["precision"] == (pytest.approx(cm[i][i] / col) if col else None)


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
    assert [r["phase"] for r in history] == ["frozen"] + ["unfrozen"] * tiny_model.cfg.epochs
    assert all(r["train_loss_mean"] > 0 and r["train_loss"] > 0 for r in history)


def test_report_names_confusions_verdict_and_files(tiny_model):
    report = (tiny_model.folder / "report" / "report.md").read_text()
    metrics = json.loads((tiny_model.folder / "report" / "metrics.json").read_text())
    assert f"Accuracy {100 * metrics['accuracy']:.1f}%" in report
    for actual, predicted, n in confusions(metrics)[:5]:
        assert f"{n} '{actual}' image" in report and f"predicted as '{predicted}'" in report
    verdict = report.split("## Training curve\n\n", 1)[1].split("\n", 1)[0]
    assert verdict.startswith(("Overfitting", "Underfitting", "No sign", "Too few epochs", "Unsteady training",
                               "Training diverged")), verdict
    assert all(r["file"] in report for r in metrics["top_losses"])


def test_the_report_gives_the_verdict_of_its_own_history(tiny_model):
    """A known history, put into the tiny model's metrics: the report must say overfitting, with its numbers."""
    metrics = json.loads((tiny_model.folder / "report" / "metrics.json").read_text())
    metrics["epochs"] = _history((1.0, 0.8), (0.6, 0.5), (0.3, 0.6), (0.1, 0.9))
    curve = report_markdown(metrics).split("## Training curve\n\n", 1)[1]
    assert curve.startswith("Overfitting") and "0.500 to 0.900" in curve and "0.600 to 0.100" in curve


@pytest.mark.parametrize("name", ["confusion_matrix.png", "top_losses.png", "losses.png"])
def test_plots_are_pngs(tiny_model, name):
    with Image.open(tiny_model.folder / "report" / name) as img:
        assert img.format == "PNG" and min(img.size) > 100


@pytest.mark.parametrize("probs, targets, accuracy, precision, recall, f1, macro_f1", [
    ([[.9, .1], [.8, .2], [.3, .7], [.4, .6]], [0, 0, 1, 1], 1.0, [1, 1], [1, 1], [1, 1], 1),
    ([[.9, .1], [.8, .2], [.6, .4], [.4, .6]], [0, 0, 1, 1], 0.75, [2 / 3, 1], [1, .5], [.8, 2 / 3], 11 / 15),
    # b never predicted: its precision is undefined, and its recall 0 makes its F1 0
    ([[.9, .1], [.8, .2]], [0, 1], 0.5, [.5, None], [1, 0], [2 / 3, 0], 1 / 3),
    # b has no validation images: recall and F1 undefined, left out of macro F1; a predicted as b: precision 0
    ([[.9, .1], [.2, .8]], [0, 0], 0.5, [1, 0], [.5, None], [2 / 3, None], 2 / 3),
])
def test_compute_metrics_table(probs, targets, accuracy, precision, recall, f1, macro_f1):
    m = compute_metrics(np.array(probs), np.array(targets), ["a", "b"])
    assert m["accuracy"] == pytest.approx(accuracy) and m["error_rate"] == pytest.approx(1 - accuracy)
    for key, want in (("precision", precision), ("recall", recall), ("f1", f1)):
        got = [m["per_class"][k][key] for k in "ab"]
        assert [g is None for g in got] == [w is None for w in want], key
        assert [g for g in got if g is not None] == pytest.approx([w for w in want if w is not None]), key
    assert m["macro_f1"] == pytest.approx(macro_f1)
    assert np.array(m["confusion_matrix"]["matrix"]).sum() == len(targets)


def _history(*pairs, frozen=0):
    """History rows from (train, valid) pairs; a third number is the epoch's mean train loss."""
    return [{"epoch": i, "phase": "frozen" if i < frozen else "unfrozen", "train_loss": p[0], "valid_loss": p[1],
             "train_loss_mean": p[2] if len(p) > 2 else None} for i, p in enumerate(pairs)]


@pytest.mark.parametrize("history, verdict, words", [
    (_history((1.0, 0.8), (0.6, 0.5), (0.3, 0.6), (0.1, 0.9)), "Overfitting", ["0.500 to 0.900", "0.600 to 0.100"]),
    (_history((2.0, 1.0), (1.8, 0.9), (1.5, 0.8)), "Underfitting", ["(1.50)", "(0.800)"]),
    (_history((1.0, 1.2), (0.7, 0.9), (0.5, 0.6)), "No sign", ["1.20 to 0.600", "below the valid loss"]),
    (_history((1.0, 0.8)), "Too few epochs", []),
    ([], "Too few epochs", []),
    # the frozen (head-only) epoch is not judged: one epoch after it is too few, whatever the numbers
    (_history((1.2, 0.9), (0.8, 0.95), frozen=1), "Too few epochs", ["--epochs 2"]),
    (_history((3.0, 0.1), (0.8, 0.7), (0.6, 0.65), frozen=1), "No sign", ["epochs 1–2"]),
    # a rise within 2% is noise, not overfitting
    (_history((.5, .60), (.4, .59), (.3, .6001)), "No sign", []),
    # valid loss rising while the train loss does not fall is said as such, not hidden behind "no sign"
    (_history((.5, .6), (.55, .7), (.6, .8)), "Unsteady training", ["0.600 to 0.800", "lower learning rate"]),
    # ...and rather than "underfitting" too: one verdict, one piece of advice
    (_history((1.0, 0.5), (1.1, 0.6), (1.2, 0.7)), "Unsteady training", []),
    # overfitting and the train loss still above the valid loss: the rising valid loss is what to act on
    (_history((1.0, 0.5), (0.9, 0.6), (0.8, 0.7)), "Overfitting", ["over epochs 0–2"]),
    (_history((.5, .5), (.4, .4)), "No sign", ["equal to the valid loss"]),
    # the epoch's mean train loss is judged, not fastai's lagging running average
    (_history((2.0, 0.9, 1.0), (1.5, 0.8, 0.6), (1.2, 0.7, 0.4)), "No sign", ["1.00 to 0.400"]),
    (_history((1.0, 0.8), (float("nan"), float("nan"))), "Training diverged", ["epoch 1", "--lr"]),
    # a loss that blew up and is coming down is not "no sign": far above guessing's ln(3) = 1.10
    (_history((9e9, 7.25e9), (2e9, 1.21e7), frozen=0), "Training diverged", ["1.21e+07", "1.10", "3 labels"]),
])
def test_diagnose_table(history, verdict, words):
    said = diagnose(history, n_labels=3)
    assert said.startswith(verdict), said
    assert all(w in said for w in words), said


def _evaluation(labels, losses, correct):
    n, c = len(losses), len(labels)
    targets = np.arange(n) % c
    preds = np.where(correct, targets, (targets + 1) % c)
    probs = np.full((n, c), 0.1 / max(c - 1, 1))
    probs[np.arange(n), preds] = 0.9
    items = [Path("/home/someone/data/pets/images") / labels[t] / f"{i}.jpg" for i, t in enumerate(targets)]
    ev = Evaluation(labels, items, probs, targets, np.array(losses, dtype=float), {})
    ev.metrics = compute_metrics(probs, targets, labels)
    return ev


def test_a_nan_loss_is_the_first_image_to_look_at():
    ev = _evaluation(["a", "b"], [0.5, float("nan"), 2.0, 0.1], [True, False, False, True])
    assert [r["file"] for r in top_losses(ev, 3)] == ["images/b/1.jpg", "images/a/2.jpg", "images/a/0.jpg"]
    assert [r["correct"] for r in top_losses(ev, 3)] == [False, False, True]


def test_labels_with_markdown_characters_keep_the_report_tables_whole():
    labels = ["black|grizzly", "*teddy*", "brown_bear"]
    ev = _evaluation(labels, [2.0, 1.5, 1.0, 0.5, 0.2, 0.1], [False, False, True, True, True, True])
    ev.metrics.update(epochs=[], top_losses=top_losses(ev, 6))
    report = report_markdown(ev.metrics)
    rows = [line for line in report.splitlines() if line.startswith("|")]
    assert rows and all(len(re.split(r"(?<!\\)\|", row)) == len(re.split(r"(?<!\\)\|", rows[0])) for row in rows[:5])
    assert "| black\\|grizzly |" in report and "\\*teddy\\*" in report and "brown\\_bear" in report
    assert "`images/black\\|grizzly/0.jpg`" in report and "`images/*teddy*/1.jpg`" in report


def test_a_diverged_run_writes_valid_json_and_says_so(tmp_path):
    ev = _evaluation(["a", "b"], [float("nan")] * 4, [True, False, True, False])
    ev.metrics.update(valid_loss=None, top_losses=top_losses(ev, 4),
                      epochs=_history((1.0, 0.9, 1.0), (float("nan"), float("nan"), float("nan")), (2, 3, 4)))
    for r in ev.metrics["top_losses"]:
        Image.new("RGB", (8, 8)).save(tmp_path / "x.jpg")
        r["file"] = "x.jpg"
    write_report(ev.metrics, tmp_path / "report", tmp_path)
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())  # strict JSON: no NaN
    assert saved["epochs"][1]["valid_loss"] is None and saved["top_losses"][0]["loss"] is None
    assert "Training diverged" in (tmp_path / "report" / "report.md").read_text()


def test_report_names_the_data_folder_only_when_relative(tmp_path):
    ev = _evaluation(["a", "b"], [1.0, 0.5], [False, True])
    ev.metrics.update(epochs=[], top_losses=[])
    assert "under the data folder `data/pets`" in report_markdown(ev.metrics, "the data folder `data/pets`")
    assert "under the data folder." in report_markdown(ev.metrics)


def test_a_model_no_better_than_guessing_is_flagged():
    ev = _evaluation(["a", "b", "c"], [1.0] * 6, [True, False, False, False, False, True])  # 2 of 6 right
    ev.metrics.update(epochs=[], top_losses=[])
    assert "does no better than guessing** (33% with 3 labels)" in report_markdown(ev.metrics)
    ev = _evaluation(["a", "b", "c"], [1.0] * 6, [True, False, True, False, False, True])  # 3 of 6
    ev.metrics.update(epochs=[], top_losses=[])
    assert "guessing" not in report_markdown(ev.metrics)


def test_more_than_five_confused_pairs_are_counted():
    labels = list("abcdefg")
    ev = _evaluation(labels, [1.0] * 7, [False] * 7)  # each label predicted as the next: 7 pairs
    ev.metrics.update(epochs=[], top_losses=[])
    assert "and 2 more pairs" in report_markdown(ev.metrics)


def test_confusions_are_largest_first():
    metrics = {"confusion_matrix": {"labels": ["a", "b", "c"], "matrix": [[5, 1, 0], [3, 4, 2], [0, 0, 6]]}}
    assert confusions(metrics) == [("b", "a", 3), ("b", "c", 2), ("a", "b", 1)]
