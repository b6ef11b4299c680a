"""The "none of these" check of a model folder: store its training images' features, calibrate the threshold on
the validation split, and measure how well it catches images that show none of the labels.

Runs after export, through the folder's own model.onnx and serving/novelty.py's functions, so the features and
the threshold are those of the model that serves. Writes novelty_features.npy, config.json's `novelty` section,
and the report's "None of these" section (report.md, metrics.json).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from serving.imaging import ImageRejected
from serving.model import MODEL_FILES, Classifier
from serving.novelty import FEATURES_FILE, MAX_FEATURES, METHOD, auroc, knn_distances, normalised, threshold_for
from training.errors import StageError

log = logging.getLogger(__name__)

BATCH = 32


def add_novelty_check(folder: Path, train_items: Sequence[Path], valid_items: Sequence[Path], *, k: int,
                      pass_rate: float, others: Sequence[Path] = (), seed: int = 42) -> dict:
    """Write the folder's check and return config.json's `novelty` section (also written into config.json)."""
    clf = Classifier.from_folder(folder, cache_dir=None)
    if len(train_items) > MAX_FEATURES:  # the app scans every stored feature for every image
        log.info("keeping the features of %d of %d training images (the app's bound)", MAX_FEATURES, len(train_items))
    train_items = at_most(list(train_items), MAX_FEATURES, seed)
    bank = normalised(_probs_and_features(clf, train_items, "training images")[1]).astype(np.float16)
    np.save(folder / FEATURES_FILE, bank, allow_pickle=False)
    bank = bank.astype(np.float32)
    valid_probs, valid_features = _probs_and_features(clf, valid_items, "validation images")
    valid_scores = knn_distances(bank, valid_features, k)
    threshold = threshold_for(valid_scores, pass_rate)
    section = {"method": METHOD, "k": min(k, len(bank)), "features_file": FEATURES_FILE, "train_images": len(bank),
               "dim": int(bank.shape[1]), "threshold": threshold, "target_pass_rate": pass_rate,
               "valid_pass_rate": float(np.mean(valid_scores <= threshold)), "valid_images": len(valid_scores),
               "others": _measured_on_others(clf, bank, k, others, valid_scores, threshold, valid_probs, pass_rate)}
    if (folder / MODEL_FILES["int8"]).is_file():
        section["int8"] = _int8_threshold(folder, bank, k, valid_items, others, pass_rate)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config_file.write_text(json.dumps({**config, "novelty": section}, indent=2) + "\n")
    log.info("none-of-these check: %d training images' features; threshold %.4f passes %.1f%% of %d validation "
             "images%s", len(bank), threshold, 100 * section["valid_pass_rate"], len(valid_scores),
             _caught_note(section["others"]))
    return section


def _int8_threshold(folder: Path, bank: np.ndarray, k: int, valid_items: Sequence[Path], others: Sequence[Path],
                    pass_rate: float) -> dict:
    """The int8 model's own threshold: its features are the float model's to within quantization, so its distances
    to the same stored features are calibrated the same way, through the int8 model itself."""
    clf = Classifier.from_folder(folder, cache_dir=None, precision="int8")
    valid_probs, valid_features = _probs_and_features(clf, valid_items, "validation images (int8)")
    valid_scores = knn_distances(bank, valid_features, k)
    threshold = threshold_for(valid_scores, pass_rate)
    return {"threshold": threshold, "valid_pass_rate": float(np.mean(valid_scores <= threshold)),
            "others": _measured_on_others(clf, bank, k, others, valid_scores, threshold, valid_probs, pass_rate)}


def _measured_on_others(clf: Classifier, bank: np.ndarray, k: int, others: Sequence[Path], valid_scores: np.ndarray,
                        threshold: float, valid_probs: np.ndarray, pass_rate: float) -> dict | None:
    """AUROC and share caught at the threshold on images showing none of the labels, for the score and for
    max-probability (1 - the top probability, its threshold calibrated the same way); None without such images."""
    if not others:
        return None
    other_probs, other_features = _probs_and_features(clf, others, "images showing none of the labels")
    if not len(other_features):
        return None
    other_scores = knn_distances(bank, other_features, k)
    valid_maxprob, other_maxprob = 1 - valid_probs.max(axis=1), 1 - other_probs.max(axis=1)
    maxprob_threshold = threshold_for(valid_maxprob, pass_rate)
    return {"images": len(other_scores),
            "auroc": auroc(valid_scores, other_scores), "caught": float(np.mean(other_scores > threshold)),
            "maxprob_auroc": auroc(valid_maxprob, other_maxprob),
            "maxprob_caught": float(np.mean(other_maxprob > maxprob_threshold))}


def _caught_note(others: dict | None) -> str:
    if not others:
        return ""
    return (f"; of {others['images']} images showing none of the labels it catches {others['caught']:.0%} "
            f"(AUROC {others['auroc']:.2f}; max-probability: {others['maxprob_caught']:.0%}, "
            f"AUROC {others['maxprob_auroc']:.2f})")


def at_most(items: list[Path], n: int, seed: int) -> list[Path]:
    """`items`, or a seeded sample of n of them, in their order."""
    if len(items) <= n:
        return items
    keep = np.random.default_rng(seed).choice(len(items), n, replace=False)
    return [items[i] for i in sorted(keep)]


def _probs_and_features(clf: Classifier, items: Sequence[Path], what: str) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities [N, C] and features [N, D] of the readable images among `items` (others skipped, logged)."""
    probs, features, skipped = [], [], 0
    for start in range(0, len(items), BATCH):
        batch = []
        for path in items[start:start + BATCH]:
            try:
                batch.append(clf.preprocess(path))
            except (ImageRejected, OSError) as exc:
                skipped += 1
                log.debug("novelty: skipped %s (%s)", path, exc)
        if batch:
            p, f = clf.run(np.stack(batch))
            if f is None:
                raise StageError(f"{clf.folder}/model.onnx has no features output; re-export it with this version "
                                 "of the project (`python -m training convert`)")
            probs.append(p)
            features.append(f)
    if skipped:
        log.info("novelty: %d of %d %s could not be read and were skipped", skipped, len(items), what)
    if not features:
        return np.zeros((0, len(clf.labels))), np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(probs), np.concatenate(features)


def image_files(folder: Path) -> list[Path]:
    """Every file under `folder` (hidden ones aside), sorted: which are images is decided by content when read."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def add_to_report(report_dir: Path, section: dict) -> None:
    """Add the "None of these" section to report.md and the figures to metrics.json."""
    report = report_dir / "report.md"
    report.write_text(report.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + novelty_markdown(section, 2) + "\n")
    metrics_file = report_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    metrics_file.write_text(json.dumps({**metrics, "novelty": section}, indent=2) + "\n")


def novelty_markdown(section: dict | None, level: int = 2) -> str:
    """The "None of these" section of report.md and the model card."""
    title = "#" * level + " None of these"
    if not section:
        return (f"{title}\n\nThis model has no \"none of these\" check: the app always names one of its labels. "
                "Train it with this project (or convert it with `--data`) to add one.")
    lines = [title, "",
             f"The app says a photo shows none of the labels when its features are further from those of the "
             f"{section['train_images']} training images than the threshold: the cosine distance to the "
             f"{_ordinal(section['k'])} nearest, {section['threshold']:.4f}. The threshold lets "
             f"**{section['valid_pass_rate']:.1%} of the {section['valid_images']} validation images** pass (the "
             f"target: {section['target_pass_rate']:.0%}).", ""]
    if section.get("int8"):
        lines += [f"The int8 model's threshold, calibrated the same way through it: {section['int8']['threshold']:.4f} "
                  f"(passes {section['int8']['valid_pass_rate']:.1%}).", ""]
    others = section.get("others")
    if not others:
        lines.append("How well it catches images that show none of the labels was **not measured**: there were no "
                     "such images (`--other DIR`, or DATA/other/).")
        return "\n".join(lines)
    lines += [f"On {others['images']} images that show none of the labels, never trained on:", "",
              "| score | AUROC | caught at the threshold |", "|---|---|---|",
              f"| distance to the training images (used) | {others['auroc']:.3f} | {others['caught']:.1%} |",
              f"| top probability (for comparison) | {others['maxprob_auroc']:.3f} | {others['maxprob_caught']:.1%} |",
              "", "AUROC: the chance that such an image scores as more novel than a validation image (0.5 is a coin). "
                  "Both thresholds are calibrated the same way on the validation images."]
    return "\n".join(lines)


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def other_images(folder: Path) -> list[Path]:
    """The images showing none of the labels in `folder`: its images/ when the data stage made it (its manifest and
    search cache aside) and feedback/, visitors' photos a reviewer kept as "none of these"; else every file in it;
    none when it doesn't exist."""
    if not folder.is_dir():
        return []
    if not (folder / "images").is_dir():
        return image_files(folder)
    feedback = folder / "feedback"
    return image_files(folder / "images") + (image_files(feedback) if feedback.is_dir() else [])

