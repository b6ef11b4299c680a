"""How well "none of these" catches images that show none of the labels, against max-probability as the score.

    python -m bench.novelty            # builds the dataset and trains once (bench/out/novelty/, about a minute)

The dataset: coloured circles, squares and triangles on grey (tests/tiny_model.py), 60 of each, and 120 images of
four other families (noise, stripes, checkerboards, gradients) that are never trained on. The model is a resnet18
trained from random weights, hot (the only way here: pretrained weights can't be downloaded), so its features
know shapes and little else. A user's pretrained run separates unrelated photos far better; these figures are the
from-scratch case. Prints the AUROC and the share caught at a 95% validation pass rate for the score and for
max-probability, and the same for a few values of k. Targets: AUROC >= 0.9, and >= 0.1 above max-probability.
"""
from __future__ import annotations

import json
import shutil

import numpy as np

from bench.common import OUT, machine
from serving.model import Classifier
from serving.novelty import auroc, knn_distances, threshold_for
from tests.tiny_model import draw_unrelated, make_images, tiny_config
from training.train.novelty import image_files

FOLDER = OUT / "novelty"
PER_LABEL, OTHERS = 60, 120
TARGET_AUROC, TARGET_MARGIN = 0.9, 0.1


def trained() -> tuple[object, dict]:
    """The settings and config.json of the model (trained once, kept in bench/out/novelty/)."""
    from training.train.stage import train

    model = FOLDER / "model"
    cfg = tiny_config(FOLDER / "data", model, epochs=10)
    if not (model / "config.json").exists() or "novelty" not in json.loads((model / "config.json").read_text()):
        shutil.rmtree(FOLDER, ignore_errors=True)
        data = make_images(FOLDER / "data", per_label=PER_LABEL)
        (data / "other").mkdir()
        for n in range(OTHERS):
            draw_unrelated(n).save(data / "other" / f"other{n:03d}.jpg", quality=90)
        train(cfg)
    return cfg, json.loads((model / "config.json").read_text())


def main() -> int:
    cfg, config = trained()
    section, others = config["novelty"], config["novelty"]["others"]
    print(machine())
    print(f"{section['train_images']} training images, {section['valid_images']} validation images, "
          f"{others['images']} images of other families; validation error rate {config['metrics']['error_rate']:.1%}")
    print(f"{'score':<34} {'AUROC':>6} {'caught at 95% pass':>19}")
    name = f"distance to training images, k={section['k']}"
    print(f"{name:<34} {others['auroc']:>6.3f} {others['caught']:>19.1%}")
    print(f"{'max-probability':<34} {others['maxprob_auroc']:>6.3f} {others['maxprob_caught']:>19.1%}")
    _other_k(cfg, config)
    met = others["auroc"] >= TARGET_AUROC and others["auroc"] - others["maxprob_auroc"] >= TARGET_MARGIN
    print(f"targets: AUROC >= {TARGET_AUROC}, >= {TARGET_MARGIN} above max-probability: {'met' if met else 'MISSED'}")
    return 0 if met else 1


def _other_k(cfg, config: dict) -> None:
    """The same measurement for other values of k, from the stored features (the choice of k, measured)."""
    from fastai.data.transforms import RandomSplitter, get_image_files

    clf = Classifier.from_folder(cfg.model_dir)
    bank = np.load(cfg.model_dir / config["novelty"]["features_file"]).astype(np.float32)
    items = get_image_files(cfg.data_dir / "images")
    valid = [items[i] for i in RandomSplitter(cfg.valid_pct, seed=cfg.seed)(items)[1]]
    valid_features = clf.run(np.stack([clf.preprocess(p) for p in valid]))[1]
    other_features = clf.run(np.stack([clf.preprocess(p) for p in image_files(cfg.data_dir / "other")]))[1]
    for k in (1, 5, 10, 50):
        v, o = knn_distances(bank, valid_features, k), knn_distances(bank, other_features, k)
        caught = np.mean(o > threshold_for(v, cfg.novelty_pass_rate))
        print(f"{'  k=' + str(k):<34} {auroc(v, o):>6.3f} {caught:>19.1%}")


if __name__ == "__main__":
    raise SystemExit(main())
