"""Create or update the Gradio Space that serves a published model, pinned to the commit publish printed.

    python -m training deploy --space you/bears-demo --model-repo you/bears --revision <40-hex commit sha>
    python -m training deploy --space you/bears-demo --model-repo you/bears --revision <sha> \\
        --dry-run --out /tmp/space-upload --model-dir models/bears

Uploads app.py, requirements.txt, the serving/ package (the Space never needs training/), the model's
example images into examples/ (next to app.py, where the app shows them from) and a README.md whose front
matter configures the Space: gradio at the version requirements.txt pins, Python 3.11, and preload_from_hub
for the model files the app reads at that revision, so that a restarted Space starts from its build's cache
without the Hub. Sets the Space variables MODEL_REPO and MODEL_REVISION, which serving/loader.py reads,
then prints the Space's URL. Labels and examples come from the model repo at that revision, so the Space
describes exactly what it serves. A branch name instead of a sha needs --allow-branch: the demo would then
change with every publish, without a deploy.
"""
from __future__ import annotations

import fnmatch
import logging
import re
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, SpaceCardData, constants
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

from serving.loader import SHARED_FILES
from serving.model import MODEL_FILES
from training.config import Config
from training.errors import StageError
from training.hub.access import (HUB_ERRORS, check_hardware, check_private, check_repo_id, connect, fresh_folder,
                                 reason, status)
from training.hub.publish import read_config

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # where app.py, requirements.txt and serving/ live
APP_FILES = ("app.py", "requirements.txt")
PYTHON_VERSION = "3.11"  # the version the project is developed and tested on
FULL_SHA = re.compile(r"[0-9a-f]{40}")
# A rerun replaces these folders as a whole, so a module or example removed here disappears there too.
REPLACED = ["serving/*", "examples/*"]
SHORT_DESCRIPTION_MAX = 60  # the Hub rejects longer short_description values
OPTIONS_403 = [
    "a PRO subscription (a Team plan for an organisation) lets Gradio Spaces run on the free cpu-basic hardware",
    "with a payment method and credits, rerun with paid hardware, e.g. --hardware cpu-upgrade",
    "deploy under an organisation that can, with --space ORG/NAME",
    "create the Space on the website yourself, then rerun: deploy updates an existing Space",
    "serve it elsewhere: `MODEL_REPO={repo} MODEL_REVISION={revision} python app.py`"]


def deploy(cfg: Config, revision: str, *, allow_branch: bool = False, api: HfApi | None = None,
           model_dir: Path | None = None, dry_run_out: Path | None = None) -> str | None:
    """Make cfg.space serve cfg.repo_id at revision; return the Space's URL (None for a dry run)."""
    check_repo_id(cfg.space, "--space")
    check_repo_id(cfg.repo_id, "--model-repo")
    if cfg.feedback_repo is not None:
        check_repo_id(cfg.feedback_repo, "--feedback-repo")
    _check_revision(revision, allow_branch)
    check_hardware(cfg.hardware)
    gradio = gradio_pin(ROOT / "requirements.txt")
    if dry_run_out is not None:
        return _dry_run(cfg, revision, gradio, model_dir, dry_run_out)
    api = api or connect(cfg.space)
    revision = _resolve(api, cfg.repo_id, revision, allow_branch)
    with tempfile.TemporaryDirectory(prefix="deploy-") as tmp:
        model, repo_files = _fetch_model_files(api, cfg.repo_id, revision, Path(tmp) / "model")
        files = _stage(cfg, revision, gradio, model, Path(tmp) / "space", preloaded(repo_files, revision))
        url = _create_space(api, cfg, revision)
        _set_variables(api, cfg.space, cfg.repo_id, revision, cfg.feedback_repo)
        _upload(api, cfg.space, Path(tmp) / "space", f"Serve {cfg.repo_id}@{revision[:7]}")
    log.info("deployed %d files to %s: it serves %s@%s once the Space has rebuilt (app: https://%s.hf.space)",
             len(files), url, cfg.repo_id, revision[:7], cfg.space.replace("/", "-").replace("_", "-").lower())
    if cfg.feedback_repo is not None:
        # This command never copies your token: the Space needs one of its own to push, or it serves without feedback.
        log.warning("feedback goes to the private dataset %s: add a token with write access to it as the Space secret "
                    "HF_TOKEN (Space settings > Variables and secrets), or the app serves without feedback",
                    cfg.feedback_repo)
    return url


def _dry_run(cfg: Config, revision: str, gradio: str, model_dir: Path | None, out: Path) -> None:
    if model_dir is None:
        raise StageError("a dry run contacts nobody, so it cannot read the model's labels and examples from the Hub: "
                         "pass --model-dir, the model folder that was published")
    local = [p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()]
    files = _stage(cfg, revision, gradio, model_dir, fresh_folder(out), preloaded(local, revision))
    log.info("dry run: wrote the %d files that would be uploaded to Space %s into %s", len(files), cfg.space, out)
    return None


def _check_revision(revision: str, allow_branch: bool) -> None:
    if not FULL_SHA.fullmatch(revision) and not allow_branch:
        raise StageError(f"--revision {revision!r} is not a full 40-character commit sha. The Space must serve "
                         "exactly what was published: pass the sha `python -m training publish` printed, or add "
                         "--allow-branch to let the Space follow a branch (it then changes with every publish)")


def gradio_pin(requirements: Path) -> str:
    """The gradio version requirements.txt pins: the Space's sdk_version must be the same."""
    match = re.search(r"^gradio==([\w.+-]+)\s*$", requirements.read_text(), re.M)
    if match is None:
        raise StageError(f"{requirements} does not pin gradio (a line `gradio==X.Y.Z`); pin it, so the Space runs "
                         "the gradio the app was tested with")
    return match.group(1)


# --- the model it serves ----------------------------------------------------------------------------------


def _resolve(api: HfApi, repo: str, revision: str, allow_branch: bool) -> str:
    """The full sha of repo@revision, checked to exist; warn when the Space cannot read a private repo."""
    hint = "publish first with `python -m training publish MODEL_DIR --repo-id " + repo + "`"
    try:
        info = api.model_info(repo, revision=revision)
    except RevisionNotFoundError:
        raise StageError(f"model repo {repo} has no revision {revision}; use the commit sha that publish "
                         f"printed, or {hint}") from None
    except RepositoryNotFoundError:
        raise StageError(f"model repo {repo} was not found (or is private and not yours); {hint}") from None
    except HUB_ERRORS as exc:
        raise StageError(f"could not read model repo {repo}@{revision}: {reason(exc)}; rerun") from None
    if info.private:
        log.warning("model repo %s is private: the Space can download it only with a token. Add a read-only token "
                    "as the Space secret HF_TOKEN (Space settings); this command never copies yours", repo)
    if not FULL_SHA.fullmatch(revision):
        log.warning("the Space follows branch %r of %s (now at %s): every publish changes the demo",
                    revision, repo, info.sha[:7])
    return revision if allow_branch else info.sha


def _fetch_model_files(api: HfApi, repo: str, revision: str, folder: Path) -> tuple[Path, list[str]]:
    """config.json and examples/ of repo@revision (the Space's labels and example images), and the repo's files."""
    try:
        api.snapshot_download(repo, revision=revision, allow_patterns=["config.json", "examples/*"], local_dir=folder)
        files = api.list_repo_files(repo, revision=revision)
    except HUB_ERRORS as exc:
        raise StageError(f"could not download config.json and examples/ of {repo}@{revision}: {reason(exc)}; "
                         "rerun") from None
    return folder, files


def preloaded(repo_files: list[str], revision: str) -> list[str]:
    """The model files the Space's build downloads into its cache (preload_from_hub): those the app may read (both
    models: which one serves depends on the Space's CPU), but the examples, which the Space holds itself. None for a
    branch, which the build could preload at another commit."""
    if not FULL_SHA.fullmatch(revision):
        return []
    read = [*MODEL_FILES.values(), *SHARED_FILES]
    return sorted(f for f in repo_files if not f.startswith("examples/")
                  and any(fnmatch.fnmatch(f, pattern) for pattern in read))


# --- the files --------------------------------------------------------------------------------------------


def _stage(cfg: Config, revision: str, gradio: str, model_dir: Path, out: Path, preload: list[str]) -> list[str]:
    """Write the Space's files into out; return their repo paths."""
    config = read_config(model_dir)
    sources = {name: ROOT / name for name in APP_FILES}
    sources |= {f"serving/{p.name}": p for p in sorted((ROOT / "serving").glob("*.py"))}
    sources |= {f"examples/{p.name}": p for p in sorted((model_dir / "examples").glob("*")) if p.is_file()}
    if not any(name.startswith("examples/") for name in sources):
        log.warning("%s has no examples/: the demo will offer no example images", model_dir)
    for rel, src in sources.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out / rel)
    (out / "README.md").write_text(space_card(cfg, revision, gradio, config["labels"], preload), encoding="utf-8")
    return [*sources, "README.md"]


def space_card(cfg: Config, revision: str, gradio: str, labels: list[str], preload: list[str] = ()) -> str:
    """The Space's README.md: the front matter that configures it, then a few lines for visitors."""
    title = f"{cfg.repo_id.split('/')[-1]} classifier"
    # preload_from_hub: "repo_id file1,file2 commit_sha", downloaded into the Space's Hub cache at build time.
    extra = {"preload_from_hub": [f"{cfg.repo_id} {','.join(preload)} {revision}"]} if preload else {}
    data = SpaceCardData(title=title, emoji="📷", colorFrom="blue", colorTo="green", sdk="gradio",
                         sdk_version=gradio, python_version=PYTHON_VERSION, app_file="app.py", pinned=False,
                         models=[cfg.repo_id], short_description=_short_description(labels), license=cfg.license,
                         **extra)
    model_url = f"{constants.ENDPOINT}/{cfg.repo_id}"
    body = [
        f"# {title}", "",
        f"Upload a photo: the model says which of {', '.join(f'`{label}`' for label in labels)} it shows, "
        "with a probability for each.", "",
        f"It serves [{cfg.repo_id}]({model_url}) at revision `{revision}` (the Space variables MODEL_REPO and "
        "MODEL_REVISION), with onnxruntime: no torch, no fastai. The model card there says how it was trained, "
        "how well it does, and where it goes wrong.", "",
        "## API", "", "```python", "from gradio_client import Client, handle_file", "",
        f'client = Client("{cfg.space}")', 'client.predict(handle_file("photo.jpg"), api_name="/predict")', "```",
        "", "or `curl -F file=@photo.jpg https://<this Space's URL>/classify` for plain JSON."]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n"


def _short_description(labels: list[str]) -> str:
    text = f"Classify photos: {', '.join(labels)}"
    return text if len(text) <= SHORT_DESCRIPTION_MAX else text[: SHORT_DESCRIPTION_MAX - 1].rstrip(", ") + "…"


# --- the Hub calls ----------------------------------------------------------------------------------------


def _create_space(api: HfApi, cfg: Config, revision: str) -> str:
    """Create the Space, or find the existing one, on the requested hardware; return its URL."""
    options = [o.format(repo=cfg.repo_id, revision=revision) for o in OPTIONS_403]
    if cfg.hardware not in (None, "cpu-basic"):
        options.insert(0, "leave out --hardware to ask for the free cpu-basic")
    try:
        url = api.create_repo(cfg.space, repo_type="space", space_sdk="gradio", private=cfg.private,
                              exist_ok=True, space_hardware=cfg.hardware)
    except HUB_ERRORS as exc:
        numbered = "; ".join(f"({n}) {option}" for n, option in enumerate(options, start=1))
        extra = f" Options: {numbered}." if status(exc) in (402, 403) else " Check the name and your token, then rerun."
        raise StageError(f"the Hub refused to create Space {cfg.space}: {reason(exc)}{extra}") from None
    try:
        private = api.repo_info(cfg.space, repo_type="space").private
    except HUB_ERRORS as exc:
        raise StageError(f"could not read Space {cfg.space} after creating it: {reason(exc)}; rerun") from None
    check_private(cfg, cfg.space, private)
    if cfg.hardware is not None:
        _request_hardware(api, cfg.space, cfg.hardware)
    return str(url)


def _request_hardware(api: HfApi, space: str, hardware: str) -> None:
    # create_repo ignores the hardware of a Space that already exists: ask for it explicitly.
    try:
        api.request_space_hardware(space, hardware)
    except HUB_ERRORS as exc:
        raise StageError(f"the Hub refused hardware {hardware} for Space {space}: {reason(exc)}. Leave out --hardware "
                         "to keep the free cpu-basic, or add a payment method and credits to your account (see "
                         "https://huggingface.co/pricing#spaces)") from None


def _set_variables(api: HfApi, space: str, repo: str, revision: str, feedback_repo: str | None = None) -> None:
    # Set before the code is uploaded, so the build that upload triggers already sees them.
    values = {"MODEL_REPO": (repo, "model repo the app serves"),
              "MODEL_REVISION": (revision, "commit of MODEL_REPO the app serves")}
    if feedback_repo is not None:
        values["FEEDBACK_REPO"] = (feedback_repo, "Hub dataset the app pushes visitors' corrections to")
    try:
        current = {key: v.value for key, v in api.get_space_variables(space).items()}
        for key, (value, description) in values.items():
            if current.get(key) != value:  # each change restarts the Space: leave equal values alone
                api.add_space_variable(space, key, value, description=description)
    except HUB_ERRORS as exc:
        raise StageError(f"could not set the variables of Space {space}: {reason(exc)}; rerun") from None


def _upload(api: HfApi, space: str, folder: Path, message: str) -> str:
    try:
        info = api.upload_folder(repo_id=space, repo_type="space", folder_path=folder, commit_message=message,
                                 delete_patterns=REPLACED)
    except HUB_ERRORS as exc:
        raise StageError(f"uploading to Space {space} failed: {reason(exc)}. Its files are unchanged (a Hub commit "
                         "is all or nothing); rerun the same command") from None
    return info.oid
