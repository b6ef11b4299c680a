"""Evaluate a trained learner on its validation split and write MODEL_DIR/report/.

Runs as part of `python -m training train --data data/bears --out models/bears`, after fine-tuning. Writes
metrics.json, confusion_matrix.png, top_losses.png, losses.png and report.md: which classes get confused,
whether training over- or underfitted, and which image files to look at first.
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

log = logging.getLogger(__name__)

TOP_LOSSES = 9  # a 3x3 grid: enough to spot a pattern (mislabelled, off-topic, cropped) at a glance
TREND_EPOCHS = 3  # over- and underfitting are judged on the last few epochs, not on one noisy step


@dataclass
class Evaluation:
    """The validation predictions of a learner and the metrics computed from them."""

    labels: list[str]
    items: list[Path]  # validation image files, in prediction order
    probs: np.ndarray  # [N, C] probabilities
    targets: np.ndarray  # [N] label indices
    losses: np.ndarray  # [N] cross-entropy per image
    metrics: dict

    def examples(self, per_label: int = 2) -> dict[str, list[Path]]:
        """The most confidently correct validation images of each label (fewer if there are none)."""
        preds = self.probs.argmax(axis=1)
        picked = {}
        for c, label in enumerate(self.labels):
            idx = np.flatnonzero((self.targets == c) & (preds == c))
            best = idx[np.argsort(-self.probs[idx, c], kind="stable")][:per_label]
            picked[label] = [self.items[i] for i in best]
        return picked


def evaluate(learn, report_dir: Path) -> Evaluation:
    """Predict the validation split, compute the metrics and write report_dir/ (history.csv is read if there)."""
    probs, targets, losses = learn.get_preds(dl=learn.dls.valid, with_loss=True)
    labels = [str(v) for v in learn.dls.vocab]
    # The validation loader is never shuffled, so row i of the predictions is items[i].
    items = [Path(p) for p in learn.dls.valid.items]
    ev = Evaluation(labels, items, probs.double().numpy(), targets.numpy().astype(int), losses.double().numpy(), {})
    ev.metrics = compute_metrics(ev.probs, ev.targets, labels)
    ev.metrics["valid_loss"] = float(ev.losses.mean()) if len(ev.losses) else None
    ev.metrics["epochs"] = read_history(report_dir / "history.csv")
    ev.metrics["top_losses"] = top_losses(ev, TOP_LOSSES)
    write_report(ev.metrics, report_dir, data_root(items))
    log.info("evaluated %d validation images: error rate %.1f%%; report in %s",
             len(items), 100 * ev.metrics["error_rate"], report_dir)
    return ev


def compute_metrics(probs: np.ndarray, targets: np.ndarray, labels: list[str]) -> dict:
    """Error rate, accuracy, per-class precision/recall/F1/support and the confusion matrix."""
    n, c = len(targets), len(labels)
    preds = np.asarray(probs).argmax(axis=1)
    # Rows are the actual label, columns the predicted one.
    cm = np.bincount(np.asarray(targets) * c + preds, minlength=c * c).reshape(c, c)
    hits = np.diag(cm)
    precision = _ratio(hits, cm.sum(axis=0))
    recall = _ratio(hits, cm.sum(axis=1))
    f1 = _ratio(2 * precision * recall, precision + recall)
    accuracy = float(hits.sum() / n) if n else 0.0
    per_class = {label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                         "support": int(cm[i].sum())} for i, label in enumerate(labels)}
    return {"valid_images": int(n), "error_rate": 1.0 - accuracy, "accuracy": accuracy,
            "macro_f1": float(f1.mean()) if c else 0.0, "per_class": per_class,
            "confusion_matrix": {"labels": list(labels), "rows": "actual", "columns": "predicted",
                                 "matrix": cm.tolist()}}


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, with 0 where den is 0 (a class never predicted has precision 0, as sklearn reports)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def top_losses(ev: Evaluation, k: int) -> list[dict]:
    """The k validation images with the highest loss: the first files a person should look at."""
    order = np.argsort(-ev.losses, kind="stable")[:k]
    rows = []
    for i in order:
        pred = int(ev.probs[i].argmax())
        # Relative to the data folder (images/<label>/<file>): the report is published, and a path like
        # /home/<user>/... would say nothing useful about the model and too much about its maker.
        rows.append({"file": Path(*ev.items[i].parts[-3:]).as_posix(), "actual": ev.labels[ev.targets[i]], "predicted": ev.labels[pred],
                     "probability": float(ev.probs[i, pred]), "loss": float(ev.losses[i])})
    return rows


def read_history(path: Path) -> list[dict]:
    """Per-epoch train and valid loss from the history.csv that training wrote; [] if there is none."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [{"epoch": int(r["epoch"]), "phase": r.get("phase", ""), "train_loss": _number(r["train_loss"]),
             "valid_loss": _number(r["valid_loss"])} for r in rows]


def _number(text: str) -> float | None:
    """A loss from the CSV; fastai writes an empty cell or 'None' when an epoch had no validation."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def confusions(metrics: dict) -> list[tuple[str, str, int]]:
    """(actual, predicted, count) for every off-diagonal cell of the confusion matrix, largest first."""
    cm, labels = metrics["confusion_matrix"]["matrix"], metrics["confusion_matrix"]["labels"]
    cells = [(labels[a], labels[p], n) for a, row in enumerate(cm) for p, n in enumerate(row) if a != p and n]
    return sorted(cells, key=lambda cell: -cell[2])


def diagnose(history: list[dict]) -> str:
    """A plain-words verdict on the loss curves: underfitting, overfitting, or neither."""
    rows = [r for r in history if r["train_loss"] is not None and r["valid_loss"] is not None]
    if len(rows) < 2:
        return "Too few epochs to judge over- or underfitting."
    last = rows[-min(TREND_EPOCHS, len(rows)):]
    first, end = last[0], last[-1]
    if end["train_loss"] > end["valid_loss"]:
        return (f"Underfitting: the train loss ({end['train_loss']:.3f}) is still above the valid loss "
                f"({end['valid_loss']:.3f}). Train for more epochs or with a higher learning rate.")
    if end["valid_loss"] > first["valid_loss"] and end["train_loss"] < first["train_loss"]:
        return (f"Overfitting: over the last {len(last)} epochs the valid loss rose from {first['valid_loss']:.3f} "
                f"to {end['valid_loss']:.3f} while the train loss fell from {first['train_loss']:.3f} to "
                f"{end['train_loss']:.3f}. Train for fewer epochs or collect more images.")
    return "No sign of over- or underfitting: the valid loss is not rising and the train loss is below it."


def data_root(items: list[Path]) -> Path:
    """The data folder the validation images come from (DATA in DATA/images/<label>/<file>)."""
    return items[0].parents[2] if items else Path(".")


def write_report(metrics: dict, report_dir: Path, root: Path) -> None:
    """Write metrics.json, the three plots and report.md; top-loss files are relative to `root`."""
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _plot_confusion(metrics["confusion_matrix"], report_dir / "confusion_matrix.png")
    _plot_losses(metrics["epochs"], report_dir / "losses.png")
    _plot_top_losses(metrics["top_losses"], root, report_dir / "top_losses.png")
    (report_dir / "report.md").write_text(report_markdown(metrics))


def report_markdown(metrics: dict) -> str:
    """The short human-readable report."""
    lines = ["# Evaluation report", "",
             f"Validation set: {metrics['valid_images']} images. Accuracy {100 * metrics['accuracy']:.1f}% "
             f"(error rate {100 * metrics['error_rate']:.1f}%).", "",
             "| label | precision | recall | F1 | images |", "|---|---|---|---|---|"]
    lines += [f"| {label} | {m['precision']:.2f} | {m['recall']:.2f} | {m['f1']:.2f} | {m['support']} |"
              for label, m in metrics["per_class"].items()]
    lines += ["", "## Which classes get confused", ""]
    mixed = confusions(metrics)
    lines += [f"- {n} '{actual}' image{'s' if n > 1 else ''} predicted as '{pred}'." for actual, pred, n in mixed[:5]]
    lines += [] if mixed else ["None: every validation image was classified correctly."]
    lines += ["", "## Training curve", "", diagnose(metrics["epochs"])]
    lines += ["", "## Look at these images first", "",
              "The validation images the model was most wrong or least sure about (highest loss), relative to the "
              "data folder. A wrong or "
              "off-topic image here is a data problem: fix or delete it and train again.", "",
              "| file | actual | predicted | probability | loss |", "|---|---|---|---|---|"]
    lines += [f"| {r['file']} | {r['actual']} | {r['predicted']} | {r['probability']:.2f} | {r['loss']:.2f} |"
              for r in metrics["top_losses"]]
    return "\n".join(lines) + "\n"


def _save(fig: Figure, path: Path) -> None:
    # The object API with an Agg canvas: no pyplot global state, no display needed.
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def _plot_confusion(cm: dict, path: Path) -> None:
    labels, matrix = cm["labels"], np.asarray(cm["matrix"])
    side = 2 + 0.6 * len(labels)
    fig = Figure(figsize=(side, side))
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xlabel="predicted", ylabel="actual",
           title="Confusion matrix (validation)")
    ax.set_xticklabels(labels, rotation=45, ha="right")
    ax.set_yticklabels(labels)
    top = matrix.max() if matrix.size else 0
    for (a, p), n in np.ndenumerate(matrix):
        ax.text(p, a, str(n), ha="center", va="center", color="white" if n > top / 2 else "black")
    _save(fig, path)


def _plot_losses(history: list[dict], path: Path) -> None:
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    epochs = [r["epoch"] for r in history]
    for key in ("train_loss", "valid_loss"):
        ax.plot(epochs, [np.nan if r[key] is None else r[key] for r in history], marker="o", label=key)
    frozen = [r["epoch"] for r in history if r["phase"] == "frozen"]
    if frozen:
        ax.axvspan(min(frozen) - 0.5, max(frozen) + 0.5, color="grey", alpha=0.15, label="head only (frozen body)")
    ax.set(xlabel="epoch", ylabel="loss", title="Loss per epoch")
    ax.legend()
    _save(fig, path)


def _plot_top_losses(rows: list[dict], root: Path, path: Path) -> None:
    cols = 3
    nrows = max(1, -(-len(rows) // cols))
    fig = Figure(figsize=(3.2 * cols, 3.4 * nrows))
    for i, r in enumerate(rows):
        ax = fig.add_subplot(nrows, cols, i + 1)
        with Image.open(root / r["file"]) as img:
            img.thumbnail((256, 256))
            ax.imshow(np.asarray(img.convert("RGB")))
        ax.set_title(f"{r['predicted']}/{r['actual']}\nloss {r['loss']:.2f} p {r['probability']:.2f}", fontsize=9)
        ax.axis("off")
    fig.suptitle("Top losses: predicted/actual, loss, probability of the prediction")
    _save(fig, path)
