"""Tests for training/train/convert.py: export.pkl (ours or the course notebook's) to a model folder."""
from __future__ import annotations

import json
import logging
import pickle
import random
import shutil
import sys
import types

import cloudpickle
import fastai
import numpy as np
import pytest
import torch
from fastai.data.transforms import get_image_files
from fastai.vision.augment import Resize
from fastai.vision.data import ImageDataLoaders
from fastai.vision.learner import vision_learner
from torchvision.models import resnet18

from serving.model import Classifier
from tests.tiny_model import draw_shape
from training.errors import StageError
from training.train.convert import convert
from training.train.stage import build_dataloaders


def is_cat(name: str) -> bool:
    """The course's label function: cat breeds have capitalised file names."""
    return name[0].isupper()


class NotebookPickler(cloudpickle.Pickler):
    """Pickles functions from __main__ by reference, as fastai < 2.7 (plain pickle) did for the course."""

    def reducer_override(self, obj):
        if callable(obj) and getattr(obj, "__module__", None) == "__main__":
            return NotImplemented  # the standard pickler's save_global: "__main__ is_cat"
        return super().reducer_override(obj)


# What torch.save needs of a pickle module.
NOTEBOOK_PICKLE = types.SimpleNamespace(__name__="notebook_pickle", Pickler=NotebookPickler, dump=pickle.dump)


@pytest.fixture(scope="module")
def converted(tiny_model, tmp_path_factory):
    return convert(tiny_model.folder / "export.pkl", tmp_path_factory.mktemp("converted"))


def test_convert_writes_the_same_folder_without_metrics(converted, tiny_model):
    ours = json.loads((converted / "config.json").read_text())
    trained = json.loads((tiny_model.folder / "config.json").read_text())
    for key in ("format_version", "labels", "input_size", "preprocess", "versions"):
        assert ours[key] == trained[key], key
    assert ours["metrics"] == {} and ours["dataset"] is None and ours["made_by"] == "convert"
    assert (converted / "export.pkl").read_bytes() == (tiny_model.folder / "export.pkl").read_bytes()


def test_converted_model_predicts_exactly_like_the_trained_one(converted, tiny_model):
    items = build_dataloaders(tiny_model.cfg, tiny_model.data / "images").valid_ds.items
    a, b = Classifier.from_folder(tiny_model.folder), Classifier.from_folder(converted)
    for path in items:
        assert list(a.classify(path).values()) == pytest.approx(list(b.classify(path).values()), abs=1e-6)


def test_size_can_be_overridden(tiny_model, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="training.train.export")
    config = json.loads((convert(tiny_model.folder / "export.pkl", tmp_path, size=48) / "config.json").read_text())
    assert config["input_size"] == 48
    assert config["preprocess"]["resize"] == 56 and config["preprocess"]["crop"] == 48
    assert Classifier.from_folder(tmp_path).input_size == 48
    megabytes = (tmp_path / "model.onnx").stat().st_size / 1e6
    assert f"model.onnx ({megabytes:.1f} MB) agrees with the torch model; config.json lists 3 labels" in caplog.messages


@pytest.fixture(scope="module")
def course_pkl(tmp_path_factory):
    """An export.pkl made the course's way: label_func=is_cat from the notebook, Resize(64)."""
    root = tmp_path_factory.mktemp("pets")
    rng = random.Random(7)
    for n in range(12):  # non-square, so Resize's crop rule matters
        img = draw_shape(rng.choice(["circle", "square"]), rng, side=96).resize((120, 80))
        img.save(root / (f"Cat_{n}.jpg" if n % 2 else f"dog_{n}.jpg"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(is_cat, "__module__", "__main__")
        mp.setattr(sys.modules["__main__"], "is_cat", is_cat, raising=False)
        dls = ImageDataLoaders.from_name_func(root, get_image_files(root), valid_pct=0.25, seed=42, bs=4,
                                              label_func=is_cat, item_tfms=Resize(64), num_workers=0)
        learn = vision_learner(dls, resnet18, pretrained=False)
        learn.export(root / "export.pkl", pickle_module=NOTEBOOK_PICKLE)
    return root / "export.pkl"


def test_missing_notebook_function_is_named_with_versions_and_fix(course_pkl, tmp_path):
    with pytest.raises(StageError) as err:
        convert(course_pkl, tmp_path / "out")
    message = str(err.value)
    assert "is_cat" in message and f"fastai {fastai.__version__}" in message and f"torch {torch.__version__}" in message
    assert "__main__.is_cat = is_cat" in message, message
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_course_model_converts_once_the_function_is_defined(course_pkl, tmp_path, monkeypatch):
    monkeypatch.setattr(is_cat, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "is_cat", is_cat, raising=False)
    out = convert(course_pkl, tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["labels"] == ["False", "True"] and config["input_size"] == 64
    assert config["preprocess"]["resize_mode"] == "crop"  # fastai Resize's default method
    assert config["preprocess"]["mean"] == [0, 0, 0] and config["preprocess"]["std"] == [1, 1, 1]  # no Normalize
    from fastai.learner import load_learner
    learn, clf = load_learner(course_pkl), Classifier.from_folder(out)
    for path in sorted(course_pkl.parent.glob("*.jpg")):
        _, _, probs = learn.predict(path)
        np.testing.assert_allclose(list(clf.classify(path).values()), probs.numpy(), atol=1e-4)


@pytest.mark.parametrize("content, words", [(None, "no export.pkl"), (b"not a pickle", "not a whole fastai export.pkl")])
def test_unloadable_files_are_stage_errors(tmp_path, content, words):
    pkl = tmp_path / "export.pkl"
    if content is not None:
        pkl.write_bytes(content)
    with pytest.raises(StageError, match=words):
        convert(pkl, tmp_path / "out")


@pytest.mark.parametrize("kind", ["empty", "cut short", "state dict", "onnx"])
def test_files_that_are_no_export_are_named_so_not_blamed_on_versions(tiny_model, tmp_path, kind):
    pkl = tmp_path / "export.pkl"
    whole = (tiny_model.folder / "export.pkl").read_bytes()
    if kind == "state dict":
        torch.save({"weight": torch.zeros(2)}, pkl)
    else:
        pkl.write_bytes({"empty": b"", "cut short": whole[:len(whole) // 2],
                         "onnx": (tiny_model.folder / "model.onnx").read_bytes()}[kind])
    with pytest.raises(StageError) as caught:
        convert(pkl, tmp_path / "out")
    message = str(caught.value)
    assert "not a whole fastai export.pkl" in message and "learn.export()" in message
    assert "Install the versions" not in message and ".." not in message


def test_a_folder_train_made_keeps_its_metrics_and_takes_no_other_model(tiny_model, converted, tmp_path):
    folder = tmp_path / "trained"
    shutil.copytree(tiny_model.folder, folder)
    before = json.loads((folder / "config.json").read_text())
    with pytest.raises(StageError, match="choose another folder with --out"):
        convert(converted / "export.pkl", folder)  # another model's export.pkl (the same weights, but a copy)
    assert json.loads((folder / "config.json").read_text()) == before

    (folder / "model.onnx").unlink()  # what the app's "no model.onnx" hint then has one run: convert it in place
    convert(folder / "export.pkl", folder)
    after = json.loads((folder / "config.json").read_text())
    for key in ("metrics", "dataset", "training", "seed", "arch", "made_by"):
        assert after[key] == before[key], key
    assert (folder / "model.onnx").is_file()
