"""Write model.int8.onnx: model.onnx quantized to 8-bit integers, and checked against it on the validation split.

Static quantization with onnxruntime (QDQ format, weights per channel, activations calibrated on training images),
whose forward pass measured 2.4-2.7x faster than the float model's on a CPU with VNNI instructions, a quarter of its
size (docs/benchmarks.md). Every run then compares the two models on every validation image: top-1 agreement, the
largest difference in any probability, and the error rate of each. config.json's `int8` section records them and whether
the int8 model may serve (`serve`, with the `reason`); the app's SERVE_PRECISION=auto follows it
(serving/loader.py). The int8 model keeps both outputs, so the "none of these" check works with it too
(training/train/novelty.py calibrates a threshold for each model).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from serving.imaging import ImageRejected
from serving.model import MODEL_FILES, Classifier
from training.errors import StageError
from training.train.novelty import at_most

log = logging.getLogger(__name__)

INT8_FILE = MODEL_FILES["int8"]
CALIBRATION_IMAGES = 32  # what the measurement used; more changed nothing measurable on the toy sets here
BATCH = 32


def add_int8_model(folder: Path, calibration_items: Sequence[Path], valid_items: Sequence[Path],
                   valid_targets: Sequence[int], *, min_agreement: float, max_error_gap: float, seed: int = 42) -> dict:
    """Write folder/model.int8.onnx, compare it with folder/model.onnx on the validation images (`valid_targets`:
    their label indices) and return config.json's `int8` section (also written into config.json)."""
    float_model = Classifier.from_folder(folder, cache_dir=None)
    calibration = _inputs(float_model, at_most(list(calibration_items), CALIBRATION_IMAGES, seed))[0]
    if not len(calibration):
        raise StageError("none of the training images could be read to calibrate the int8 model; check the data "
                         "folder, or pass --no-int8")
    write_int8(folder / MODEL_FILES["float32"], folder / INT8_FILE, calibration)
    int8_model = Classifier.from_folder(folder, cache_dir=None, precision="int8")
    inputs, kept = _inputs(float_model, list(valid_items))
    targets = np.asarray(valid_targets, dtype=int)[kept]
    section = {"file": INT8_FILE, "format": "QDQ", "per_channel": True, "calibration_images": len(calibration),
               **compare(float_model, int8_model, inputs, targets),
               "min_agreement": min_agreement, "max_error_gap": max_error_gap}
    section["serve"], section["reason"] = int8_verdict(section)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config_file.write_text(json.dumps({**config, "int8": section}, indent=2) + "\n")
    log.info("model.int8.onnx (%.1f MB): %s; it %s", (folder / INT8_FILE).stat().st_size / 1e6, section["reason"],
             "may serve" if section["serve"] else "will not serve unless SERVE_PRECISION=int8")
    return section


def write_int8(model: Path, out: Path, calibration: np.ndarray) -> None:
    """Quantize `model` statically, calibrated on `calibration` (preprocessed inputs [N, 3, S, S]), into `out`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter([{"input": x[None]} for x in calibration])

        def get_next(self):
            return next(self._batches, None)

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".int8-") as tmp:
        prepared, partial = Path(tmp) / "prepared.onnx", Path(tmp) / INT8_FILE
        try:
            # Folds batch norms and the like first, as onnxruntime advises; symbolic shape inference is skipped:
            # it can't follow the dynamo exporter's batch axis, and onnx's own shape inference suffices.
            quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
            with _quiet_quantizer():
                # Activations uint8, weights int8 per channel: onnxruntime's fast path on x86 (VNNI), in QDQ form so
                # any onnxruntime can run it.
                quantize_static(str(prepared), str(partial), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        except Exception as exc:  # the quantizer raises anything from onnx, numpy and its own code
            raise StageError(f"could not quantize {model} to int8 ({type(exc).__name__}: {exc}); train again with "
                             "--no-int8 to serve the float model only") from exc
        os.replace(partial, out)  # whole or not at all: a folder never holds half an int8 model


@contextlib.contextmanager
def _quiet_quantizer():
    """The quantizer warns through the root logger about every rank-1 weight it quantizes per tensor (the head's
    batch norms): true, and nothing to act on."""
    level = logging.root.level
    logging.root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logging.root.setLevel(level)


def compare(float_model: Classifier, int8_model: Classifier, inputs: np.ndarray, targets: np.ndarray) -> dict:
    """Top-1 agreement, the largest probability difference and each model's error rate on the same inputs."""
    p_float = _probs(float_model, inputs)
    p_int8 = _probs(int8_model, inputs)
    n = len(inputs)
    top_float, top_int8 = p_float.argmax(axis=1), p_int8.argmax(axis=1)
    return {"valid_images": n,
            "agreement": float(np.mean(top_float == top_int8)) if n else None,
            "max_prob_diff": float(np.abs(p_float - p_int8).max()) if n else None,
            "error_rate_float32": float(np.mean(top_float != targets)) if n else None,
            "error_rate_int8": float(np.mean(top_int8 != targets)) if n else None}


def int8_verdict(section: dict) -> tuple[bool, str]:
    """Whether the int8 model may serve, and why, from `compare`'s figures and the two limits."""
    n = section["valid_images"]
    if not n:
        return False, "there was no validation image to check it on"
    agreement, gap = section["agreement"], section["error_rate_int8"] - section["error_rate_float32"]
    said = (f"its top label is the float model's on {agreement:.1%} of {n} validation images (at least "
            f"{section['min_agreement']:.1%} needed) and its error rate is {section['error_rate_int8']:.1%} against "
            f"{section['error_rate_float32']:.1%} (at most {100 * section['max_error_gap']:.1f} points more allowed)")
    # A hair of slack for the subtraction: 0.3 - 0.2 is not 0.1 in floating point.
    ok = agreement >= section["min_agreement"] and gap <= section["max_error_gap"] + 1e-9
    return ok, said


def int8_markdown(section: dict | None, level: int = 2) -> str:
    """The "Int8 model" section of report.md and the model card."""
    title = "#" * level + " Int8 model"
    if not section:
        return f"{title}\n\nThis folder has no int8 model: the app serves model.onnx (float32)."
    verdict = ("**It may serve**: the app serves it where the CPU has the instructions that make it faster "
               "(SERVE_PRECISION=auto)." if section["serve"] else
               "**It does not serve** (unless SERVE_PRECISION=int8 asks for it): the app serves model.onnx.")
    rows = ["| | float32 (`model.onnx`) | int8 (`model.int8.onnx`) |", "|---|---|---|"]
    if section["valid_images"]:
        rows.append(f"| validation error rate | {section['error_rate_float32']:.1%} | "
                    f"{section['error_rate_int8']:.1%} |")
        rows.append(f"| top label agrees with float32 | | {section['agreement']:.1%} "
                    f"(largest probability difference {section['max_prob_diff']:.3f}) |")
    return "\n".join([title, "", f"`model.int8.onnx` is `model.onnx` quantized to 8-bit integers (static, QDQ, "
                      f"weights per channel, calibrated on {section['calibration_images']} training images), then "
                      f"checked on the validation images: {section['reason']}. {verdict}", "", *rows])


def add_to_report(report_dir: Path, section: dict | None) -> None:
    """Add the "Int8 model" section to report.md and the figures (null without one) to metrics.json."""
    report = report_dir / "report.md"
    report.write_text(report.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + int8_markdown(section) + "\n")
    metrics_file = report_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    metrics_file.write_text(json.dumps({**metrics, "int8": section}, indent=2) + "\n")


def _inputs(clf: Classifier, items: list[Path]) -> tuple[np.ndarray, list[int]]:
    """The preprocessed inputs of the readable images among `items`, and their indices (the others are skipped)."""
    inputs, kept = [], []
    for i, path in enumerate(items):
        try:
            inputs.append(clf.preprocess(path))
            kept.append(i)
        except (ImageRejected, OSError) as exc:
            log.debug("int8 check: skipped %s (%s)", path, exc)
    size = clf.input_size
    return (np.stack(inputs) if inputs else np.zeros((0, 3, size, size), dtype=np.float32)), kept


def _probs(clf: Classifier, inputs: np.ndarray) -> np.ndarray:
    if not len(inputs):
        return np.zeros((0, len(clf.labels)))
    return np.concatenate([clf.run(inputs[i:i + BATCH])[0] for i in range(0, len(inputs), BATCH)])
