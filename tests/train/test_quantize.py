"""Tests for training/train/quantize.py: model.int8.onnx, its check against model.onnx, and the guard."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastai.learner import load_learner

from serving.model import Classifier
from training.train.quantize import int8_markdown, int8_verdict
from training.train.stage import build_dataloaders


@pytest.fixture(scope="module")
def config(tiny_model):
    return json.loads((tiny_model.folder / "config.json").read_text())


@pytest.fixture(scope="module")
def valid_items(tiny_model):
    return list(build_dataloaders(tiny_model.cfg, tiny_model.data / "images").valid_ds.items)


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_train_writes_an_int8_model_a_quarter_the_size_with_both_outputs(tiny_model):
    folder = tiny_model.folder
    model = onnx.load(str(folder / "model.int8.onnx"))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ: runs on any onnxruntime
    weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(weights) >= 20  # every convolution's weights are int8 (resnet18 has 20 convolutions)
    assert [o.name for o in _session(folder / "model.int8.onnx").get_outputs()] == ["logits", "features"]
    assert (folder / "model.int8.onnx").stat().st_size < (folder / "model.onnx").stat().st_size / 3


def test_the_check_is_measured_on_every_validation_image(tiny_model, config, valid_items):
    """The figures in config.json, recomputed here with onnxruntime directly on the validation split fastai draws."""
    section = config["int8"]
    clf = Classifier.from_folder(tiny_model.folder, cache_dir=None)
    x = np.stack([clf.preprocess(p) for p in valid_items])
    logits_float = _session(tiny_model.folder / "model.onnx").run(["logits"], {"input": x})[0]
    logits_int8 = _session(tiny_model.folder / "model.int8.onnx").run(["logits"], {"input": x})[0]
    targets = np.array([clf.labels.index(p.parent.name) for p in valid_items])
    assert section["valid_images"] == len(valid_items) == 12
    assert section["agreement"] == pytest.approx(np.mean(logits_float.argmax(1) == logits_int8.argmax(1)))
    assert section["error_rate_float32"] == pytest.approx(np.mean(logits_float.argmax(1) != targets))
    assert section["error_rate_int8"] == pytest.approx(np.mean(logits_int8.argmax(1) != targets))
    # The float model's own error rate is the one evaluate measured through fastai.
    assert section["error_rate_float32"] == pytest.approx(config["metrics"]["error_rate"])

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    assert section["max_prob_diff"] == pytest.approx(np.abs(softmax(logits_float) - softmax(logits_int8)).max(),
                                                     abs=1e-6)
    assert 0 < section["max_prob_diff"] < 0.2  # quantized, so not identical; close, so not broken
    assert section["calibration_images"] == 32 and section["min_agreement"] == 0.99
    assert section["serve"] is True and "100.0% of 12 validation images" in section["reason"]


def test_the_int8_model_answers_as_learn_predict_does_within_the_guard(tiny_model, valid_items):
    """The parity test of the float path (tests/train/test_export.py), for int8 within the guard's tolerances: the
    top label of learn.predict on at least 99% of the validation images (here: all of them), and an error rate at
    most half a point higher."""
    learn = load_learner(tiny_model.folder / "export.pkl")
    int8 = Classifier.from_folder(tiny_model.folder, cache_dir=None, precision="int8")
    assert int8.precision == "int8"
    with learn.no_bar():
        want = [learn.predict(p)[0] for p in valid_items]
    got = [max(probs, key=probs.get) for probs in int8.classify_batch(valid_items)]
    assert np.mean([g == w for g, w in zip(got, want)]) >= 0.99
    truth = [p.parent.name for p in valid_items]
    error = np.mean([g != t for g, t in zip(got, truth)])
    assert error <= np.mean([w != t for w, t in zip(want, truth)]) + 0.005


def test_the_report_and_metrics_say_what_the_check_found(tiny_model, config):
    report = (tiny_model.folder / "report" / "report.md").read_text()
    assert "## Int8 model" in report and config["int8"]["reason"] in report and "**It may serve**" in report
    metrics = json.loads((tiny_model.folder / "report" / "metrics.json").read_text())
    assert metrics["int8"] == config["int8"]


def test_the_none_of_these_check_has_a_threshold_for_the_int8_model(tiny_model, config):
    """Calibrated through the int8 model on the validation images, as the float one is through model.onnx."""
    section = config["novelty"]
    assert section["int8"]["valid_pass_rate"] >= section["target_pass_rate"]
    int8 = Classifier.from_folder(tiny_model.folder, cache_dir=None, precision="int8")
    assert int8.novelty is not None and int8.novelty.threshold == section["int8"]["threshold"]
    assert Classifier.from_folder(tiny_model.folder, cache_dir=None).novelty.threshold == section["threshold"]


@pytest.mark.parametrize("agreement, error_float, error_int8, serves", [
    (1.0, 0.10, 0.10, True),
    (0.99, 0.10, 0.10, True),  # exactly the limits pass
    (0.98, 0.10, 0.10, False),
    (1.0, 0.10, 0.105, True),
    (1.0, 0.10, 0.11, False),
    (1.0, 0.20, 0.10, True),  # better than float is fine
    (0.3, 0.2, 0.1, False),
])
def test_the_guard_needs_both_agreement_and_a_close_error_rate(agreement, error_float, error_int8, serves):
    section = {"valid_images": 200, "agreement": agreement, "error_rate_float32": error_float,
               "error_rate_int8": error_int8, "min_agreement": 0.99, "max_error_gap": 0.005}
    ok, reason = int8_verdict(section)
    assert ok is serves
    assert f"{agreement:.1%} of 200 validation images" in reason and f"{error_int8:.1%} against" in reason


def test_without_validation_images_the_int8_model_does_not_serve():
    ok, reason = int8_verdict({"valid_images": 0, "agreement": None, "error_rate_float32": None,
                               "error_rate_int8": None, "min_agreement": 0.99, "max_error_gap": 0.005})
    assert not ok and reason == "there was no validation image to check it on"


def test_a_refused_int8_model_is_reported_as_not_serving():
    section = {"valid_images": 10, "agreement": 0.9, "max_prob_diff": 0.4, "error_rate_float32": 0.1,
               "error_rate_int8": 0.2, "min_agreement": 0.99, "max_error_gap": 0.005, "calibration_images": 8}
    section["serve"], section["reason"] = int8_verdict(section)
    text = int8_markdown(section)
    assert "**It does not serve**" in text and "90.0% of 10 validation images" in text and "| 10.0% | 20.0% |" in text


def test_no_int8_flag_writes_none(tiny_model, tmp_path):
    """--no-int8: no model.int8.onnx, no `int8` section, and the report says the app serves model.onnx."""
    from training.train.stage import train

    folder = train(tiny_model.cfg.replace(out=tmp_path / "model", int8=False, epochs=1))
    config = json.loads((folder / "config.json").read_text())
    assert not (folder / "model.int8.onnx").exists() and "int8" not in config and "int8" not in config["novelty"]
    assert "This folder has no int8 model" in (folder / "report" / "report.md").read_text()
