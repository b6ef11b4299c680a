"""Evaluate a trained learner on its validation split and write MODEL_DIR/report/.

Runs as part of `python -m training train --data data/bears --out models/bears`, after fine-tuning. Writes
metrics.json, confusion_matrix.png, top_losses.png, losses.png and report.md: which classes get confused,
whether training over- or underfitted, and which image files to look at first.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

log = logging.getLogger(__name__)

TOP_LOSSES = 9  # a 3x3 grid: enough to spot a pattern (mislabelled, off-topic, cropped) at a glance
TREND_EPOCHS = 3  # over- and underfitting are judged on the last few epochs, not on one noisy step
RISE = 0.02  # a loss counts as rising or falling when it moves by more than 2%: less is epoch-to-epoch noise
CONFUSIONS = 5  # confused pairs named in report.md; the confusion matrix has them all
# A valid loss this many times ln(labels), what guessing at random scores, is a run that blew up. An overconfident
# but useful model stays well under it: even 10% of images wrong at probability 1e-6 average 1.4.
DIVERGED = 10


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
    ev.metrics["valid_loss"] = finite(float(ev.losses.mean())) if len(ev.losses) else None
    ev.metrics["epochs"] = read_history(report_dir / "history.csv")
    ev.metrics["top_losses"] = top_losses(ev, TOP_LOSSES)
    write_report(ev.metrics, report_dir, data_root(items))
    log.info("evaluated %d validation images: error rate %.1f%%", len(items), 100 * ev.metrics["error_rate"])
    return ev


def compute_metrics(probs: np.ndarray, targets: np.ndarray, labels: list[str]) -> dict:
    """Error rate, accuracy, per-class precision/recall/F1/support and the confusion matrix.

    A ratio with nothing to count is None (null in metrics.json, "–" in the report), not 0, which would read
    as "always wrong": precision of a label never predicted, recall and F1 of a label with no validation
    images. Macro F1 averages the labels that have validation images.
    """
    n, c = len(targets), len(labels)
    preds = np.asarray(probs).argmax(axis=1)
    # Rows are the actual label, columns the predicted one.
    cm = np.bincount(np.asarray(targets) * c + preds, minlength=c * c).reshape(c, c)
    per_class = {label: _class_metrics(int(cm[i, i]), int(cm[:, i].sum()), int(cm[i].sum()))
                 for i, label in enumerate(labels)}
    scored = [m["f1"] for m in per_class.values() if m["f1"] is not None]
    accuracy = float(np.trace(cm) / n) if n else 0.0
    return {"valid_images": int(n), "error_rate": 1.0 - accuracy, "accuracy": accuracy,
            "macro_f1": float(np.mean(scored)) if scored else None, "per_class": per_class,
            "confusion_matrix": {"labels": list(labels), "rows": "actual", "columns": "predicted",
                                 "matrix": cm.tolist()}}


def _class_metrics(hits: int, predicted: int, support: int) -> dict:
    precision = hits / predicted if predicted else None
    recall = hits / support if support else None
    if recall is None:
        f1 = None
    else:  # a label never predicted has recall 0, so F1 0
        f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def top_losses(ev: Evaluation, k: int) -> list[dict]:
    """The k validation images with the highest loss: the first files a person should look at."""
    # A NaN loss (a diverged model) sorts first, as the worst there is, not last.
    order = np.argsort(-np.nan_to_num(ev.losses, nan=np.inf), kind="stable")[:k]
    rows = []
    for i in order:
        pred = int(ev.probs[i].argmax())
        # Relative to the data folder (images/<label>/<file>): the report is published, and a path like
        # /home/<user>/... would say nothing useful about the model and too much about its maker.
        rows.append({"file": Path(*ev.items[i].parts[-3:]).as_posix(), "actual": ev.labels[ev.targets[i]],
                     "predicted": ev.labels[pred], "probability": float(ev.probs[i, pred]),
                     "loss": float(ev.losses[i]), "correct": bool(pred == ev.targets[i])})
    return rows


def read_history(path: Path) -> list[dict]:
    """Per-epoch train and valid loss from the history.csv that training wrote; [] if there is none."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [{"epoch": int(r["epoch"]), "phase": r.get("phase", ""), "train_loss": _number(r["train_loss"]),
             "train_loss_mean": _number(r.get("train_loss_mean")), "valid_loss": _number(r["valid_loss"])}
            for r in rows]


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


def train_loss(row: dict) -> float | None:
    """An epoch's train loss: the plain mean over its batches when training recorded it, else fastai's column,
    a running average that lags behind the model on small datasets."""
    return row["train_loss_mean"] if row.get("train_loss_mean") is not None else row["train_loss"]


def diagnose(history: list[dict], n_labels: int = 0) -> str:
    """A plain-words verdict on the loss curves after the head-only epoch, stating the numbers it rests on.

    One verdict with one piece of advice, the first that holds: diverged (a loss that is not a number, or a
    valid loss far above the ln(labels) that guessing gives), a valid loss rising while the train loss does
    not fall (unsteady), overfitting, underfitting, or none of these.
    """
    rows = [r for r in history if r["phase"] != "frozen" and train_loss(r) is not None and r["valid_loss"] is not None]
    broken = [r["epoch"] for r in rows if not (math.isfinite(train_loss(r)) and math.isfinite(r["valid_loss"]))]
    if broken:
        return (f"Training diverged: the loss is not a number from epoch {broken[0]} on, so the model predicts "
                "nothing useful. Train again with a lower learning rate (--lr).")
    guess = math.log(n_labels) if n_labels > 1 else None
    if rows and guess and rows[-1]["valid_loss"] > DIVERGED * guess:
        return (f"Training diverged: the valid loss ended at {_loss(rows[-1]['valid_loss'])}, far above the "
                f"{_loss(guess)} of guessing at random among {n_labels} labels. Train again with a lower learning "
                "rate (--lr).")
    if len(rows) < 2:
        return ("Too few epochs to judge over- or underfitting: it takes at least two after the head-only first "
                "epoch (--epochs 2 or more).")
    last = rows[-TREND_EPOCHS:]
    t0, t1, v0, v1 = train_loss(last[0]), train_loss(last[-1]), last[0]["valid_loss"], last[-1]["valid_loss"]
    span = f"over epochs {last[0]['epoch']}–{last[-1]['epoch']}"
    if v1 > v0 * (1 + RISE) and not t1 < t0 * (1 - RISE):
        return (f"Unsteady training: {span} the valid loss rose from {_loss(v0)} to {_loss(v1)} while the train "
                f"loss did not fall ({_loss(t0)} to {_loss(t1)}). Train again with a lower learning rate (--lr).")
    if v1 > v0 * (1 + RISE):
        return (f"Overfitting: {span} the valid loss rose from {_loss(v0)} to {_loss(v1)} while the train loss "
                f"fell from {_loss(t0)} to {_loss(t1)}. Train for fewer epochs or collect more images.")
    if t1 > v1:
        return (f"Underfitting: the train loss ({_loss(t1)}) is still above the valid loss ({_loss(v1)}). Train "
                "for more epochs or with a higher learning rate.")
    where = "below" if t1 < v1 else "equal to"
    return (f"No sign of over- or underfitting: {span} the valid loss went from {_loss(v0)} to {_loss(v1)} (not "
            f"rising) and the train loss from {_loss(t0)} to {_loss(t1)}, {where} the valid loss.")


def _loss(value: float) -> str:
    return f"{value:#.3g}"  # three significant digits, so a 2% move shows whatever the scale


def data_root(items: list[Path]) -> Path:
    """The data folder the validation images come from (DATA in DATA/images/<label>/<file>)."""
    return items[0].parents[2] if items else Path(".")


def finite(value):
    """`value` with NaN and infinities (a diverged run) made None, in nested dicts and lists: JSON has neither."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def write_report(metrics: dict, report_dir: Path, root: Path) -> None:
    """Write metrics.json, the three plots and report.md; top-loss files are relative to `root`."""
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "metrics.json").write_text(json.dumps(finite(metrics), indent=2, allow_nan=False) + "\n")
    _plot_confusion(metrics["confusion_matrix"], report_dir / "confusion_matrix.png")
    _plot_losses(metrics["epochs"], report_dir / "losses.png")
    _plot_top_losses(metrics["top_losses"], root, report_dir / "top_losses.png")
    # A published report must not show /home/<user>/...: an absolute data folder is not named.
    folder = "the data folder" if root.is_absolute() else f"the data folder `{root.as_posix()}`"
    (report_dir / "report.md").write_text(report_markdown(metrics, folder))


def report_markdown(metrics: dict, data_folder: str = "the data folder") -> str:
    """The short human-readable report."""
    n_labels = len(metrics["per_class"])
    lines = ["# Evaluation report", "",
             f"Validation set: {metrics['valid_images']} images. Accuracy {100 * metrics['accuracy']:.1f}% "
             f"(error rate {100 * metrics['error_rate']:.1f}%).", ""]
    if n_labels > 1 and metrics["valid_images"] and metrics["accuracy"] <= 1 / n_labels:
        lines += [f"**This model does no better than guessing** ({100 / n_labels:.0f}% with {n_labels} labels). "
                  "Read the training curve below before anything else.", ""]
    lines += per_class_table(metrics["per_class"])
    lines += ["", "## Which classes get confused", ""]
    mixed = confusions(metrics)
    lines += [f"- {n} '{md(actual)}' image{'s' if n > 1 else ''} predicted as '{md(pred)}'."
              for actual, pred, n in mixed[:CONFUSIONS]]
    if len(mixed) > CONFUSIONS:
        lines.append(f"- ... and {len(mixed) - CONFUSIONS} more pairs, all in confusion_matrix.png.")
    lines += [] if mixed else ["None: every validation image was classified correctly."]
    lines += ["", "## Training curve", "", diagnose(metrics["epochs"], n_labels), "",
              "The first epoch trains only the new head, with the body frozen; the verdict looks at the "
              "epochs after it. Each epoch's train loss here is the mean over its batches; the table fastai prints "
              "while training shows a running average, which lags behind on small datasets."]
    lines += ["", "## Look at these images first", "",
              f"The validation images with the highest loss, under {data_folder}. A wrong label or an off-topic "
              "image among the mistakes (✗) is a data problem: fix or delete it (`python -m training review`) and "
              "train again. A right answer (✓) with a high loss is one the model was unsure of.", "",
              "| file | actual | predicted | probability of the prediction | loss | right |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {code(r['file'])} | {md(r['actual'])} | {md(r['predicted'])} | {r['probability']:.2f} | "
              f"{r['loss']:.2f} | {'✓' if r.get('correct') else '✗'} |" for r in metrics["top_losses"]]
    return "\n".join(lines) + "\n"


def per_class_table(per_class: dict, images: str = "images") -> list[str]:
    """Markdown table rows of precision, recall, F1 and image count per label ("–" where undefined)."""
    return [f"| label | precision | recall | F1 | {images} |", "|---|---|---|---|---|",
            *(f"| {md(label)} | {_cell(m['precision'])} | {_cell(m['recall'])} | {_cell(m['f1'])} | {m['support']} |"
              for label, m in per_class.items())]


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def md(text: str) -> str:
    """`text` shown as itself in Markdown, even in a table: labels may hold |, *, _ and the like."""
    return "".join("\\" + ch if ch in "\\`*_[]<>|#!~" else ch for ch in text)


def code(text: str) -> str:
    """`text` as inline code that survives a table cell (a | there must be escaped even inside code)."""
    text = text.replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


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
    curves = {"train_loss_mean": "train loss (epoch mean)", "train_loss": "train loss (fastai's running average)",
              "valid_loss": "valid loss"}
    for key, name in curves.items():
        values = [np.nan if r.get(key) is None else r[key] for r in history]
        if not all(np.isnan(values)):
            ax.plot(epochs, values, marker="o", label=name, linestyle="--" if key == "train_loss" else "-")
    frozen = [r["epoch"] for r in history if r["phase"] == "frozen"]
    if frozen:
        ax.axvspan(min(frozen) - 0.5, max(frozen) + 0.5, color="grey", alpha=0.15, label="head only (frozen body)")
    ax.set(xlabel="epoch", ylabel="loss", title="Loss per epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.legend(loc="best")
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
