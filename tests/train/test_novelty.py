"""Tests for training/train/novelty.py: the "none of these" check a trained or converted model folder carries.

The model learns coloured shapes from random weights, trained hot so that it really learns them in seconds; the
images that show none of its labels are of other families (photo-like pictures, noise, stripes, checkerboards,
gradients). A user's
pretrained run separates such images far better than these features learned from scratch.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fastai.data.transforms import RandomSplitter, get_image_files

from serving.model import Classifier
from serving.novelty import FEATURES_FILE
from tests.tiny_model import draw_unrelated, make_images, tiny_config
from training.hub.publish import model_card
from training.train.convert import convert

PER_LABEL = 40  # 24 validation images: a 95% pass rate lands within a few points of its target


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained on shapes, with DATA/other/ holding 40 images of other families."""
    from training.train.stage import train

    root = tmp_path_factory.mktemp("novelty")
    data = make_images(root / "data", per_label=PER_LABEL)
    (data / "other").mkdir()
    for n in range(40):
        draw_unrelated(n).save(data / "other" / f"other{n:02d}.jpg", quality=90)
    cfg = tiny_config(data, root / "model", epochs=10)
    folder = train(cfg)
    return cfg, folder, json.loads((folder / "config.json").read_text())


def test_the_training_images_features_are_stored_compactly(trained):
    cfg, folder, config = trained
    bank = np.load(folder / FEATURES_FILE, allow_pickle=False)
    n_train = config["dataset"]["train_images"]
    assert bank.dtype == np.float16 and bank.shape == (n_train, 512)  # resnet18's head reads 512 values
    assert np.allclose(np.linalg.norm(bank.astype(np.float32), axis=1), 1, atol=2e-3)
    assert config["novelty"]["train_images"] == n_train and config["novelty"]["dim"] == 512


def test_the_validation_pass_rate_lands_near_its_target(trained):
    cfg, folder, config = trained
    section = config["novelty"]
    assert (section["method"], section["k"], section["target_pass_rate"]) == ("knn_cosine", 1, 0.95)
    assert section["valid_images"] == config["dataset"]["valid_images"] == 24
    assert abs(section["valid_pass_rate"] - 0.95) <= 0.05
    # Recomputed through the served model, the stored threshold passes what the section says.
    items = get_image_files(cfg.data_dir / "images")  # the validation split, drawn by fastai as training drew it
    valid = [items[i] for i in RandomSplitter(cfg.valid_pct, seed=cfg.seed)(items)[1]]
    verdicts = Classifier.from_folder(folder).judge_batch(valid)
    assert np.mean([v.in_domain for v in verdicts]) == pytest.approx(section["valid_pass_rate"])


def test_images_of_other_families_are_flagged_more_often_than_validation_images(trained):
    cfg, folder, config = trained
    others = config["novelty"]["others"]
    assert others["images"] == 40
    assert others["caught"] > 1 - config["novelty"]["valid_pass_rate"] + 0.15
    assert 0 <= others["maxprob_caught"] <= 1 and others["auroc"] > 0.5
    verdicts = Classifier.from_folder(folder).judge_batch(sorted((cfg.data_dir / "other").glob("*.jpg")))
    assert np.mean([not v.in_domain for v in verdicts]) == pytest.approx(others["caught"])


def test_the_report_and_the_card_say_how_well_it_catches_them(trained):
    cfg, folder, config = trained
    report = (folder / "report" / "report.md").read_text()
    section = report[report.index("## None of these"):]
    assert f"**{config['novelty']['valid_pass_rate']:.1%} of the 24 validation images**" in section
    assert f"| distance to the training images (used) | {config['novelty']['others']['auroc']:.3f} |" in section
    assert json.loads((folder / "report" / "metrics.json").read_text())["novelty"] == config["novelty"]
    card = model_card(config, cfg.replace(repo_id="you/shapes"), ["model.onnx", "config.json"])
    assert "## None of these" in card and "| top probability (for comparison) |" in card


def test_without_other_images_the_report_says_it_was_not_measured(tiny_model):
    report = (tiny_model.folder / "report" / "report.md").read_text()
    assert "was **not measured**" in report[report.index("## None of these"):]
    assert json.loads((tiny_model.folder / "config.json").read_text())["novelty"]["others"] is None


def test_convert_with_the_training_images_adds_the_check(trained, tmp_path):
    cfg, folder, config = trained
    out = convert(folder / "export.pkl", tmp_path / "converted", data=cfg.data_dir,
                  settings=cfg.replace(other=tmp_path / "none"))
    section = json.loads((out / "config.json").read_text())["novelty"]
    # The same split, the same model: the same features and threshold as training wrote.
    assert section["train_images"] == config["novelty"]["train_images"]
    assert section["threshold"] == pytest.approx(config["novelty"]["threshold"], abs=1e-4)
    assert np.array_equal(np.load(out / FEATURES_FILE), np.load(folder / FEATURES_FILE))
    # The int8 model too, checked on the same validation split: the same figures as training's.
    int8 = json.loads((out / "config.json").read_text())["int8"]
    assert (out / "model.int8.onnx").is_file() and int8["valid_images"] == config["int8"]["valid_images"]
    assert int8["error_rate_float32"] == config["int8"]["error_rate_float32"]
    assert section["int8"]["threshold"] == pytest.approx(config["novelty"]["int8"]["threshold"], abs=1e-3)


def test_convert_without_data_serves_without_the_check(trained, tmp_path):
    _, folder, _ = trained
    out = tmp_path / "converted"
    out.mkdir()
    for name in (FEATURES_FILE, "model.int8.onnx"):  # an earlier model's, which must not survive
        shutil.copyfile(folder / name, out / name)
    convert(folder / "export.pkl", out)
    config = json.loads((out / "config.json").read_text())
    assert "novelty" not in config and not (out / FEATURES_FILE).exists()
    assert "int8" not in config and not (out / "model.int8.onnx").exists()  # no images to calibrate on
    verdict = Classifier.from_folder(out).judge(folder.parent / "data" / "other" / "other00.jpg")
    assert (verdict.in_domain, verdict.novelty, verdict.threshold) == (None, None, None)
