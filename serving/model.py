"""Classify images with a model folder, using onnxruntime, numpy and Pillow only (never torch or fastai).

    from serving.model import Classifier
    clf = Classifier.from_folder("models/bears")
    clf.classify("grizzly.jpg")   # {"grizzly": 0.97, "black": 0.02, "teddy": 0.01}

The folder is what `python -m training train` (or `python -m training convert`) writes: `model.onnx` and
`config.json`. Every image goes through `serving.imaging.open_upright_rgb`, the same normalisation the clean
stage gave the training images, then through fastai's validation transform re-done in Pillow and numpy:
squish-resize the whole image to `resize` (bilinear), centre-crop `crop`, divide by 255, subtract mean and
divide by std. fastai's batch augmentations do nothing at validation (flip, warp, rotate and lighting draw
the identity), so there is nothing else to reproduce.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort
from PIL import Image

from serving.imaging import ImageSource, open_upright_rgb
from serving.novelty import FEATURES_FILE, NoveltyCheck, NoveltyError, Verdict
from serving.ort_cache import ORT_ERRORS, PROVIDERS, cached_session

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Names config.json may use for the resize filter; fastai's Resize and RandomResizedCrop use bilinear.
RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
            "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
# "squish": resize the whole image to resize x resize (fastai RandomResizedCrop and Resize(method="squish")).
# "crop": cut the largest centred square first, then resize (fastai Resize's default method="crop").
RESIZE_MODES = ("squish", "crop")
# model.onnx's second output: what its last linear layer reads (serving/novelty.py).
FEATURES_OUTPUT = "features"
# The model files a folder may hold, by precision: model.int8.onnx is model.onnx quantized (training/train/quantize.py),
# and config.json's `int8` section says whether it kept the float model's answers.
MODEL_FILES = {"float32": "model.onnx", "int8": "model.int8.onnx"}
CONVERT_HINT = "run `python -m training convert {pkl} --out {folder}` to write model.onnx and config.json"


class ModelFolderError(ValueError):
    """A model folder that breaks the contract (see DESIGN.md); the message says how to fix it."""


@dataclass(frozen=True)
class Preprocess:
    """How to turn an upright RGB image into the model's input, as config.json's `preprocess` says."""

    resize: int
    resize_mode: str
    resample: Image.Resampling
    crop: int
    mean: np.ndarray  # float32 [3, 1, 1]: the very numbers fastai's Normalize used
    std: np.ndarray

    def __post_init__(self):
        # Every uint8 value of every channel, normalised once with fastai's float32 arithmetic
        # ((v / 255 - mean) / std): a table lookup then gives the same bits several times faster.
        levels = np.arange(256, dtype=np.float32) / np.float32(255.0)
        object.__setattr__(self, "_table", (levels[None, :] - self.mean.reshape(3, 1)) / self.std.reshape(3, 1))

    @classmethod
    def from_config(cls, spec: dict) -> "Preprocess":
        """Read and check config.json's `preprocess` section; raise ModelFolderError if it is unusable."""
        try:
            resize, crop = int(spec["resize"]), int(spec["crop"])
            mode, resample = spec.get("resize_mode", "squish"), spec.get("resample", "bilinear")
            mean = np.asarray(spec["mean"], dtype=np.float32).reshape(3, 1, 1)
            std = np.asarray(spec["std"], dtype=np.float32).reshape(3, 1, 1)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFolderError(f"config.json `preprocess` is incomplete or malformed ({exc!r}); it needs resize, "
                                   "crop, mean and std (3 numbers each); re-export the model folder") from exc
        problems = [f"resize_mode {mode!r} is not one of {RESIZE_MODES}"] if mode not in RESIZE_MODES else []
        problems += [f"resample {resample!r} is not one of {tuple(RESAMPLE)}"] if resample not in RESAMPLE else []
        problems += [f"crop {crop} is not between 1 and resize {resize}"] if not 0 < crop <= resize else []
        crop_mode = spec.get("crop_mode", "centre")
        problems += [f"crop_mode {crop_mode!r} is not 'centre'"] if crop_mode != "centre" else []
        problems += ["std has a zero"] if not np.all(std) else []
        if problems:
            raise ModelFolderError("config.json `preprocess` is unusable: " + "; ".join(problems))
        return cls(resize, mode, RESAMPLE[resample], crop, mean, std)

    @property
    def shrink_to(self) -> tuple[int, int]:
        """The smallest size a large image may be decoded or reduced to: the resize still has something to shrink.

        A JPEG decoded at 1/2, 1/4 or 1/8 scale averages each block of pixels in the DCT, and other formats
        are box-reduced, so nothing aliases and the model's input stays within a few levels of 255 of a full
        decode; the smallest scale allowed is the fastest (bench/inference.py).
        """
        return (self.resize, self.resize)

    def __call__(self, img: Image.Image) -> np.ndarray:
        """Resize, centre-crop and normalise an upright RGB image into float32 [3, crop, crop]."""
        pixels = self._resized_centre(img)
        x = np.empty((3, self.crop, self.crop), dtype=np.float32)
        for c in range(3):
            np.take(self._table[c], pixels[..., c], out=x[c])
        return x

    def _resized_centre(self, img: Image.Image) -> np.ndarray:
        """uint8 [crop, crop, 3]: the centre crop of `img` resized to resize x resize."""
        if self.resize_mode == "crop":
            img = img.crop(_centre_square(*img.size, self.resize))
        margin = (self.resize - self.crop) // 2  # fastai's centre crop: (size - crop) // 2
        box = _exact_box(img.size, self.resize, margin, self.crop)
        if box and self.resample != Image.Resampling.NEAREST:
            return np.asarray(img.resize((self.crop, self.crop), self.resample, box=box))
        full = np.asarray(img.resize((self.resize, self.resize), self.resample))
        return full[margin:margin + self.crop, margin:margin + self.crop]


def _exact_box(size: tuple[int, int], resize: int, margin: int, crop: int) -> tuple[float, ...] | None:
    """The box of `size` whose resize to crop x crop gives exactly the centre of the whole resize, or None.

    Resizing only the centre the model sees skips the margin the crop drops (a quarter of the pixels at 224 of 256).
    Pillow places each output pixel's filter at box_start + (i + 0.5) * box_width / out_size, in float32
    box coordinates and double arithmetic. That equals the whole resize's (i + margin + 0.5) * width / resize
    bit for bit when width / resize is exact in binary: resize a power of two (the default 256), and box
    ends and widths (Pillow subtracts the ends in float32 too) that float32 holds exactly. Otherwise None:
    resize the whole image and crop.
    """
    if resize & (resize - 1):
        return None
    (w, h), end = size, margin + crop
    box = (margin * w / resize, margin * h / resize, end * w / resize, end * h / resize)
    widths = (crop * w / resize, crop * h / resize)
    return box if all(float(np.float32(v)) == v for v in box + widths) else None


def _centre_square(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """The box fastai's Resize(method="crop") keeps at validation, with its float rounding kept as is."""
    m = w / size if w / size < h / size else h / size
    side = int(m * size)
    left, top = int(0.5 * (w - side)), int(0.5 * (h - side))
    return (left, top, left + side, top + side)


class Classifier:
    """An exported image classifier: `classify(image)` returns {label: probability} for every label, `judge(image)`
    also whether the image looks like any of them (serving/novelty.py), where the folder can tell."""

    def __init__(self, session: ort.InferenceSession, config: dict, folder: Path | None = None,
                 novelty: NoveltyCheck | None = None, precision: str = "float32"):
        self.session, self.config, self.folder, self.novelty = session, config, folder, novelty
        self.precision = precision  # which of MODEL_FILES runs: the page and /classify say it
        self.labels: list[str] = list(config["labels"])
        self._pre = Preprocess.from_config(config["preprocess"])
        self._input = session.get_inputs()[0].name
        _check_io(session, self.labels, self._pre.crop, folder / MODEL_FILES[precision] if folder else None)
        outputs = [o.name for o in session.get_outputs()]
        # An older model.onnx has the logits only: it serves, without the check.
        self._features = outputs.index(FEATURES_OUTPUT) if FEATURES_OUTPUT in outputs else None
        if novelty is not None and not _fits(session, self._features, novelty, folder):
            self.novelty = None

    @classmethod
    def from_folder(cls, path: str | os.PathLike, cache_dir: Path | None = None,
                    precision: str = "float32") -> "Classifier":
        """Load `model.onnx` (or `model.int8.onnx`: `precision` "int8") and `config.json` from a model folder, or raise
        ModelFolderError.

        With a `cache_dir`, the model is loaded from this machine's optimized copy there, written first if
        missing (serving/ort_cache.py); without one, it is optimized in memory and nothing is written.
        """
        folder = Path(path)
        config = read_config(folder, MODEL_FILES[precision])
        try:
            novelty = NoveltyCheck.from_folder(folder, config, precision)
        except NoveltyError as exc:
            # The classifier is whole without it: serve, and say so (a folder copied without its features file).
            log.warning("serving without the 'none of these' check: %s", exc)
            novelty = None
        clf = cls(_session(folder / MODEL_FILES[precision], cache_dir), config, folder, novelty, precision)
        # clf.novelty, not novelty: the classifier drops a check whose features don't fit its model.
        checked = f"novelty check over {len(clf.novelty.bank):,} training images" if clf.novelty else "no novelty check"
        log.info("loaded %s: %d labels, %dpx input, %s, %s", folder / MODEL_FILES[precision], len(clf.labels),
                 clf.input_size, precision, checked)
        return clf

    @property
    def input_size(self) -> int:
        """The side S of the model's [N, 3, S, S] input."""
        return self._pre.crop

    def preprocess(self, image: ImageSource) -> np.ndarray:
        """The model's input for one image: float32 [3, S, S], normalised."""
        return self._pre(open_upright_rgb(image, shrink_to=self._pre.shrink_to))

    def classify(self, image: ImageSource) -> dict[str, float]:
        """Probabilities for every label, summing to 1."""
        return self.classify_batch([image])[0]

    def classify_batch(self, images: Sequence[ImageSource]) -> list[dict[str, float]]:
        """`classify` for several images, in one forward pass."""
        return [verdict.probs for verdict in self.judge_batch(images, check=False)]

    def judge(self, image: ImageSource) -> Verdict:
        """The probabilities, and the image's novelty against the threshold (None where the folder has no check)."""
        return self.judge_batch([image])[0]

    def judge_batch(self, images: Sequence[ImageSource], check: bool = True) -> list[Verdict]:
        """`judge` for several images, in one forward pass."""
        if not images:
            return []
        probs, features = self.run(np.stack([self.preprocess(im) for im in images]))
        rows = [dict(zip(self.labels, map(float, row))) for row in probs]
        if not check or self.novelty is None or features is None:
            return [Verdict(p) for p in rows]
        return self.novelty.verdicts(rows, features)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """For a preprocessed batch [N, 3, S, S]: probabilities [N, C] in float64, and the features [N, D] (None
        when model.onnx has no such output)."""
        outputs = self.session.run(None, {self._input: batch})
        return softmax(outputs[0]), (outputs[self._features] if self._features is not None else None)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, so the probabilities sum to 1 to within rounding."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def read_config(folder: Path, model_file: str = "model.onnx") -> dict:
    """Read and check config.json of a model folder that must hold `model_file` too."""
    _check_files(folder, model_file)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{folder / 'config.json'} is not valid JSON ({exc}); "
                               "re-export the model folder") from exc
    if not isinstance(config, dict) or config.get("format_version") != FORMAT_VERSION:
        found = config.get("format_version") if isinstance(config, dict) else type(config).__name__
        raise ModelFolderError(f"{folder / 'config.json'} has format_version {found!r}, this app reads "
                               f"{FORMAT_VERSION}; re-export the model folder with this version of the project")
    labels = config.get("labels")
    if not (isinstance(labels, list) and labels and all(isinstance(s, str) for s in labels)
            and len(set(labels)) == len(labels)):
        raise ModelFolderError(f"{folder / 'config.json'}: `labels` must be a non-empty list of distinct strings, "
                               f"got {labels!r}; re-export the model folder")
    if not isinstance(config.get("preprocess"), dict):
        raise ModelFolderError(f"{folder / 'config.json'} has no `preprocess` section; re-export the model folder")
    return config


def _check_files(folder: Path, model_file: str) -> None:
    if not folder.is_dir():
        raise ModelFolderError(f"no model folder at {folder}; run `python -m training train` to make one")
    missing = [n for n in (model_file, "config.json") if not (folder / n).is_file()]
    if not missing:
        return
    if model_file != "model.onnx" and (folder / "config.json").is_file():
        raise ModelFolderError(f"{folder} has no {model_file}; `python -m training train` (or `convert --data`) writes "
                               "it, or serve model.onnx with SERVE_PRECISION=float32")
    pkl = folder / "export.pkl"
    fix = CONVERT_HINT.format(pkl=pkl, folder=folder) if pkl.is_file() else \
        "run `python -m training train` to write a complete model folder"
    raise ModelFolderError(f"{folder} has no {' or '.join(missing)}; {fix}")


def _session(path: Path, cache_dir: Path | None) -> ort.InferenceSession:
    """A session for the model at `path`: from this machine's optimized copy in `cache_dir` when it has one
    (serving/ort_cache.py says why), else optimized in memory."""
    session = cached_session(path, cache_dir, _options(optimize=False)) if cache_dir is not None else None
    if session is not None:
        return session
    try:
        return ort.InferenceSession(str(path), sess_options=_options(optimize=True), providers=PROVIDERS)
    except ORT_ERRORS as exc:
        raise ModelFolderError(f"{path} is not a model onnxruntime can load ({exc}); re-export the model folder "
                               "with `python -m training train` or `python -m training convert`") from exc


def _options(optimize: bool) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    # One request at a time uses every core for the convolutions; a second pool would only contend.
    opts.intra_op_num_threads = _cpu_count()
    opts.inter_op_num_threads = 1
    # Waiting pool threads spin by default, taking CPU the server's own request handling needs (bench/app.py).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return opts


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use, e.g. inside a container
    except AttributeError:
        return os.cpu_count() or 1


def _fits(session: ort.InferenceSession, index: int | None, novelty: NoveltyCheck, folder: Path | None) -> bool:
    """Whether the stored features are the model's own kind; else a warning, and the model serves without them."""
    width = session.get_outputs()[index].shape[-1] if index is not None else None
    if width == novelty.dim:
        return True
    log.warning("serving without the 'none of these' check: %s holds features of %d values, but model.onnx %s; the "
                "two come from different models (retrain, or delete config.json's `novelty` section)",
                folder / FEATURES_FILE if folder else FEATURES_FILE, novelty.dim,
                "has no features output" if width is None else f"outputs {width}")
    return False


def _check_io(session: ort.InferenceSession, labels: list[str], size: int, where: Path | None) -> None:
    where = where or "model.onnx"
    shape = session.get_inputs()[0].shape
    if len(shape) != 4 or list(shape[1:]) != [3, size, size]:
        raise ModelFolderError(f"{where} takes input of shape {shape}, but config.json says [N, 3, {size}, {size}]; "
                               "the two files come from different exports, re-export the model folder")
    width = session.get_outputs()[0].shape[-1]
    if not isinstance(width, int) or width != len(labels):
        raise ModelFolderError(f"{where} outputs {width} scores but config.json lists {len(labels)} labels; "
                               "the two files come from different models, re-export the model folder")
