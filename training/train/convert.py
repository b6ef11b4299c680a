"""Turn an existing fastai export.pkl (for example the course notebook's) into a model folder the app serves.

    python -m training convert export.pkl --out models/bears [--size 224] [--data data/bears]

Writes OUT/model.onnx, OUT/config.json and a copy of export.pkl, the same way `python -m training train`
does. There is no data here, so config.json's metrics are empty and its dataset, seed and training are null.
"""
from __future__ import annotations

import json
import logging
import pickle
import re
import shutil
from pathlib import Path

from fastai.data.transforms import RandomSplitter, get_image_files, parent_label
from fastai.learner import load_learner

from training.config import Config
from training.errors import StageError
from training.train.export import library_versions, write_folder
from training.train.novelty import add_novelty_check, add_to_report, other_images
from training.train.quantize import add_int8_model
from training.train.quantize import add_to_report as add_int8_to_report

log = logging.getLogger(__name__)

# What unpickling an export.pkl from another library version, or one that needs a notebook's function, raises.
LOAD_ERRORS = (AttributeError, ImportError, NameError, RuntimeError, TypeError, ValueError, KeyError, EOFError,
               pickle.UnpicklingError)


def convert(export_pkl: Path, out: Path, size: int | None = None, data: Path | None = None,
            settings: Config = Config()) -> Path:
    """Load export.pkl and write model.onnx, config.json and a copy of export.pkl into `out`; with the training
    images in `data`, the "none of these" check too (settings: the split, k, pass rate and --other)."""
    export_pkl = Path(export_pkl)
    trained = _trained_info(out, export_pkl)
    learn = load_export(export_pkl)
    out.mkdir(parents=True, exist_ok=True)
    if export_pkl.resolve() != (out / "export.pkl").resolve():
        shutil.copyfile(export_pkl, out / "export.pkl")
    info = trained or {"arch": "unknown", "pretrained": None, "metrics": {}, "dataset": None, "seed": None,
                       "made_by": "convert", "converted_from": export_pkl.name, "training": None}
    config = write_folder(learn, out, info, size=size)
    if data is not None:
        _add_novelty_check(out, data, config["labels"], settings)
    else:
        log.info("no --data: the folder serves without a 'none of these' check and without an int8 model (both "
                 "need the training images)")
    log.info("converted %s: %d labels at %dpx; wrote %s", export_pkl, len(config["labels"]), config["input_size"], out)
    return out


def _add_novelty_check(out: Path, data: Path, labels: list[str], settings: Config) -> None:
    """The check from the training images in `data`, split as `train` splits them."""
    images = data / "images" if (data / "images").is_dir() else data
    items = get_image_files(images)
    found = sorted({parent_label(p) for p in items})
    if not items or not set(found) <= set(labels):
        raise StageError(f"--data {data} should hold the training images in one folder per label ({', '.join(labels)})"
                         f"; found {'labels ' + ', '.join(found) if found else 'no images'}")
    train_idx, valid_idx = RandomSplitter(settings.valid_pct, seed=settings.seed)(items)
    train_items, valid_items = [items[i] for i in train_idx], [items[i] for i in valid_idx]
    int8 = add_int8_model(out, train_items, valid_items, [labels.index(parent_label(p)) for p in valid_items],
                          min_agreement=settings.int8_min_agreement, max_error_gap=settings.int8_max_error_gap,
                          seed=settings.seed) if settings.int8 else None
    other = settings.other if settings.other is not None else data / "other"
    section = add_novelty_check(out, train_items, valid_items, k=settings.novelty_k,
                                pass_rate=settings.novelty_pass_rate, others=other_images(other), seed=settings.seed)
    if (out / "report").is_dir():
        add_to_report(out / "report", section)
        add_int8_to_report(out / "report", int8)


def _trained_info(out: Path, export_pkl: Path) -> dict | None:
    """config.json's training fields when `out` is a folder `train` made and `export_pkl` is its own, so that
    converting it again (after a library upgrade, say) keeps its metrics and dataset; None for any other folder.
    Another export.pkl into such a folder is refused: its config.json would describe a model it no longer holds."""
    try:
        config = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get("made_by") != "train":
        return None
    if export_pkl.resolve() != (out / "export.pkl").resolve():
        raise StageError(f"{out} holds a model `python -m training train` made, with its metrics and report; "
                         f"choose another folder with --out for {export_pkl}")
    return {k: config.get(k) for k in ("arch", "pretrained", "metrics", "dataset", "seed", "made_by", "training")}


def load_export(path: Path):
    """load_learner on the CPU, or a StageError that names the versions, the error and the fix."""
    if not path.is_file():
        raise StageError(f"no export.pkl at {path}; pass the file `learn.export()` wrote")
    try:
        return load_learner(path, cpu=True)
    except LOAD_ERRORS as exc:
        raise StageError(load_error_message(path, exc)) from exc


def load_error_message(path: Path, exc: BaseException) -> str:
    """Say which versions failed to load `path`, what went wrong, and how to fix it."""
    exc = _root_cause(exc)
    error = f"{type(exc).__name__}: {str(exc).rstrip('.')}"
    if _not_an_export(exc):
        return (f"{path} is not a whole fastai export.pkl ({error}): it is empty, cut short, or another kind of file, "
                "such as weights from torch.save or learn.save, or a model.onnx. Pass the file `learn.export()` wrote")
    v = library_versions()
    head = f"could not load {path} with fastai {v['fastai']}, fastcore {v['fastcore']}, torch {v['torch']}: {error}. "
    missing = re.search(r"Can't get attribute '([\w.]+)' on <module '[\w.]*__main__'", str(exc))
    if missing:
        name = missing.group(1)
        return head + (f"The learner was exported with `{name}` defined in the notebook, so it must be defined "
                       f"again before loading. Run convert from Python with the notebook's definition:\n"
                       f"    import __main__\n    from pathlib import Path\n    from training.train.convert import convert\n"
                       f"    def {name}(x): ...  # paste the notebook's definition here\n"
                       f"    __main__.{name} = {name}\n    convert(Path('{path}'), Path('OUT'))")
    return head + ("Install the versions the model was trained with (in the notebook: `import fastai, fastcore, torch; "
                   "print(fastai.__version__, fastcore.__version__, torch.__version__)`), e.g. "
                   "`pip install fastai==X fastcore==Y torch==Z`, then run convert again; or, if a function from the "
                   "notebook is missing, define it before loading.")


def _not_an_export(exc: BaseException) -> bool:
    """Errors that say the file is no export.pkl at all, whichever library versions read it."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError):
        return "Weights only load failed" not in text  # that one is torch's weights_only default, not the file
    return (isinstance(exc, EOFError)
            or isinstance(exc, RuntimeError) and ("zip archive" in text or "magic number" in text)
            or isinstance(exc, AttributeError) and "has no attribute 'dls'" in text)  # loaded, but not a Learner


def _root_cause(exc: BaseException) -> BaseException:
    """The error behind fastai's own: load_learner swallows some ImportErrors and then fails on a name."""
    while isinstance(exc, UnboundLocalError) and exc.__context__ is not None:
        exc = exc.__context__
    return exc
