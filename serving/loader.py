"""Find the model the app serves: a Hub repo at a pinned revision, a local folder, or the default folder.

    MODEL_REPO=you/bears MODEL_REVISION=<commit sha> python app.py   # from the Hub (cached; then offline)
    MODEL_DIR=models/cats python app.py                             # a local model folder
    python app.py                                                   # models/bears, what `train` writes

The settings come from serving/settings.py. The Hub is reached only here and in the publishing code.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from serving.imaging import ImageSource
from serving.model import MODEL_FILES, Classifier, ModelFolderError
from serving.novelty import FEATURES_FILE, Verdict
from serving.ort_cache import cpu_flags
from serving.settings import Settings

log = logging.getLogger(__name__)
# What the app reads besides the one model file it serves (MODEL_FILES): a Space downloads only these.
SHARED_FILES = ["config.json", FEATURES_FILE, "examples/*"]
# onnxruntime's int8 convolutions beat float32 on x86 with the dot-product instructions of VNNI (AVX-512 or AVX)
# or AMX: a 2.4-2.7x faster forward pass here (docs/benchmarks.md). Without them they were not measured, so auto
# serves float32 there.
INT8_CPU_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}
# A learner, served through fastai where there is no ONNX model: model.pkl is what `push_to_hub_fastai` writes (and
# `python -m training publish` uploads), export.pkl what `learn.export()` does.
LEARNERS = ("model.pkl", "export.pkl")


class Model(Protocol):
    labels: list[str]
    config: dict

    def classify(self, image: ImageSource) -> dict[str, float]: ...

    def judge(self, image: ImageSource) -> Verdict: ...


@dataclass(frozen=True)
class Loaded:
    """A model ready to serve, and where it came from."""
    model: Model
    folder: Path
    source: str  # "you/bears@1a2b3c4" or a folder path

    @property
    def precision(self) -> str:
        """"float32" or "int8": which of the folder's models serves."""
        return getattr(self.model, "precision", "float32")

    @property
    def examples(self) -> list[str]:
        return example_images(self.folder / "examples")

    @property
    def error_rate(self) -> float | None:
        return (self.model.config.get("metrics") or {}).get("error_rate")


def example_images(folder: Path) -> list[str]:
    """The image files in `folder` (by their extension, as Pillow knows them), sorted; none if it doesn't exist."""
    from PIL import Image

    extensions = Image.registered_extensions()
    return sorted(str(p) for p in folder.glob("*") if p.is_file() and p.suffix.lower() in extensions)


class NoModel(RuntimeError):
    """No model could be found or loaded; the message says how to get one."""


def load_model(settings: Settings) -> Loaded:
    """Load the model in settings.model_repo (at model_revision), else the one in settings.model_dir."""
    if settings.model_repo:
        repo, revision = settings.model_repo, settings.model_revision
        folder = _download(repo, revision, settings.serve_precision)
        return Loaded(_open(folder, settings), folder, f"{repo}@{_short(folder, revision)}")
    folder = settings.model_dir
    if not folder.exists():
        raise NoModel(
            f"no model to serve: {folder} does not exist. Train one with `python -m training all` "
            "(or `python -m training train`), or set MODEL_DIR=<model folder> or MODEL_REPO=<user/repo> "
            "(with MODEL_REVISION=<commit sha>)")
    return Loaded(_open(folder, settings), folder, str(folder))


def choose_precision(setting: str, config: dict, flags: str) -> tuple[str, str]:
    """Which model serves ("float32" or "int8") for SERVE_PRECISION=`setting`, the folder's config.json and this
    CPU's `flags`, and why, in words."""
    if setting != "auto":
        return setting, f"SERVE_PRECISION={setting}"
    section = config.get("int8") if isinstance(config, dict) else None
    if not isinstance(section, dict):
        return "float32", "the folder has no int8 model"
    if section.get("serve") is not True:
        return "float32", f"training's check kept the int8 model from serving ({section.get('reason')})"
    found = INT8_CPU_FLAGS & set(flags.split())
    if not found:
        return "float32", f"this CPU has none of {', '.join(sorted(INT8_CPU_FLAGS))}, without which int8 is not faster"
    return "int8", "training's check passed and this CPU has " + ", ".join(sorted(found))


def _download(repo: str, revision: str, setting: str) -> Path:
    """The repo's files the app reads, at `revision`: config.json first, then only the model file that will serve."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = Path(snapshot_download(repo, revision=revision, allow_patterns=["config.json"]))
        precision, _ = choose_precision(setting, _peek_config(folder), cpu_flags())
        folder = Path(snapshot_download(repo, revision=revision, allow_patterns=[MODEL_FILES[precision],
                                                                                   *SHARED_FILES]))
        if not (folder / MODEL_FILES[precision]).exists() and setting == "auto":
            # config.json names an int8 model the repo lacks (an upload cut short): the float one serves instead.
            folder = Path(snapshot_download(repo, revision=revision, allow_patterns=["model.onnx", *SHARED_FILES]))
        if not any((folder / name).exists() for name in MODEL_FILES.values()):
            # A repo pushed with fastai's own helpers holds only a learner: fetch it to serve through fastai.
            folder = Path(snapshot_download(repo, revision=revision, allow_patterns=[*SHARED_FILES, *LEARNERS]))
        if not any((folder / name).exists() for name in (*MODEL_FILES.values(), *LEARNERS)):
            raise NoModel(f"model repo {repo}@{revision} holds no model to serve ({_any_model()}); it has "
                          f"{_names(_repo_files(repo, revision))}. Publish a model folder there with "
                          f"`python -m training publish MODEL_DIR --repo-id {repo}`, or set MODEL_REPO to a model repo")
    except RepositoryNotFoundError as exc:
        raise NoModel(f"model repo {repo!r} (revision {revision}) was not found on the Hub, or it is private: check "
                      "MODEL_REPO and MODEL_REVISION, and set HF_TOKEN for a private repo") from exc
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise NoModel(f"could not download {repo}@{revision} and it is not in the local cache ({exc}). "
                      "Check the network (or HF_ENDPOINT), or set MODEL_DIR to a local model folder") from exc
    log.info("model %s@%s in %s", repo, revision, folder)
    return folder


def _peek_config(folder: Path) -> dict:
    """config.json as far as choosing a precision goes: {} when it is missing or unreadable (read_config says why
    when the model loads)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return config if isinstance(config, dict) else {}


def _short(folder: Path, revision: str) -> str:
    # snapshot folders are named by the full commit sha, so a branch name still shows what is served.
    return folder.name[:7] if len(folder.name) == 40 else revision


def _repo_files(repo: str, revision: str) -> list[str]:
    from huggingface_hub import HfApi

    return HfApi().list_repo_files(repo, revision=revision)


def _names(files: list[str]) -> str:
    shown = sorted(files)[:12]
    more = f" and {len(files) - len(shown)} more" if len(files) > len(shown) else ""
    return ", ".join(shown) + more if files else "no files"


def _any_model() -> str:
    names = [*MODEL_FILES.values(), *LEARNERS]
    return ", ".join(names[:-1]) + f" or {names[-1]}"


def _open(folder: Path, settings: Settings) -> Model:
    learner = next((folder / name for name in LEARNERS if (folder / name).exists()), None)
    onnx = any((folder / name).exists() for name in MODEL_FILES.values())
    if not onnx and learner is None and folder.is_dir():
        found = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        raise NoModel(f"{folder} holds no model to serve ({_any_model()}); it has {_names(found)}. Train one into "
                      f"it with `python -m training train --out {folder}`, or set MODEL_DIR to a model folder")
    precision, why = choose_precision(settings.serve_precision, _peek_config(folder), cpu_flags())
    if precision == "int8" and not (folder / MODEL_FILES["int8"]).exists() and settings.serve_precision == "auto":
        precision, why = "float32", f"{folder / MODEL_FILES['int8']} is missing"
    if onnx or learner is None:
        try:
            model = Classifier.from_folder(folder, settings.ort_cache_dir, precision)
        except ModelFolderError as exc:
            raise NoModel(str(exc)) from exc
        log.info("serving %s: %s", MODEL_FILES[precision], why)
        return model
    from serving.fastai_model import FastaiModel, fastai_available

    if not fastai_available():
        raise NoModel(f"{folder} holds only {learner.name}, which needs fastai to serve. Either `pip install -r "
                      f"requirements-train.txt`, or convert it once with `python -m training convert "
                      f"{learner} --out <folder>` and serve that folder (faster, no torch)")
    return FastaiModel(learner)
