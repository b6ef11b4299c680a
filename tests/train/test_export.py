"""Tests for training/train/export.py: the model folder contract (export.pkl, model.onnx, config.json, examples/)."""
from __future__ import annotations

import json
import logging
import platform

import fastai
import fastcore
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from fastai.learner import load_learner
from fastai.vision.augment import RandomResizedCrop, Resize
from fastai.vision.core import imagenet_stats
from PIL import Image

from serving.model import Classifier
from tests.tiny_model import PER_LABEL, SHAPES, SUMMARY
from training.errors import StageError
from training.train.export import resize_rule, write_examples
from training.train.stage import build_dataloaders


@pytest.fixture(scope="module")
def config(tiny_model):
    return json.loads((tiny_model.folder / "config.json").read_text())


@pytest.fixture(scope="module")
def learn(tiny_model):
    return load_learner(tiny_model.folder / "export.pkl")


@pytest.fixture(scope="module")
def valid_items(tiny_model):
    return list(build_dataloaders(tiny_model.cfg, tiny_model.data / "images").valid_ds.items)


def test_config_json_follows_the_contract(config, learn, tiny_model):
    assert config["format_version"] == 1
    assert config["labels"] == list(learn.dls.vocab) == sorted(SHAPES)
    assert config["input_size"] == 64
    # fastai's validation RandomResizedCrop: squish to size + ceil(size * 0.14 / 8) * 8, centre-crop size.
    assert {k: v for k, v in config["preprocess"].items() if k not in ("mean", "std")} == {
        "resize": 80, "resize_mode": "squish", "resample": "bilinear", "crop": 64, "crop_mode": "centre"}
    assert config["preprocess"]["mean"] == np.float32(imagenet_stats[0]).tolist()
    assert config["preprocess"]["std"] == np.float32(imagenet_stats[1]).tolist()
    assert config["arch"] == "resnet18" and config["pretrained"] is False and config["seed"] == 0
    assert config["training"]["epochs"] == tiny_model.cfg.epochs and config["training"]["lr"] == tiny_model.cfg.lr
    assert config["training"]["batch_size"] == 8 and config["training"]["valid_pct"] == 0.2


def test_config_json_records_versions_metrics_and_dataset(config, tiny_model):
    assert config["versions"] == {"python": platform.python_version(), "fastai": fastai.__version__,
                                  "fastcore": fastcore.__version__, "torch": torch.__version__,
                                  "torchvision": torchvision.__version__}
    metrics = json.loads((tiny_model.folder / "report" / "metrics.json").read_text())
    assert config["metrics"]["error_rate"] == metrics["error_rate"]
    assert config["metrics"]["per_class"] == metrics["per_class"]
    assert config["dataset"]["images_per_label"] == {label: PER_LABEL for label in sorted(SHAPES)}
    assert config["dataset"]["summary"] == SUMMARY  # the data stage's summary.json, verbatim
    assert config["dataset"]["train_images"] + config["dataset"]["valid_images"] == PER_LABEL * len(SHAPES)


def test_onnx_model_has_the_contract_signature(tiny_model):
    model = onnx.load(str(tiny_model.folder / "model.onnx"))
    onnx.checker.check_model(model)
    (inp,), (out, features) = model.graph.input, model.graph.output
    assert (inp.name, out.name, features.name) == ("input", "logits", "features")  # logits first: old clients
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims, out_dims, feature_dims = ([d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim]
                                       for t in (inp, out, features))
    assert isinstance(in_dims[0], str) and in_dims[1:] == [3, 64, 64]  # dynamic batch axis
    assert isinstance(out_dims[0], str) and out_dims[1:] == [3]
    assert isinstance(feature_dims[0], str) and feature_dims[1:] == [512]  # what resnet18's last Linear reads


def test_the_features_output_is_what_the_last_linear_layer_reads(tiny_model, learn, valid_items):
    """Checked with a forward hook on the learner's own last Linear, not with the export's wrapper."""
    clf = Classifier.from_folder(tiny_model.folder)
    x = np.stack([clf.preprocess(p) for p in valid_items[:4]])
    seen = []
    last = [m for m in learn.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    hook = last.register_forward_hook(lambda module, args, output: seen.append(args[0].detach().numpy()))
    try:
        with torch.no_grad():
            learn.model.eval()(torch.from_numpy(x))
    finally:
        hook.remove()
    assert np.allclose(clf.run(x)[1], seen[0], rtol=1e-3, atol=1e-3)


def test_onnx_path_matches_learn_predict_on_every_validation_image(tiny_model, learn, valid_items):
    clf = Classifier.from_folder(tiny_model.folder)
    for path in valid_items:
        label, _, probs = learn.predict(path)
        ours = clf.classify(path)
        assert list(ours) == list(learn.dls.vocab)
        np.testing.assert_allclose(list(ours.values()), probs.numpy(), atol=1e-4, err_msg=str(path))
        assert max(ours, key=ours.get) == label


def test_onnx_logits_match_torch_for_a_batch(tiny_model, learn):
    clf = Classifier.from_folder(tiny_model.folder)
    x = np.random.default_rng(1).standard_normal((5, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = learn.model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(clf.session.run(None, {"input": x})[0], want, rtol=1e-4, atol=1e-4)


def test_examples_are_correctly_classified_validation_images(tiny_model, learn, valid_items, config):
    examples = sorted((tiny_model.folder / "examples").iterdir())
    by_bytes = {p.read_bytes(): p for p in valid_items}
    right = {label: [p for p in valid_items if p.parent.name == label and learn.predict(p)[0] == label]
             for label in config["labels"]}
    for label, files in right.items():
        mine = [e for e in examples if e.name.rsplit("_", 1)[0] == label]
        assert len(mine) == min(2, len(files)), label
        assert [e.name for e in mine] == [f"{label}_{n}.jpg" for n in range(1, len(mine) + 1)]
        assert all(by_bytes[e.read_bytes()] in files for e in mine)  # a copy of a correct validation image
    assert len(examples) == sum(min(2, len(f)) for f in right.values()) > 0


def test_write_examples_replaces_earlier_ones(tmp_path):
    src = tmp_path / "a.jpg"
    Image.new("RGB", (8, 8)).save(src)
    write_examples(tmp_path / "examples", {"old": [src, src]})
    write_examples(tmp_path / "examples", {"grizzly bear": [src], "teddy": []})
    assert sorted(p.name for p in (tmp_path / "examples").iterdir()) == ["grizzly bear_1.jpg"]


@pytest.mark.parametrize("tfms, size, rule", [
    ([RandomResizedCrop(224, min_scale=0.5)], None, (256, "squish", 224, "bilinear")),
    ([RandomResizedCrop(64)], None, (80, "squish", 64, "bilinear")),
    ([RandomResizedCrop(192)], 224, (256, "squish", 224, "bilinear")),  # --size wins, xtra recomputed
    ([Resize(192, method="squish")], None, (192, "squish", 192, "bilinear")),  # lesson 2's bears
    ([Resize(192)], None, (192, "crop", 192, "bilinear")),  # fastai's default method is crop
    ([], 128, (128, "squish", 128, "bilinear")),
])
def test_resize_rule_table(tfms, size, rule):
    assert resize_rule(tfms, size) == rule


@pytest.mark.parametrize("tfms, size, words", [
    ([Resize(64, method="pad")], None, "method='pad'"),
    ([Resize((64, 48))], None, "square"),
    ([], None, "--size"),
])
def test_resize_rule_refuses_what_the_app_cannot_reproduce(tfms, size, words):
    with pytest.raises(StageError, match=words):
        resize_rule(tfms, size)


def test_resize_rule_says_how_to_retrain_a_padded_learner():
    with pytest.raises(StageError) as caught:
        resize_rule([Resize(64, method="pad")], None)
    assert str(caught.value) == ("the learner uses Resize(method='pad'), which the app does not reproduce; retrain "
                                 "with method='squish' or 'crop', or with `python -m training train`")


def test_resize_rule_without_a_resize_assumes_a_squish_to_the_size_given_and_says_so(caplog):
    assert resize_rule([], 64) == (64, "squish", 64, "bilinear")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "no Resize/RandomResizedCrop in the learner's item transforms; assuming a squish to 64px")]


@pytest.mark.parametrize("means, stds", [(3, 1), (1, 3), (1, 1)])
def test_a_normalize_that_is_not_for_three_channels_is_refused(means, stds):
    from fastai.data.transforms import Normalize

    from training.train.export import _norm_stats
    norm = Normalize(mean=torch.full((1, means, 1, 1), 0.5), std=torch.full((1, stds, 1, 1), 0.25))
    with pytest.raises(StageError) as caught:
        _norm_stats([norm])
    assert str(caught.value) == (f"the learner's Normalize has {means} means and {stds} standard deviations; the app "
                                 "serves RGB images, which need 3 of each")


def test_features_are_read_before_the_last_linear_layer():
    from training.train.export import _last_linear
    head = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    assert _last_linear(head) == "3"
    with pytest.raises(StageError) as caught:
        _last_linear(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()))
    assert str(caught.value) == ("the model has no linear layer to read features before; the app needs a classifier "
                                 "that ends in one (every fastai vision_learner and timm model does)")


def test_the_onnx_export_keeps_the_exporters_pass_by_pass_log_quiet(learn, tmp_path, caplog):
    """onnxscript logs each optimiser pass at INFO; a `train` run shows INFO lines, so they are held to warnings."""
    from training.train.export import write_onnx
    caplog.set_level(logging.INFO)
    write_onnx(learn.model, tmp_path / "model.onnx", 64)
    assert [r for r in caplog.records if r.name.split(".")[0] in ("onnxscript", "onnx_ir")] == []
    assert logging.getLogger("onnxscript").level == logging.NOTSET  # as it was before the export


def test_a_timm_arch_trains_exports_and_matches_learn_predict(tiny_model, tmp_path):
    """`--arch` takes timm names too: the same contract, and the ONNX path agrees with learn.predict."""
    from tests.tiny_model import tiny_config
    from training.train.stage import train

    cfg = tiny_config(tiny_model.data, tmp_path / "timm", arch="resnet10t", epochs=2)
    folder = train(cfg)
    config = json.loads((folder / "config.json").read_text())
    assert config["arch"] == "resnet10t"
    learn, clf = load_learner(folder / "export.pkl"), Classifier.from_folder(folder)
    for path in list(build_dataloaders(cfg, tiny_model.data / "images").valid_ds.items):
        label, _, probs = learn.predict(path)
        ours = clf.classify(path)
        np.testing.assert_allclose(list(ours.values()), probs.numpy(), atol=1e-4, err_msg=str(path))
        assert max(ours, key=ours.get) == label


def test_an_onnx_file_that_disagrees_with_the_torch_model_is_refused(learn, tiny_model, tmp_path):
    """The export's own check: the folder's model.onnx run against another model (the learner's, with its last
    layer's weights moved) must be refused, naming the torch version to change, not kept."""
    import copy
    import shutil

    from training.train.export import _check_folder
    for name in ("model.onnx", "config.json"):
        shutil.copyfile(tiny_model.folder / name, tmp_path / name)
    other = copy.deepcopy(learn.model)
    last = [m for m in other.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight += 0.5
    _check_folder(learn.model, tmp_path)  # the model it was exported from: agrees
    # The check's input, a seeded normal batch, run here through onnxruntime and torch directly.
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    onnx_logits = ort.InferenceSession(str(tmp_path / "model.onnx")).run(["logits"], {"input": x})[0]
    with torch.no_grad():
        torch_logits = other.eval()(torch.from_numpy(x)).numpy()
    difference = f"{np.abs(onnx_logits - torch_logits).max():.2g}"
    with pytest.raises(StageError) as caught:
        _check_folder(other, tmp_path)
    assert str(caught.value) == (f"model.onnx's logits disagree with the torch model (max difference {difference}); "
                                 f"torch {torch.__version__} may have exported it wrongly, try another torch version")
