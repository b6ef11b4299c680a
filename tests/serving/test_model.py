"""Tests for serving/model.py: the torch-free classifier the app uses."""
from __future__ import annotations

import io
import json
import logging
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from serving import model
from serving.model import Classifier, ModelFolderError, Preprocess, softmax
from serving.novelty import FEATURES_FILE
from tests.tiny_model import draw_shape

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clf(tiny_model):
    return Classifier.from_folder(tiny_model.folder)


@pytest.fixture(scope="module")
def image_file(tiny_model):
    return next((tiny_model.data / "images" / "square").iterdir())


def test_judge_scores_each_image_by_its_cosine_distance_to_the_nearest_training_image(clf, tiny_model):
    """Worked out here with onnxruntime and numpy alone: the features output, normalised, against the stored
    training features; k=1 for the tiny model, so the distance to the single nearest one."""
    section = json.loads((tiny_model.folder / "config.json").read_text())["novelty"]
    assert section["k"] == 1
    bank = np.load(tiny_model.folder / section["features_file"]).astype(np.float64)
    images = [Image.open(p).convert("RGB") for p in sorted((tiny_model.data / "images" / "square").iterdir())[:2]]
    images.append(Image.effect_noise((96, 96), 80).convert("RGB"))  # nothing like a shape
    session = ort.InferenceSession(str(tiny_model.folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    logits, features = session.run(names, {session.get_inputs()[0].name: np.stack([clf.preprocess(im)
                                                                                  for im in images])})
    features = features.astype(np.float64) / np.linalg.norm(features, axis=1, keepdims=True)
    nearest = 1 - (features @ bank.T).max(axis=1)
    verdicts = clf.judge_batch(images)
    assert [v.novelty for v in verdicts] == pytest.approx(list(nearest), abs=1e-3)
    assert all(v.threshold == section["threshold"] for v in verdicts)
    assert [v.in_domain for v in verdicts] == [d <= section["threshold"] for d in nearest]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for verdict, row in zip(verdicts, probs):
        assert list(verdict.probs) == clf.labels and list(verdict.probs.values()) == pytest.approx(list(row), abs=1e-6)
    assert clf.classify_batch(images) == [v.probs for v in verdicts]


def test_serving_never_imports_torch_or_fastai(tiny_model, image_file):
    code = ("import sys; from serving.model import Classifier; "
            f"p = Classifier.from_folder({str(tiny_model.folder)!r}).classify({str(image_file)!r}); "
            "assert abs(sum(p.values()) - 1) < 1e-9; "
            "print(sorted(m for m in ('torch', 'fastai', 'torchvision', 'fastcore') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_classify_returns_every_label_with_probabilities_summing_to_one(clf, image_file):
    probs = clf.classify(image_file)
    assert list(probs) == clf.labels == clf.config["labels"]
    assert all(isinstance(p, float) and 0 <= p <= 1 for p in probs.values())
    assert sum(probs.values()) == pytest.approx(1, abs=1e-12)


def test_every_kind_of_input_gives_the_same_answer(clf, image_file):
    data = image_file.read_bytes()
    with Image.open(image_file) as img:
        pil = img.convert("RGB")
    inputs = [image_file, str(image_file), data, io.BytesIO(data), pil]
    results = [clf.classify(x) for x in inputs]
    assert all(r == results[0] for r in results)


def test_classify_batch_matches_one_by_one(clf, tiny_model):
    files = sorted((tiny_model.data / "images" / "circle").iterdir())[:3]
    batch = clf.classify_batch(files)
    for got, f in zip(batch, files):
        assert list(got.values()) == pytest.approx(list(clf.classify(f).values()), abs=1e-6)
    assert clf.classify_batch([]) == []


def test_preprocess_is_fastais_validation_transform(clf, image_file):
    """Squish to 80 bilinear, centre-crop 64, /255, ImageNet mean/std: written out by hand."""
    with Image.open(image_file) as img:
        ref = np.asarray(img.convert("RGB").resize((80, 80), Image.Resampling.BILINEAR), dtype=np.float32)
    ref = ref[8:72, 8:72].transpose(2, 0, 1) / np.float32(255)
    mean = np.float32([0.485, 0.456, 0.406]).reshape(3, 1, 1)
    std = np.float32([0.229, 0.224, 0.225]).reshape(3, 1, 1)
    x = clf.preprocess(image_file)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    np.testing.assert_array_equal(x, (ref - mean) / std)


@pytest.mark.parametrize("resample", ["bilinear", "bicubic", "lanczos", "nearest"])
@pytest.mark.parametrize("mode", ["squish", "crop"])
def test_resizing_only_the_centre_gives_the_pixels_of_the_whole_resize(resample, mode):
    """At 224 px (resize 256, a power of two) only the centre the model sees is resized, and normalised through a
    lookup table: bit for bit the same input as the plain way, written out here with Pillow and numpy (resize the
    whole image, crop, then (x / 255 - mean) / std), whatever the image's size."""
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    pre = Preprocess.from_config({"resize": 256, "crop": 224, "resize_mode": mode, "resample": resample,
                                  "mean": mean, "std": std})
    rng = np.random.default_rng(0)
    sizes = [(500, 375), (504, 378), (4032 // 8, 3024 // 8), (256, 256), (100, 80), (257, 1000), (3001, 231)]
    sizes += [tuple(int(v) for v in rng.integers(60, 2500, 2)) for _ in range(25)]
    for w, h in sizes:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        if mode == "crop":
            side = min(w, h)
            img_sq = img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
        else:
            img_sq = img
        whole = np.asarray(img_sq.resize((256, 256), Image.Resampling[resample.upper()]), dtype=np.float32)
        whole = whole[16:240, 16:240].transpose(2, 0, 1)
        ref = (whole / np.float32(255) - np.float32(mean).reshape(3, 1, 1)) / np.float32(std).reshape(3, 1, 1)
        np.testing.assert_array_equal(pre(img), ref, err_msg=f"{w}x{h}")


@pytest.mark.parametrize("resize, crop, size", [(256, 225, (3, 74567)), (256, 225, (74567, 3)),
                                                (512, 449, (65537, 2))])
def test_the_whole_image_is_resized_where_float32_would_round_the_centre_box(resize, crop, size):
    """Widths where the centre box's ends fit float32 but its width does not: Pillow would place the filter a
    hair off and some pixels would come out a level off, so these take the whole-image path."""
    pre = Preprocess.from_config({"resize": resize, "crop": crop, "resample": "bicubic",
                                  "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
    w, h = size
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
    margin = (resize - crop) // 2
    whole = np.asarray(img.resize((resize, resize), Image.Resampling.BICUBIC), dtype=np.float32)
    whole = whole[margin:margin + crop, margin:margin + crop].transpose(2, 0, 1)
    np.testing.assert_array_equal(pre(img), (whole / np.float32(255) - np.float32(0.5)) / np.float32(0.25))


def test_large_jpegs_decode_at_reduced_scale_small_ones_do_not(clf, tmp_path):
    big = draw_shape("square", random.Random(3), side=1200)
    big.save(tmp_path / "big.jpg", quality=92)
    x = clf.preprocess(tmp_path / "big.jpg")
    with Image.open(tmp_path / "big.jpg") as img:
        full = clf.preprocess(img.convert("RGB"))  # an already decoded image: the whole 1200px
    assert x.shape == full.shape
    assert not np.array_equal(x, full)  # 1200px decoded at 1/8 scale (150px, still >= 80)...
    assert np.abs(x - full).mean() < 0.05  # ...and it barely shows after the resize to 80
    assert np.abs(x - full).max() < 4 / 255 / 0.224  # not one input value off by 4 levels or more


def test_exif_orientation_is_applied(clf, tmp_path):
    img = draw_shape("triangle", random.Random(5))
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180 degrees
    img.rotate(180).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    img.save(tmp_path / "upright.jpg", quality=95)
    np.testing.assert_allclose(clf.preprocess(tmp_path / "rotated.jpg"), clf.preprocess(tmp_path / "upright.jpg"),
                               atol=0.5)  # JPEG noise only; a wrong orientation would differ by far more


@pytest.mark.parametrize("logits", [[0.0, 0.0, 0.0], [1000.0, 0.0, -1000.0], [-3.5, 2.25, 7.0]])
def test_softmax_is_stable_and_sums_to_one(logits):
    p = softmax(np.array([logits], dtype=np.float32))
    assert np.isfinite(p).all() and p.sum() == pytest.approx(1, abs=1e-12)
    assert p.argmax() == int(np.argmax(logits))


def _copy(src: Path, dst: Path, *names: str) -> Path:
    dst.mkdir()
    for name in names:
        shutil.copyfile(src / name, dst / name)
    return dst


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")  # preprocess__crop edits config["preprocess"]["crop"]
        if field:
            config[section][field] = value
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("names, edit, words", [
    ((), None, "no model folder"),
    (("export.pkl",), None, "python -m training convert"),
    (("model.onnx",), None, "no config.json"),
    (("config.json",), None, "no model.onnx"),
    (("model.onnx", "config.json"), lambda f: (f / "config.json").write_text("{labels:"), "not valid JSON"),
    (("model.onnx", "config.json"), lambda f: (f / "model.onnx").write_bytes(b"not onnx"), "onnxruntime can"),
    (("model.onnx", "config.json"), lambda f: _edit_config(f, labels=["circle", "square"]), "outputs 3 scores"),
    (("model.onnx", "config.json"), lambda f: _edit_config(f, labels=["a", "a", "b"]), "distinct"),
    (("model.onnx", "config.json"), lambda f: _edit_config(f, preprocess__crop=32), "[N, 3, 32, 32]"),
    (("model.onnx", "config.json"), lambda f: _edit_config(f, preprocess__resize_mode="pad"), "resize_mode"),
    (("model.onnx", "config.json"), lambda f: _edit_config(f, format_version=2), "format_version 2"),
])
def test_broken_folders_raise_model_folder_error(tiny_model, tmp_path, names, edit, words):
    folder = _copy(tiny_model.folder, tmp_path / "m", *names) if names else tmp_path / "missing"
    if edit:
        edit(folder)
    with pytest.raises(ModelFolderError) as err:
        Classifier.from_folder(folder)
    assert words in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("names, precision, message", [
    ((), "float32", "no model folder at {folder}; run `python -m training train` to make one"),
    (("config.json",), "float32",
     "{folder} has no model.onnx; run `python -m training train` to write a complete model folder"),
    (("config.json", "model.onnx"), "int8", "{folder} has no model.int8.onnx; `python -m training train` (or `convert "
                                            "--data`) writes it, or serve model.onnx with SERVE_PRECISION=float32"),
    (("model.int8.onnx",), "int8",
     "{folder} has no config.json; run `python -m training train` to write a complete model folder"),
    (("export.pkl",), "float32", "{folder} has no model.onnx or config.json; run `python -m training convert "
                                 "{folder}/export.pkl --out {folder}` to write model.onnx and config.json"),
])
def test_a_folder_missing_a_file_says_which_and_how_to_make_it(tiny_model, tmp_path, names, precision, message):
    folder = _copy(tiny_model.folder, tmp_path / "m", *names) if names else tmp_path / "m"
    with pytest.raises(ModelFolderError) as err:
        Classifier.from_folder(folder, precision=precision)
    assert str(err.value) == message.format(folder=folder)


@pytest.mark.parametrize("edit, message", [
    (lambda config: "{labels:", "{path} is not valid JSON (Expecting property name enclosed in double quotes: line 1 "
                                "column 2 (char 1)); re-export the model folder"),
    (lambda config: {**config, "format_version": 99}, "{path} has format_version 99, this app reads {version}; "
                                                      "re-export the model folder with this version of the project"),
    (lambda config: [config], "{path} has format_version 'list', this app reads {version}; re-export the model "
                              "folder with this version of the project"),
    (lambda config: {**config, "labels": ["a", "a"]}, "{path}: `labels` must be a non-empty list of distinct strings, "
                                                      "got ['a', 'a']; re-export the model folder"),
    (lambda config: {k: v for k, v in config.items() if k != "preprocess"},
     "{path} has no `preprocess` section; re-export the model folder"),
])
def test_a_bad_config_json_is_named_by_its_path_with_what_to_do(tiny_model, tmp_path, edit, message):
    folder = _copy(tiny_model.folder, tmp_path / "m", "model.onnx", "config.json")
    config = json.loads((folder / "config.json").read_text())
    edited = edit(config)
    (folder / "config.json").write_text(edited if isinstance(edited, str) else json.dumps(edited))
    with pytest.raises(ModelFolderError) as err:
        Classifier.from_folder(folder)
    assert str(err.value) == message.format(path=folder / "config.json", version=config["format_version"])


def test_a_model_whose_input_disagrees_with_config_is_named_by_its_path(tiny_model, tmp_path):
    folder = _copy(tiny_model.folder, tmp_path / "m", "model.onnx", "config.json")
    _edit_config(folder, preprocess__crop=32)
    with pytest.raises(ModelFolderError) as err:
        Classifier.from_folder(folder)
    assert str(err.value).startswith(f"{folder / 'model.onnx'} takes input of shape ")


def test_a_classifier_made_from_a_session_alone_is_float32_and_calls_its_model_model_onnx(tiny_model):
    """Classifier(session, config) without a folder: no novelty check, and errors name the file as model.onnx."""
    session, config = _bare_session_and_config(tiny_model.folder)
    clf = Classifier(session, config)
    assert (clf.precision, clf.novelty, clf.folder) == ("float32", None, None)
    config["preprocess"]["crop"] = 32
    with pytest.raises(ModelFolderError) as err:
        Classifier(session, config)
    assert str(err.value) == ("model.onnx takes input of shape ['batch', 3, 64, 64], but config.json says [N, 3, 32, "
                              "32]; the two files come from different exports, re-export the model folder")


def test_a_model_whose_scores_disagree_with_its_labels_is_named_by_its_path(tiny_model, tmp_path):
    folder = _copy(tiny_model.folder, tmp_path / "m", "model.onnx", "config.json")
    _edit_config(folder, labels=["circle", "square"])
    with pytest.raises(ModelFolderError) as err:
        Classifier.from_folder(folder)
    assert str(err.value) == (f"{folder / 'model.onnx'} outputs 3 scores but config.json lists 2 labels; the two files "
                              "come from different models, re-export the model folder")


def test_a_model_onnxruntime_cannot_load_says_how_to_write_it_again(tiny_model, tmp_path):
    folder = _copy(tiny_model.folder, tmp_path / "m", "config.json")
    (folder / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelFolderError) as err:
        Classifier.from_folder(folder)
    assert str(err.value).startswith(f"{folder / 'model.onnx'} is not a model onnxruntime can load (")
    assert str(err.value).endswith("); re-export the model folder with `python -m training train` or `python -m "
                                   "training convert`")


def test_a_check_that_does_not_fit_a_classifier_without_a_folder_names_the_file_alone(tiny_model, caplog):
    from serving.novelty import NoveltyCheck

    session, config = _bare_session_and_config(tiny_model.folder)
    clf = Classifier(session, config, novelty=NoveltyCheck(bank=np.eye(3, 7, dtype=np.float32), k=1, threshold=0.5))
    assert clf.novelty is None
    assert [r.getMessage() for r in caplog.records if r.name == "serving.model"] == [
        f"serving without the 'none of these' check: {FEATURES_FILE} holds features of 7 values, but model.onnx "
        "outputs 512; the two come from different models (retrain, or delete config.json's `novelty` section)"]


def test_read_config_checks_for_model_onnx_unless_told_otherwise(tiny_model, tmp_path):
    """What publish, deploy and review call: config.json of a folder that holds model.onnx."""
    from serving.model import read_config
    assert read_config(tiny_model.folder) == json.loads((tiny_model.folder / "config.json").read_text())
    folder = _copy(tiny_model.folder, tmp_path / "m", "config.json", "model.int8.onnx")
    assert read_config(folder, "model.int8.onnx")["labels"] == ["circle", "square", "triangle"]
    with pytest.raises(ModelFolderError, match="has no model.onnx"):
        read_config(folder)


def test_labels_in_any_script_load_whatever_the_machines_locale(tiny_model, tmp_path):
    """config.json is UTF-8 (JSON's own encoding): read as such under an ASCII locale too (a C locale, uncoerced)."""
    folder = _copy(tiny_model.folder, tmp_path / "m", "model.onnx", "config.json")
    config = json.loads((folder / "config.json").read_text())
    config["labels"] = ["cercle", "carré", "三角形"]
    # As a text editor saves it (export itself escapes every label to ASCII).
    (folder / "config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    assert "carré".encode() in (folder / "config.json").read_bytes()
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    code = ("import json, locale, sys; from serving.model import Classifier; "
            "print(locale.getpreferredencoding(False)); "
            "print(json.dumps(Classifier.from_folder(sys.argv[1]).labels))")
    run = subprocess.run([sys.executable, "-c", code, str(folder)], cwd=REPO, env=env, capture_output=True, text=True,
                         encoding="utf-8")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["ANSI_X3.4-1968", json.dumps(["cercle", "carré", "三角形"])]


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_the_classifier_says_which_model_it_runs_and_uses_its_threshold(tiny_model, precision):
    clf = Classifier.from_folder(tiny_model.folder, precision=precision)
    section = json.loads((tiny_model.folder / "config.json").read_text())["novelty"]
    assert clf.precision == precision
    assert clf.novelty.threshold == (section["threshold"] if precision == "float32" else section["int8"]["threshold"])


@pytest.mark.parametrize("cached", [False, True], ids=["optimized_in_memory", "optimized_copy"])
def test_the_session_uses_every_core_it_may_one_request_at_a_time_without_spinning(tiny_model, tmp_path, cached):
    """The settings bench/app.py measured: the convolutions get every core this process may use (its affinity,
    not the machine's count), one inter-op thread, pool threads that sleep rather than spin; every graph
    optimisation in memory, none on the cached copy, which is optimised already."""
    clf = Classifier.from_folder(tiny_model.folder, cache_dir=tmp_path if cached else None)
    options = clf.session.get_session_options()
    assert options.intra_op_num_threads == len(os.sched_getaffinity(0))
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.graph_optimization_level == (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if cached
                                                else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    assert list(tmp_path.glob("*.onnx")) if cached else not list(tmp_path.iterdir())


def test_without_a_cpu_affinity_the_session_uses_every_cpu(monkeypatch):
    """macOS and Windows have no os.sched_getaffinity: every CPU the machine has."""
    monkeypatch.delattr(os, "sched_getaffinity")
    assert model._cpu_count() == os.cpu_count()


def test_loading_says_what_serves_in_one_line(tiny_model, caplog):
    caplog.set_level(logging.INFO, logger="serving.model")
    Classifier.from_folder(tiny_model.folder)
    config = json.loads((tiny_model.folder / "config.json").read_text())
    bank = np.load(tiny_model.folder / FEATURES_FILE)
    assert [r.getMessage() for r in caplog.records if r.name == "serving.model"] == [
        f"loaded {tiny_model.folder / 'model.onnx'}: {len(config['labels'])} labels, "
        f"{config['preprocess']['crop']}px input, float32, novelty check over {len(bank):,} training images"]


def test_a_model_without_a_features_output_serves_without_the_check_and_says_why(tiny_model, tmp_path, caplog):
    """An older model.onnx has the logits only: the folder's features file can't be matched to it."""
    import onnx

    folder = _copy(tiny_model.folder, tmp_path / "m", "config.json", FEATURES_FILE)
    logits_only = onnx.load(tiny_model.folder / "model.onnx")
    assert [o.name for o in logits_only.graph.output] == ["logits", "features"]
    del logits_only.graph.output[1]
    onnx.save(logits_only, folder / "model.onnx")
    caplog.set_level(logging.INFO, logger="serving.model")
    clf = Classifier.from_folder(folder)
    example = sorted((tiny_model.folder / "examples").glob("*"))[0]
    assert clf.novelty is None and clf.judge(example).in_domain is None
    width = np.load(folder / FEATURES_FILE).shape[1]
    assert [r.getMessage() for r in caplog.records if r.name == "serving.model"] == [
        f"serving without the 'none of these' check: {folder / FEATURES_FILE} holds features of {width} values, "
        "but model.onnx has no features output; the two come from different models (retrain, or delete "
        "config.json's `novelty` section)",
        f"loaded {folder / 'model.onnx'}: 3 labels, 64px input, float32, no novelty check"]


def _bare_session_and_config(folder: Path) -> tuple[ort.InferenceSession, dict]:
    """The folder's model.onnx opened by onnxruntime directly, and its config.json: a Classifier's own parts."""
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return session, json.loads((folder / "config.json").read_text())


def _spec(**changes) -> dict:
    """A usable `preprocess` section with `changes`; a change to None drops the key."""
    spec = {"resize": 256, "crop": 224, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], **changes}
    return {key: value for key, value in spec.items() if value is not None}


def test_preprocess_defaults_are_squish_bilinear_centre():
    pre = Preprocess.from_config(_spec())
    assert (pre.resize, pre.resize_mode, pre.resample, pre.crop) == (256, "squish", Image.Resampling.BILINEAR, 224)
    assert pre.mean.shape == pre.std.shape == (3, 1, 1) and pre.mean.dtype == pre.std.dtype == np.float32
    assert pre.shrink_to == (256, 256)


@pytest.mark.parametrize("crop", [1, 256])
def test_a_crop_from_one_pixel_to_the_resize_is_usable(crop):
    assert Preprocess.from_config(_spec(crop=crop, crop_mode="centre")).crop == crop


@pytest.mark.parametrize("changes, problems", [
    ({"resize_mode": "pad"}, "resize_mode 'pad' is not one of ('squish', 'crop')"),
    ({"resample": "box"}, "resample 'box' is not one of ('bilinear', 'bicubic', 'nearest', 'lanczos')"),
    ({"crop": 257}, "crop 257 is not between 1 and resize 256"),
    ({"crop": 0}, "crop 0 is not between 1 and resize 256"),
    ({"crop_mode": "random"}, "crop_mode 'random' is not 'centre'"),
    ({"std": [0.25, 0.0, 0.25]}, "std has a zero"),
    ({"resize_mode": "pad", "std": [0, 0, 0]}, "resize_mode 'pad' is not one of ('squish', 'crop'); std has a zero"),
])
def test_an_unusable_preprocess_section_names_every_problem(changes, problems):
    with pytest.raises(ModelFolderError) as err:
        Preprocess.from_config(_spec(**changes))
    assert str(err.value) == "config.json `preprocess` is unusable: " + problems


@pytest.mark.parametrize("changes, cause", [
    ({"crop": None}, "KeyError('crop')"), ({"resize": None}, "KeyError('resize')"),
    ({"mean": None}, "KeyError('mean')"), ({"std": None}, "KeyError('std')"),
    ({"resize": "big"}, "ValueError(\"invalid literal for int() with base 10: 'big'\")"),
    ({"crop": [224]},
     "TypeError(\"int() argument must be a string, a bytes-like object or a real number, not 'list'\")"),
    ({"mean": [0.5, 0.5]}, "ValueError('cannot reshape array of size 2 into shape (3,1,1)')"),
    ({"std": [0.25] * 4}, "ValueError('cannot reshape array of size 4 into shape (3,1,1)')"),
])
def test_an_incomplete_preprocess_section_says_what_it_needs(changes, cause):
    with pytest.raises(ModelFolderError) as err:
        Preprocess.from_config(_spec(**changes))
    assert str(err.value) == (f"config.json `preprocess` is incomplete or malformed ({cause}); it needs resize, crop, "
                              "mean and std (3 numbers each); re-export the model folder")


def test_softmax_is_taken_row_by_row():
    """Rows a thousand apart: each row's own maximum keeps both finite. By hand: e^0 : e^ln3 = 1 : 3."""
    logits = np.array([[1000.0, 1000.0 + np.log(3.0)], [-1000.0 + np.log(4.0), -1000.0]])
    np.testing.assert_allclose(softmax(logits), [[0.25, 0.75], [0.8, 0.2]], rtol=1e-12)


def test_the_centre_box_is_exact_only_where_float32_holds_it():
    """By hand: 16/256 and 240/256 of 500 and 375 are 31.25, 23.4375, 468.75, 351.5625, all exact in binary; 224/256
    of each is the width. A resize that is not a power of two has no exact box."""
    from serving.model import _exact_box
    assert _exact_box((500, 375), 256, 16, 224) == (31.25, 23.4375, 468.75, 351.5625)
    assert _exact_box((500, 375), 384, 16, 352) is None
    assert _exact_box((3, 74567), 256, 15, 225) is None  # 225 * 74567 / 256 needs more than float32's 24 bits
