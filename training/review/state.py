"""What the review page shows: the data folder with the model trained on it, its split, and each image's loss.

This is fastbook's `ImageClassifierCleaner`, without Jupyter. For a chosen label and split, the page
shows the images with the highest loss first, so the model's most confident mistakes come first. Every
action changes DATA/images straight away and is recorded in DATA/manifest.csv (reasons
`removed_by_review`, `relabelled`, `kept_by_review`) and in DATA/review.csv, which reruns of `data`
honour and which makes undo possible. A deleted image goes to DATA/trash/, so nothing is lost. The next
`python -m training train` reads DATA/images, so it trains on the cleaned data. The changes themselves
are made by training/review/actions.py; this module adds the model: which images to show, and their losses.

Losses come from the exported model.onnx (serving.model.Classifier): the validation transform, no torch.
The split is the one training drew. `train` calls fastai's RandomSplitter(valid_pct, seed) over
get_image_files(DATA/images); `draw_split` calls the same two functions with the seed and valid_pct from
config.json, over the same list: today's files, with every review change made after training (by the
time stamp of config.json) wound back, so a relabelled image sits in its old folder again. That list's
order comes from the filesystem, so the split is drawn once per model, on the first review after
training, and kept in DATA/review_split.json; later changes can't shift it.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.model import Classifier, ModelFolderError, read_config
from training.data.decisions import PENDING, ReviewLog, in_trash, is_pending, label_of
from training.data.feedback import ROWS_FILE
from training.data.manifest import read_manifest
from training.errors import StageError
from training.review.actions import DataFolder, image_files, label_folders, write_text

log = logging.getLogger(__name__)

SPLIT_FILE = "review_split.json"
BATCH = 32  # images per forward pass: big enough to use every core, small enough not to matter for memory


def trained_on(model_dir: Path) -> Path:
    """The data folder a model was trained on, as its settings.json records it."""
    if not model_dir.is_dir():
        raise StageError(f"no model folder at {model_dir}; pass the folder `python -m training train` wrote "
                         "(models/<name>), or train one first")
    try:
        return Path(json.loads((model_dir / "settings.json").read_text())["data"])
    except (OSError, ValueError, KeyError, TypeError):
        raise StageError(f"{model_dir}/settings.json doesn't say which data folder trained the model; "
                         "pass it with --data DIR") from None


def open_review(model_dir: Path, data_dir: Path, holder: str = "python -m training review") -> "Review":
    """Check that the model and data belong together and the data can be written, lock it, load the model."""
    images = _images_folder(data_dir)
    try:
        config = read_config(model_dir)
    except ModelFolderError as exc:
        raise StageError(str(exc)) from exc
    _check_labels(config["labels"], images, model_dir)
    data = DataFolder(data_dir, holder)
    try:
        return Review(model_dir, config, data)
    except BaseException:
        data.close()
        raise


def _images_folder(data_dir: Path) -> Path:
    images = data_dir / "images"
    if not images.is_dir() or not any(image_files(images)):
        raise StageError(f"no images in {images}: pass the data folder the model was trained on with --data, "
                         "or make one with `python -m training data`")
    return images


def _check_labels(labels: list[str], images: Path, model_dir: Path) -> None:
    found = label_folders(images)
    if sorted(labels) != found:
        raise StageError(f"{model_dir} and {images.parent} don't belong together: the model was trained on labels "
                         f"{', '.join(sorted(labels))} but {images} has {', '.join(found) or 'none'}. Pass the "
                         f"data folder the model was trained on with --data, or train on this one first: "
                         f"`python -m training train --data {images.parent} --out NEW_MODEL_DIR`")


@dataclass(frozen=True)
class Card:
    """One image as the page shows it."""
    original: str  # its name in the review log
    path: str  # where it is now, under the data folder
    label: str  # the folder it is in
    predicted: str
    probability: float  # of the predicted label
    loss: float  # cross-entropy against `label`, as fastai computes it
    note: str  # what review did to it: "", "kept" or "relabelled (was <label>)"


class Review:
    """The data folder with the model trained on it: the split it used and the loss of every image."""

    def __init__(self, model_dir: Path, config: dict, data: DataFolder):
        self.model_dir, self.config, self.data = model_dir, config, data
        self.labels: list[str] = list(config["labels"])
        self.trained_at = (model_dir / "config.json").stat().st_mtime
        self.warnings: list[str] = []
        self._check_images()
        try:
            self.classifier = Classifier.from_folder(model_dir)
        except ModelFolderError as exc:
            raise StageError(str(exc)) from exc
        self.split = self._load_split()  # last: it saves review_split.json, once the rest is known to be fine
        self._probs: dict[str, np.ndarray] = {}  # by original: moving an image doesn't change its pixels

    @property
    def data_dir(self) -> Path:
        return self.data.dir

    def close(self) -> None:
        self.data.close()

    def hardest(self, label: str, split: str, count: int) -> list[Card]:
        """The `count` images now labelled `label`, from the training `split`, with the highest loss."""
        places, reviewed = self.data.log.places(), self.data.log.reviewed()
        chosen = [(o, places.get(o, o)) for o, s in self.split.items() if s == split]
        chosen = [(o, p) for o, p in chosen
                  if not in_trash(p) and label_of(p) == label and (self.data_dir / p).is_file()]
        self._predict([o for o, p in chosen], dict(chosen))
        cards = [self._card(o, p, _note(o, p, o in reviewed)) for o, p in chosen]
        return sorted(cards, key=lambda c: -c.loss)[:count]

    def pending(self, count: int) -> list[Card]:
        """Up to `count` visitors' photos waiting for review (`data --from-feedback`), oldest first, each with the
        visitor's label and what the app's model said when it was sent."""
        manifest = self.data_dir / "manifest.csv"
        rows = [r for r in read_manifest(manifest) if r.status == "pending_review"] if manifest.is_file() else []
        rows = [r for r in rows if (self.data_dir / r.file).is_file()][:count]
        answers = _sent_rows(self.data_dir / PENDING / ROWS_FILE) if rows else {}
        return [_pending_card(r.file, r.label, answers.get(r.file, {})) for r in rows]

    def is_pending(self, original: str) -> bool:
        """Whether `original` is a visitor's photo now waiting for review."""
        return any(card.original == original for card in self.pending(count=10**9))

    def changed_since_training(self) -> Counter:
        """Images deleted, relabelled or restored since the model was trained."""
        return self.data.changes_since(self.trained_at)

    def images_per_label(self) -> dict[str, int]:
        counts = Counter(f.parent.name for f in image_files(self.data_dir / "images"))
        return {label: counts[label] for label in self.labels}

    def _card(self, original: str, path: str, note: str) -> Card:
        probs, label = self._probs[original], label_of(path)
        top = int(probs.argmax())
        loss = float(-np.log(max(probs[self.labels.index(label)], np.finfo(float).tiny)))
        return Card(original, path, label, self.labels[top], float(probs[top]), loss, note)

    def _predict(self, originals: list[str], paths: dict[str, str]) -> None:
        todo = [o for o in originals if o not in self._probs]
        for start in range(0, len(todo), BATCH):
            batch = todo[start:start + BATCH]
            results = self.classifier.classify_batch([self.data_dir / paths[o] for o in batch])
            for o, probs in zip(batch, results):
                self._probs[o] = np.array([probs[label] for label in self.labels])

    def _load_split(self) -> dict[str, str]:
        """{original: "train" or "valid"}, saved per model so later changes can't shift it."""
        path, fingerprint = self.data_dir / SPLIT_FILE, _fingerprint(self.model_dir)
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = {}
        if isinstance(saved, dict) and saved.get("model") == fingerprint:
            self.warnings += saved.get("warnings", [])
            return {o: s for s in ("train", "valid") for o in saved[s]}
        split, warnings = draw_split(self.config, self.data_dir, self.data.log, self.trained_at)
        self.warnings += warnings
        record = {"model": fingerprint, "model_dir": str(self.model_dir), "warnings": self.warnings,
                  **{s: [o for o, t in split.items() if t == s] for s in ("train", "valid")}}
        write_text(path, json.dumps(record, indent=1) + "\n")
        return split

    def _check_images(self) -> None:
        """Raise StageError when none of the model's reported validation images is in this data folder."""
        try:
            top = json.loads((self.model_dir / "report" / "metrics.json").read_text()).get("top_losses", [])
        except (OSError, ValueError, AttributeError):
            return  # no report to compare with; the label check already passed
        wanted = ["/".join(Path(r["file"]).parts[-3:]) for r in top if isinstance(r, dict) and "file" in r]
        names = self.data.log.names()
        missing = [w for w in wanted if w not in names and not (self.data_dir / w).is_file()]
        if wanted and len(missing) == len(wanted):
            raise StageError(f"{self.model_dir} and {self.data_dir} don't belong together: none of the images the "
                             f"model's report names (e.g. {missing[0]}) is in {self.data_dir}. Pass the data folder "
                             f"the model was trained on with --data (its settings.json says "
                             f"{_settings_data(self.model_dir)}), or train on this one first")
        if missing:
            self.warnings.append(f"{len(missing)} of the {len(wanted)} images named in the model's report are missing "
                                 f"from {self.data_dir} (e.g. {missing[0]})")


def draw_split(config: dict, data_dir: Path, log: ReviewLog, trained_at: float) -> tuple[dict[str, str], list[str]]:
    """{original: "train" or "valid"} as training drew it (see the module docstring), and warnings if approximate."""
    from fastai.data.transforms import RandomSplitter, get_image_files  # the very functions train.py uses

    seed, valid_pct = config.get("seed"), config.get("training", {}).get("valid_pct")
    if seed is None or valid_pct is None:
        raise StageError("the model's config.json has no seed or valid_pct, so which images were held out for "
                         "validation is unknown; review needs a model made by `python -m training train`")
    names, then, current = log.names(), log.places(until=trained_at), log.places()
    files = [f.relative_to(data_dir).as_posix() for f in get_image_files(data_dir / "images")]
    gone = sorted(o for o, p in current.items() if in_trash(p) and not in_trash(then.get(o, o)))
    # A visitor's photo that was still waiting in feedback/ when the model was trained was not in its list.
    originals = [o for o in [names.get(f, f) for f in files] + gone if not is_pending(then.get(o, o))]
    at_training = [then.get(o, o) for o in originals]  # the list get_image_files gave training
    train_idx, valid_idx = RandomSplitter(valid_pct, seed=seed)(at_training)
    split = {**{originals[i]: "train" for i in train_idx}, **{originals[i]: "valid" for i in valid_idx}}
    return split, _split_warnings(config, data_dir, len(at_training), len(gone))


def _split_warnings(config: dict, data_dir: Path, n: int, gone: int) -> list[str]:
    warnings = []
    if gone:
        # Where get_image_files listed the deleted files went with them, so the draw can only approximate.
        warnings.append(f"{gone} image(s) were deleted after training and before the split was saved, so which "
                        "images are train and which valid is approximate. Train again for an exact split")
    trained = config.get("dataset", {}).get("total_images")
    if trained is not None and trained != n:
        warnings.append(f"the model was trained on {trained} images but {data_dir / 'images'} has {n}: the data "
                        "changed outside review, so the train/valid split shown is approximate. Train again for "
                        "an exact one")
    return warnings


def _sent_rows(path: Path) -> dict[str, dict]:
    """{file under the data folder: the row the app wrote for it}, from DATA/feedback/rows.jsonl."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    rows = {}
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("file"), str):
            rows[row["file"]] = row
    return rows


def _pending_card(file: str, label: str, sent: dict) -> Card:
    """A visitor's photo as the page shows it: `label` is the visitor's, `predicted` the app's model's."""
    probs = sent.get("probabilities") if isinstance(sent.get("probabilities"), dict) else {}
    predicted = str(sent.get("predicted", "?"))
    probability = probs.get(predicted, float("nan"))
    note = f"sent by a visitor to {sent.get('model', 'the app')} at {sent.get('time', '?')}"
    return Card(file, file, label, predicted, float(probability) if isinstance(probability, (int, float)) else
                float("nan"), float("nan"), note)


def _note(original: str, place: str, reviewed: bool) -> str:
    if place != original:
        return f"relabelled (was {label_of(original)})"
    return "kept" if reviewed else ""


def _fingerprint(model_dir: Path) -> str:
    """Which training run made the model: config.json holds its metrics and timings, so it differs per run."""
    return hashlib.sha256((model_dir / "config.json").read_bytes()).hexdigest()


def _settings_data(model_dir: Path) -> str:
    try:
        return str(trained_on(model_dir))
    except StageError:
        return "nothing"
