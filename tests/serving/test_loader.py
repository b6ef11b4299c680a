"""serving/loader.py: which model the app serves, and the fastai path for a folder holding only export.pkl."""
from __future__ import annotations

import shutil
import sys

import pytest

from serving.fastai_model import FastaiModel
from serving.loader import NoModel, choose_precision, load_model
from serving.model import Classifier
from serving.settings import Settings, SettingsError


def _settings(tmp_path, folder) -> Settings:
    return Settings(model_dir=folder, ort_cache_dir=tmp_path / "ort-cache")


def test_a_model_folder_is_served_with_onnx_from_the_settings_cache_folder(tiny_model, tmp_path):
    loaded = load_model(_settings(tmp_path, tiny_model.folder))
    assert isinstance(loaded.model, Classifier) and loaded.source == str(tiny_model.folder)
    assert loaded.examples and loaded.error_rate == loaded.model.config["metrics"]["error_rate"]
    [cached] = (tmp_path / "ort-cache").glob("*.onnx")  # the optimized copy the app starts from
    assert loaded.model.session._model_path == str(cached)


def test_a_folder_with_only_export_pkl_is_served_through_fastai(tiny_model, tmp_path, capsys):
    shutil.copy(tiny_model.folder / "export.pkl", tmp_path / "export.pkl")
    loaded = load_model(_settings(tmp_path, tmp_path))
    assert isinstance(loaded.model, FastaiModel)
    onnx = Classifier.from_folder(tiny_model.folder)
    capsys.readouterr()
    for example in sorted((tiny_model.folder / "examples").glob("*")):
        slow, fast = loaded.model.classify(example), onnx.classify(example)
        assert slow.keys() == fast.keys()
        assert all(abs(slow[k] - fast[k]) < 1e-4 for k in fast)
    assert capsys.readouterr().out == ""  # no progress bar into the server log for every request


def test_a_folder_with_only_model_pkl_is_served_through_fastai(tiny_model, tmp_path):
    """What push_to_hub_fastai writes: model.pkl (and pyproject.toml, README.md), no export.pkl, no model.onnx."""
    shutil.copy(tiny_model.folder / "export.pkl", tmp_path / "model.pkl")
    (tmp_path / "README.md").write_text("a card")
    loaded = load_model(_settings(tmp_path, tmp_path))
    assert isinstance(loaded.model, FastaiModel) and loaded.model.config["source"] == "model.pkl (fastai)"
    example = sorted((tiny_model.folder / "examples").glob("*"))[0]
    assert loaded.model.classify(example).keys() == {"circle", "square", "triangle"}


def test_a_folder_without_a_model_names_what_it_holds(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "weights.bin").write_bytes(b"0")
    with pytest.raises(NoModel) as err:
        load_model(_settings(tmp_path, tmp_path))
    assert "holds no model to serve" in str(err.value) and "notes.txt, sub/weights.bin" in str(err.value)


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_no_model_says_how_to_get_one(tmp_path, make):
    folder = tmp_path / "model"
    if make == "empty":
        folder.mkdir()
    with pytest.raises(NoModel, match="python -m training"):
        load_model(_settings(tmp_path, folder))


def test_export_pkl_without_fastai_installed_points_to_convert(tiny_model, tmp_path, monkeypatch):
    shutil.copy(tiny_model.folder / "export.pkl", tmp_path / "export.pkl")
    monkeypatch.setitem(sys.modules, "fastai", None)  # what the Space's requirements.txt gives: no fastai
    with pytest.raises(NoModel) as err:
        load_model(_settings(tmp_path, tmp_path))
    assert "needs fastai" in str(err.value)
    assert f"python -m training convert {tmp_path / 'export.pkl'}" in str(err.value)


VNNI = "flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni"
NO_VNNI = "flags\t\t: fpu sse2 avx2 fma"


@pytest.mark.parametrize("setting, section, flags, served", [
    ("auto", {"serve": True}, VNNI, "int8"),
    ("auto", {"serve": True}, "flags : avx2 avx_vnni", "int8"),
    ("auto", {"serve": True}, NO_VNNI, "float32"),  # int8 is not known to be faster there: never slower
    ("auto", {"serve": True}, "Features : fp asimd asimddp", "float32"),  # ARM: not measured, so float
    ("auto", {"serve": False, "reason": "it disagreed"}, VNNI, "float32"),
    ("auto", None, VNNI, "float32"),
    ("float32", {"serve": True}, VNNI, "float32"),
    ("int8", {"serve": False}, NO_VNNI, "int8"),  # an explicit choice overrides both
])
def test_which_model_serves(setting, section, flags, served):
    config = {"labels": ["a", "b"]} if section is None else {"labels": ["a", "b"], "int8": section}
    precision, why = choose_precision(setting, config, flags)
    assert precision == served and why


def test_the_reason_says_why_int8_does_not_serve():
    assert "it disagreed" in choose_precision("auto", {"int8": {"serve": False, "reason": "it disagreed"}}, VNNI)[1]
    assert "avx512_vnni" in choose_precision("auto", {"int8": {"serve": True}}, NO_VNNI)[1]


def test_serve_precision_int8_loads_the_int8_model(tiny_model, tmp_path):
    settings = Settings(model_dir=tiny_model.folder, ort_cache_dir=tmp_path / "ort", serve_precision="int8")
    loaded = load_model(settings)
    assert loaded.precision == loaded.model.precision == "int8"
    [cached] = (tmp_path / "ort").glob("*.onnx")  # the optimized copy of model.int8.onnx, not model.onnx
    assert cached.stat().st_size < (tiny_model.folder / "model.onnx").stat().st_size / 3
    settings = Settings(model_dir=tiny_model.folder, ort_cache_dir=tmp_path / "ort", serve_precision="float32")
    assert load_model(settings).precision == "float32"


def test_int8_asked_for_but_missing_says_what_to_do(tiny_model, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model.folder, folder, ignore=shutil.ignore_patterns("model.int8.onnx"))
    with pytest.raises(NoModel, match="has no model.int8.onnx.*SERVE_PRECISION=float32"):
        load_model(Settings(model_dir=folder, ort_cache_dir=tmp_path / "ort", serve_precision="int8"))
    # auto serves the float model instead, whatever config.json says of the int8 one
    assert load_model(Settings(model_dir=folder, ort_cache_dir=tmp_path / "ort")).precision == "float32"


def test_serve_precision_takes_three_values():
    assert Settings.from_env({"SERVE_PRECISION": "int8"}).serve_precision == "int8"
    assert Settings.from_env({}).serve_precision == "auto"
    with pytest.raises(SettingsError, match="SERVE_PRECISION='fp16' is not usable: it takes auto, float32 or int8"):
        Settings.from_env({"SERVE_PRECISION": "fp16"})
