"""Write the model folder the app reads: export.pkl, model.onnx, config.json and examples/.

Runs as the last step of `python -m training train --data data/bears --out models/bears`; the shared
pieces (`write_folder`) also serve `python -m training convert export.pkl --out DIR`. The folder contract is
in DESIGN.md and its reader is serving/model.py; config.json's `preprocess` is read from the learner's own
transforms, so the app prepares images with exactly the numbers fastai used.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import platform
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from fastai.data.transforms import IntToFloatTensor, Normalize
from fastai.vision.augment import RandomResizedCrop, Resize, ResizeMethod

from serving.model import FORMAT_VERSION, MODEL_FILES, RESAMPLE, Classifier, ModelFolderError
from serving.novelty import FEATURES_FILE
from serving.ort_cache import ORT_ERRORS
from training.errors import StageError

log = logging.getLogger(__name__)

RESAMPLE_NAMES = {mode: name for name, mode in RESAMPLE.items()}  # the filter's name in config.json
EXAMPLES_PER_LABEL = 2


def export(learn, out: Path, *, info: dict, examples: dict[str, list[Path]]) -> Path:
    """Write the whole model folder for a freshly trained learner; `info` fills config.json's other fields."""
    out.mkdir(parents=True, exist_ok=True)
    learn.export(out.resolve() / "export.pkl")  # absolute: fastai puts a relative name under learn.path
    write_folder(learn, out, info)
    write_examples(out / "examples", examples)
    return out


def write_folder(learn, out: Path, info: dict, size: int | None = None) -> dict:
    """Write model.onnx and config.json for `learn`, check them with the app's loader, return the config."""
    out.mkdir(parents=True, exist_ok=True)
    spec = preprocess_spec(learn, size)
    write_onnx(learn.model, out / "model.onnx", spec["crop"])
    config = {"format_version": FORMAT_VERSION, "labels": [str(v) for v in learn.dls.vocab],
              "input_size": spec["crop"], "preprocess": spec, **info, "versions": library_versions()}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for stale in (FEATURES_FILE, MODEL_FILES["int8"]):  # an earlier model's: added after this, or not at all
        (out / stale).unlink(missing_ok=True)
    _check_folder(learn.model, out)
    log.info("model.onnx (%.1f MB) agrees with the torch model; config.json lists %d labels",
             (out / "model.onnx").stat().st_size / 1e6, len(config["labels"]))
    return config


def preprocess_spec(learn, size: int | None = None) -> dict:
    """config.json's `preprocess`: fastai's validation resize, crop and normalisation for this learner."""
    resize, mode, crop, resample = resize_rule(list(learn.dls.after_item.fs), size)
    mean, std = _norm_stats(list(learn.dls.after_batch.fs))
    return {"resize": resize, "resize_mode": mode, "resample": resample, "crop": crop, "crop_mode": "centre",
            "mean": mean, "std": std}


def resize_rule(tfms: list, size: int | None) -> tuple[int, str, int, str]:
    """(resize, resize_mode, crop, resample) of the item transform that sets the image size."""
    for t in tfms:
        if isinstance(t, RandomResizedCrop):
            s = size or _square(t.size)
            # fastai's validation: squish the whole image to size + xtra, then centre-crop size.
            xtra = math.ceil(s * t.val_xtra / 8) * 8
            return s + xtra, "squish", s, _resample(t.mode)
        if isinstance(t, Resize):
            s = size or _square(t.size)
            if t.method == ResizeMethod.Pad:
                raise StageError("the learner uses Resize(method='pad'), which the app does not reproduce; "
                                 "retrain with method='squish' or 'crop', or with `python -m training train`")
            return s, "squish" if t.method == ResizeMethod.Squish else "crop", s, _resample(t.mode)
    if size is None:
        raise StageError("the learner has no Resize or RandomResizedCrop item transform, so its input size is "
                         "unknown; pass the size it was trained at with --size")
    log.warning("no Resize/RandomResizedCrop in the learner's item transforms; assuming a squish to %dpx", size)
    return size, "squish", size, "bilinear"


def _square(size) -> int:
    w, h = size
    if w != h:
        raise StageError(f"the learner resizes to {w}x{h}; the model folder supports square inputs only, "
                         "pass --size to choose one side")
    return int(w)


def _resample(mode) -> str:
    if mode not in RESAMPLE_NAMES:
        raise StageError(f"the learner resizes with Pillow filter {mode!r}, which the app does not know; "
                         f"use one of {sorted(RESAMPLE_NAMES.values())}")
    return RESAMPLE_NAMES[mode]


def _norm_stats(tfms: list) -> tuple[list[float], list[float]]:
    """Mean and std of the learner's Normalize, as the float32 numbers it computes with."""
    for t in tfms:
        if isinstance(t, IntToFloatTensor) and float(t.div) != 255.0:
            raise StageError(f"the learner divides pixels by {t.div}, not 255; the app cannot reproduce that")
    norms = [t for t in tfms if isinstance(t, Normalize)]
    if not norms:
        # vision_learner adds no Normalize when pretrained=False and none was given: pixels stay in 0..1.
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    mean = norms[0].mean.detach().float().cpu().flatten().tolist()
    std = norms[0].std.detach().float().cpu().flatten().tolist()
    if len(mean) != 3 or len(std) != 3:
        raise StageError(f"the learner's Normalize has {len(mean)} means and {len(std)} standard deviations; the app "
                         "serves RGB images, which need 3 of each")
    return mean, std


class LogitsAndFeatures(torch.nn.Module):
    """A model's logits, and the features its last linear layer reads from them (serving/novelty.py's input).

    The last nn.Linear is taken out of a copy of the model and applied to what the rest outputs: the same logits
    for any model that ends in it (fastai's heads, torchvision's and timm's classifiers). _check_folder compares
    the logits with the model's own, so a model that doesn't end in its last Linear can't pass unnoticed.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.body = copy.deepcopy(model)
        name = _last_linear(self.body)
        self.linear = self.body.get_submodule(name)
        parent, _, attr = name.rpartition(".")
        setattr(self.body.get_submodule(parent) if parent else self.body, attr, torch.nn.Identity())

    def forward(self, x):
        features = self.body(x)
        return self.linear(features), features


def _last_linear(model: torch.nn.Module) -> str:
    names = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if not names:
        raise StageError("the model has no linear layer to read features before; the app needs a classifier "
                         "that ends in one (every fastai vision_learner and timm model does)")
    return names[-1]


def write_onnx(model: torch.nn.Module, path: Path, size: int) -> None:
    """Export `model` in eval mode on CPU, float32, to ONNX: input `input` [N,3,S,S], outputs `logits` [N,C]
    and `features` [N,D] (what the last linear layer reads)."""
    # A copy, so the learner keeps its device, precision and train/eval mode.
    model = LogitsAndFeatures(model).float().cpu().eval()
    sample = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings(), torch.no_grad(), _quiet("onnxscript", "onnx_ir"):
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter says nothing about this model
        torch.onnx.export(model, (sample,), str(path), input_names=["input"], output_names=["logits", "features"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}},
                          dynamo=True, external_data=False, verbose=False)


@contextlib.contextmanager
def _quiet(*names: str):
    """Hold the exporter's optimiser passes to warnings: it logs every pass at INFO."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _check_folder(model: torch.nn.Module, out: Path) -> None:
    """Load the folder with the app's Classifier and check the ONNX logits match torch's on the same input.

    With no cache folder: an optimized copy kept now would be keyed to the staging folder `train` writes into,
    which is moved into place afterwards.
    """
    try:
        clf = Classifier.from_folder(out, cache_dir=None)
    except ModelFolderError as exc:
        if isinstance(exc.__cause__, ORT_ERRORS):
            raise StageError(f"the model.onnx just written does not load in onnxruntime ({exc.__cause__}); if the "
                             f"disk is full, free some space and run again; else torch {torch.__version__} may have "
                             "exported it wrongly: try another torch version") from exc
        raise StageError(f"the model folder just written does not load: {exc}") from exc
    x = np.random.default_rng(0).standard_normal((3, 3, clf.input_size, clf.input_size)).astype(np.float32)
    got, got_features = clf.session.run(["logits", "features"], {"input": x})
    with torch.no_grad():
        want = copy.deepcopy(model).float().cpu().eval()(torch.from_numpy(x)).numpy()
        want_features = LogitsAndFeatures(model).float().cpu().eval()(torch.from_numpy(x))[1].numpy()
    for name, a, b in (("logits", got, want), ("features", got_features, want_features)):
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-3, atol=1e-3):
            difference = f"max difference {np.abs(a - b).max():.2g}" if a.shape == b.shape else \
                f"shape {a.shape} against {b.shape}"
            raise StageError(f"model.onnx's {name} disagree with the torch model ({difference}); torch "
                             f"{torch.__version__} may have exported it wrongly, try another torch version")


def write_examples(folder: Path, examples: dict[str, list[Path]]) -> None:
    """Copy the chosen images to folder/<label>_<n>.jpg, replacing any earlier examples."""
    if folder.exists():
        shutil.rmtree(folder)  # a rerun must not leave a previous model's examples behind
    folder.mkdir(parents=True)
    for label, files in examples.items():
        if not files:
            log.warning("no correctly classified validation image of '%s' to use as an example", label)
        for n, src in enumerate(files, start=1):
            shutil.copyfile(src, folder / f"{label}_{n}.jpg")


def library_versions() -> dict[str, str]:
    """The versions that made the model: loading export.pkl elsewhere needs the same ones."""
    import fastai
    import fastcore
    import torchvision
    return {"python": platform.python_version(), "fastai": fastai.__version__, "fastcore": fastcore.__version__,
            "torch": torch.__version__, "torchvision": torchvision.__version__}
