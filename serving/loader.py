"""Find the model the app serves: a Hub repo at a pinned revision, a local folder, or the default folder.

    MODEL_REPO=you/bears MODEL_REVISION=<commit sha> python app.py   # from the Hub (cached; then offline)
    MODEL_DIR=models/cats python app.py                             # a local model folder
    python app.py                                                   # models/bears, what `train` writes

The settings come from serving/settings.py. The Hub is reached only here and in the publishing code.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from serving.imaging import ImageSource
from serving.model import Classifier, ModelFolderError
from serving.novelty import FEATURES_FILE, Verdict
from serving.settings import Settings

log = logging.getLogger(__name__)
SERVING_FILES = ["model.onnx", "config.json", FEATURES_FILE, "examples/*"]
# A learner, served through fastai where there is no model.onnx: model.pkl is what `push_to_hub_fastai` writes (and
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
        folder = _download(repo, revision)
        return Loaded(_open(folder, settings.ort_cache_dir), folder, f"{repo}@{_short(folder, revision)}")
    folder = settings.model_dir
    if not folder.exists():
        raise NoModel(
            f"no model to serve: {folder} does not exist. Train one with `python -m training all` "
            "(or `python -m training train`), or set MODEL_DIR=<model folder> or MODEL_REPO=<user/repo> "
            "(with MODEL_REVISION=<commit sha>)")
    return Loaded(_open(folder, settings.ort_cache_dir), folder, str(folder))


def _download(repo: str, revision: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = Path(snapshot_download(repo, revision=revision, allow_patterns=SERVING_FILES))
        if not (folder / "model.onnx").exists():
            # A repo pushed with fastai's own helpers holds only a learner: fetch it to serve through fastai.
            folder = Path(snapshot_download(repo, revision=revision, allow_patterns=[*SERVING_FILES, *LEARNERS]))
        if not any((folder / name).exists() for name in ("model.onnx", *LEARNERS)):
            raise NoModel(f"model repo {repo}@{revision} holds no model to serve (model.onnx, model.pkl or "
                          f"export.pkl); it has {_names(_repo_files(repo, revision))}. Publish a model folder "
                          f"there with `python -m training publish MODEL_DIR --repo-id {repo}`, or set MODEL_REPO "
                          "to a model repo")
    except RepositoryNotFoundError as exc:
        raise NoModel(f"model repo {repo!r} (revision {revision}) was not found on the Hub, or it is private: check "
                      "MODEL_REPO and MODEL_REVISION, and set HF_TOKEN for a private repo") from exc
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise NoModel(f"could not download {repo}@{revision} and it is not in the local cache ({exc}). "
                      "Check the network (or HF_ENDPOINT), or set MODEL_DIR to a local model folder") from exc
    log.info("model %s@%s in %s", repo, revision, folder)
    return folder


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


def _open(folder: Path, cache_dir: Path) -> Model:
    learner = next((folder / name for name in LEARNERS if (folder / name).exists()), None)
    if not (folder / "model.onnx").exists() and learner is None and folder.is_dir():
        found = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        raise NoModel(f"{folder} holds no model to serve (model.onnx, model.pkl or export.pkl); it has "
                      f"{_names(found)}. Train one into it with `python -m training train --out {folder}`, or set "
                      "MODEL_DIR to a model folder")
    if (folder / "model.onnx").exists() or learner is None:
        try:
            return Classifier.from_folder(folder, cache_dir)
        except ModelFolderError as exc:
            raise NoModel(str(exc)) from exc
    from serving.fastai_model import FastaiModel, fastai_available

    if not fastai_available():
        raise NoModel(f"{folder} holds only {learner.name}, which needs fastai to serve. Either `pip install -r "
                      f"requirements-train.txt`, or convert it once with `python -m training convert "
                      f"{learner} --out <folder>` and serve that folder (faster, no torch)")
    return FastaiModel(learner)
