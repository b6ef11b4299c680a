"""Push a model folder to a Hugging Face Hub model repo, with a model card, in one commit.

    python -m training publish models/bears --repo-id you/bears        # prints the commit sha
    python -m training publish models/bears --repo-id you/bears --dry-run --out /tmp/bears-upload

Uploads model.onnx, model.int8.onnx (when training wrote one), config.json, the learner (export.pkl, as model.pkl
with a pyproject.toml: the layout `push_to_hub_fastai` writes and `from_pretrained_fastai` reads), the report (plots,
metrics.json, report.md), examples/ and a README.md model card written from config.json. Everything goes into one
commit: if the upload breaks off, the repo stays at its previous commit and rerunning the command finishes the job
(objects already uploaded are not sent again; a rerun with nothing new makes no commit). `--dry-run` writes exactly
the files that would be uploaded into `--out` and contacts nobody.

The token comes from HF_TOKEN or `hf auth login`. It is checked (whoami) before the upload starts, and never
printed or written anywhere (see training/hub/access.py).
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from serving.model import MODEL_FILES
from serving.novelty import FEATURES_FILE
from training.config import Config
from training.errors import StageError
from training.hub.access import HUB_ERRORS, check_private, check_repo_id, connect, fresh_folder, reason
from training.train.evaluate import per_class_table
from training.train.novelty import novelty_markdown
from training.train.quantize import int8_markdown

log = logging.getLogger(__name__)

REQUIRED = ("model.onnx", "config.json")  # what the app serves
# export.pkl for load_learner users (a folder made by `convert` may lack it); the "none of these" check's features;
# the int8 model, which the app serves where training's check and the CPU allow (a Space downloads only one of the two).
OPTIONAL = ("export.pkl", FEATURES_FILE, MODEL_FILES["int8"])
REPORT = ("report/*.png", "report/metrics.json", "report/report.md", "report/history.csv")
# A rerun replaces these folders as a whole, so a retrained model leaves no stale example or plot behind; and
# export.pkl, the learner's name in repos published before it went up as model.pkl.
REPLACED = ["examples/*", "report/*", "export.pkl"]
# The learner's name on the Hub: what `from_pretrained_fastai` loads and `push_to_hub_fastai` writes. One name, so
# that a snapshot (which `from_pretrained_fastai` takes of the whole repo) downloads it once.
HUB_NAMES = {"export.pkl": "model.pkl"}
PYPROJECT = "pyproject.toml"  # `from_pretrained_fastai` reads the fastai and fastcore versions from it
# "Finetuned from" on the Hub, for torchvision's ImageNet weights that fastai loads by default (weights='DEFAULT'):
# timm's copies of the same files (their pretrained_cfg urls are torchvision's; tests/hub/test_publish.py checks).
TORCHVISION_BASE_MODELS = {"resnet18": "timm/resnet18.tv_in1k", "resnet34": "timm/resnet34.tv_in1k",
                           "resnet50": "timm/resnet50.tv2_in1k"}  # resnet50's DEFAULT is IMAGENET1K_V2


def publish(model_dir: Path, cfg: Config, *, api: HfApi | None = None, dry_run_out: Path | None = None) -> str | None:
    """Upload model_dir and its card to cfg.repo_id in one commit; return the commit sha (None for a dry run)."""
    check_repo_id(cfg.repo_id, "--repo-id")
    files = files_to_upload(model_dir)
    config = read_config(model_dir)
    sizes = {name: (model_dir / _local_name(name)).stat().st_size for name in files}
    card = model_card(config, cfg, files, sizes)
    if dry_run_out is not None:
        count = _stage(model_dir, files, card, fresh_folder(dry_run_out))
        log.info("dry run: wrote the %d files that would be uploaded to %s into %s", count, cfg.repo_id, dry_run_out)
        return None
    api = api or connect(cfg.repo_id)
    with tempfile.TemporaryDirectory(prefix="publish-") as tmp:
        count = _stage(model_dir, files, card, Path(tmp))
        sha = _upload(api, cfg, Path(tmp), *_commit_message(config))
    log.info("published %s (%d files) at %s/%s/tree/%s", model_dir, count, api.endpoint, cfg.repo_id, sha)
    return sha


# --- the files --------------------------------------------------------------------------------------------


def files_to_upload(model_dir: Path) -> list[str]:
    """The model folder's files that go to the Hub, as repo paths (README.md, the card, is added to them)."""
    missing = [name for name in REQUIRED if not (model_dir / name).is_file()]
    if missing:
        raise StageError(f"{model_dir} has no {' or '.join(missing)}: not a model folder; run "
                         f"`python -m training train --out {model_dir}` first")
    files = [HUB_NAMES.get(name, name) for name in (*REQUIRED, *OPTIONAL) if (model_dir / name).is_file()]
    if "model.pkl" not in files:
        log.warning("%s has no export.pkl: fastai users will not be able to load_learner this repo", model_dir)
    found = {p for pattern in (*REPORT, "examples/*") for p in model_dir.glob(pattern) if p.is_file()}
    return files + sorted(p.relative_to(model_dir).as_posix() for p in found)


def pyproject(config: dict) -> str:
    """pyproject.toml as `push_to_hub_fastai` writes it, with the versions that trained the model."""
    versions = config.get("versions") or {}
    requires = ["setuptools>=40.8.0", "wheel",
                *(f"{name}={versions[name]}" for name in ("python", "fastai", "fastcore") if versions.get(name))]
    return ("[build-system]\nrequires = [" + ", ".join(f'"{r}"' for r in requires) + "]\n"
            'build-backend = "setuptools.build_meta:__legacy__"\n')


def read_config(model_dir: Path) -> dict:
    """config.json of a model folder, checked to name its labels."""
    path, fix = model_dir / "config.json", "re-export the model folder with `python -m training train`"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StageError(f"{path} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(config, dict) or not isinstance(config.get("labels"), list) or not config["labels"]:
        raise StageError(f"{path} lists no labels; {fix}")
    return config


def _local_name(repo_path: str) -> str:
    return {hub: local for local, hub in HUB_NAMES.items()}.get(repo_path, repo_path)


def _stage(model_dir: Path, files: list[str], card: str, out: Path) -> int:
    for rel in files:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_dir / _local_name(rel), out / rel)
    if "model.pkl" in files:
        (out / PYPROJECT).write_text(pyproject(read_config(model_dir)), encoding="utf-8")
    (out / "README.md").write_text(card, encoding="utf-8")
    return sum(1 for p in out.rglob("*") if p.is_file())


# --- the upload -------------------------------------------------------------------------------------------


def _upload(api: HfApi, cfg: Config, folder: Path, title: str, description: str) -> str:
    try:
        api.create_repo(cfg.repo_id, private=cfg.private, exist_ok=True)
        repo = api.repo_info(cfg.repo_id)
    except HUB_ERRORS as exc:
        raise StageError(f"the Hub refused to create or read model repo {cfg.repo_id}: {reason(exc)}; check the "
                         "name and that your token may write there") from None
    check_private(cfg, cfg.repo_id, repo.private)
    before = repo.sha
    try:
        # parent_commit: if someone else commits meanwhile, fail rather than silently mix two uploads.
        info = api.upload_folder(repo_id=cfg.repo_id, folder_path=folder, commit_message=title,
                                 commit_description=description, delete_patterns=REPLACED, parent_commit=before)
    except HUB_ERRORS as exc:
        raise StageError(f"uploading to {cfg.repo_id} failed: {reason(exc)}. The repo is unchanged at its previous "
                         f"commit {before[:7]} (a Hub commit is all or nothing); rerun the same command to finish "
                         "(files already uploaded are not sent again)") from None
    if info.oid == before:
        log.info("%s already holds exactly these files at %s: nothing to commit", cfg.repo_id, before[:7])
    return info.oid


def _commit_message(config: dict) -> tuple[str, str]:
    metrics = config.get("metrics") or {}
    rate = f"error rate {metrics['error_rate']:.1%}" if "error_rate" in metrics else "not evaluated"
    title = f"Publish {config.get('arch', 'model')} for {len(config['labels'])} labels: {rate}"
    return title, f"Labels: {', '.join(config['labels'])}. Made with `python -m training publish`."


# --- the model card ---------------------------------------------------------------------------------------


def model_card(config: dict, cfg: Config, files: list[str], sizes: dict[str, int] | None = None) -> str:
    """README.md for the model repo: Hub metadata, then what the model does, how well, how made, how to use it.
    `sizes` (bytes per repo path) says what `from_pretrained_fastai`, which downloads the whole repo, costs."""
    data = _card_data(config, cfg)
    sections = [_intro(config, cfg), _evaluation(config, files), novelty_markdown(config.get("novelty")),
                int8_markdown(config.get("int8")), _training(config), _limitations(config),
                _versions(config), _usage(config, cfg, files, sizes or {})]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections))
    return str(card).rstrip("\n") + "\n"


def _card_data(config: dict, cfg: Config) -> ModelCardData:
    metrics = config.get("metrics") or {}
    dataset = _dataset_name(config, cfg)
    results = [EvalResult(task_type="image-classification", task_name="Image Classification",
                          dataset_type="imagefolder", dataset_name=dataset, dataset_split="validation",
                          metric_type=key, metric_name=name, metric_value=round(float(metrics[key]), 4))
               for key, name in (("accuracy", "Accuracy"),) if key in metrics]  # (error rate is 1 - accuracy)
    if not results:
        log.warning("config.json has no metrics (a converted model?): the card will have no model-index")
    return ModelCardData(library_name="fastai", license=cfg.license, pipeline_tag="image-classification",
                         tags=["fastai", "image-classification", "onnx", config.get("arch", "unknown")],
                         model_name=cfg.repo_id, eval_results=results or None, base_model=base_model(config))


def base_model(config: dict) -> str | None:
    """The Hub repo of the weights training started from ("Finetuned from" on the model page); None from scratch."""
    arch = config.get("arch")
    if not config.get("pretrained") or not arch:
        return None
    if arch in TORCHVISION_BASE_MODELS:
        return TORCHVISION_BASE_MODELS[arch]
    try:  # a timm arch: fastai loads timm's default pretrained weights for it, which name their Hub repo
        from timm.models import get_pretrained_cfg
    except ImportError:
        return None
    pretrained = get_pretrained_cfg(arch)
    return getattr(pretrained, "hf_hub_id", None) or None


def _dataset_name(config: dict, cfg: Config) -> str:
    summary = (config.get("dataset") or {}).get("summary") or {}
    return f"{summary.get('name') or cfg.repo_id.split('/')[-1]} ({_source(config)})"


def _source(config: dict) -> str:
    """Where the images came from, as the data stage recorded it, without the author's local directories."""
    summary = (config.get("dataset") or {}).get("summary") or {}
    source = str(summary.get("source") or "unknown source")
    # The data stage writes "folder /home/me/photos; urls /home/me/list.csv": publish names only the last part.
    return "; ".join(re.sub(r"^(folder|urls|archive) (?!https?://)(.+)$", lambda m: f"{m[1]} {Path(m[2]).name}",
                            part.strip()) for part in source.split(";"))


def _intro(config: dict, cfg: Config) -> str:
    labels = config["labels"]
    pretrained = {True: "fine-tuned from ImageNet weights", False: "trained from random weights"}.get(
        config.get("pretrained"), "trained")
    return "\n".join([
        f"# {cfg.repo_id.split('/')[-1]}: an image classifier for {_join(labels)}", "",
        f"A {config.get('arch', 'convolutional network')} {pretrained} with fastai to tell "
        f"{len(labels)} labels apart, exported to ONNX. Give it a photo; it returns a probability for each label.",
        "", "## Labels", "", "In the model's output order:", "",
        *(f"{i}. `{label}`" for i, label in enumerate(labels))])


def _evaluation(config: dict, files: list[str]) -> str:
    metrics = config.get("metrics") or {}
    if "accuracy" not in metrics:
        return "## Evaluation\n\nThis model was converted from an `export.pkl` and has not been evaluated here."
    lines = ["## Evaluation", "",
             f"On {metrics.get('valid_images', '?')} held-out validation images: **accuracy "
             f"{metrics['accuracy']:.1%}**, error rate {metrics['error_rate']:.1%}.", "",
             *per_class_table(metrics.get("per_class") or {}, images="validation images")]
    if "report/confusion_matrix.png" in files:
        lines += ["", "![Confusion matrix: rows are the actual label, columns the predicted one]"
                      "(report/confusion_matrix.png)"]
    extras = [f"[{name}]({name})" for name in ("report/report.md", "report/losses.png", "report/top_losses.png",
                                               "report/metrics.json") if name in files]
    if extras:
        lines += ["", f"More in the evaluation report: {', '.join(extras)}."]
    return "\n".join(lines)


def _training(config: dict) -> str:
    dataset, training = config.get("dataset") or {}, config.get("training") or {}
    counts = dataset.get("images_per_label") or {}
    lines = ["## How it was trained", "", f"- Data: {_source(config)}."]
    if counts:
        lines.append(f"- Images: {dataset.get('total_images', sum(counts.values()))} in all, "
                     f"{dataset.get('train_images', '?')} for training and {dataset.get('valid_images', '?')} "
                     "held out for validation (a random split).")
    lines += [f"- Architecture: {config.get('arch', 'unknown')}, "
              f"{'pretrained on ImageNet' if config.get('pretrained') else 'from random weights'}."]
    if training:
        lines += [f"- fastai `fine_tune({training.get('epochs')})` (one epoch with the body frozen, then "
                  f"{training.get('epochs')} with everything unfrozen) at learning rate {_number(training.get('lr'))}, "
                  f"batch size {training.get('batch_size')}, {training.get('size')}px inputs, seed "
                  f"{config.get('seed')}, on {training.get('device', '?')} in {training.get('seconds', '?')} s.",
                  "- Augmentation: RandomResizedCrop (min scale "
                  f"{training.get('min_scale')}) and fastai's `aug_transforms`; at validation and in the app: "
                  f"{_preprocess_words(config)}."]
    else:
        lines.append(f"- Converted from `{config.get('converted_from', 'export.pkl')}`; its training is not recorded.")
    if counts:
        lines += ["", "| label | images |", "|---|---|", *(f"| {k} | {v} |" for k, v in counts.items())]
    return "\n".join(lines)


def _number(value) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else str(value)


def _preprocess_words(config: dict) -> str:
    p = config.get("preprocess") or {}
    how = "squish" if p.get("resize_mode") == "squish" else "centre-crop to a square and resize"
    return f"{how} to {p.get('resize')}px, centre-crop {p.get('crop')}px, normalise (mean and std in config.json)"


def _limitations(config: dict) -> str:
    valid = (config.get("metrics") or {}).get("valid_images")
    small = (f" With {valid} validation images, one image more or less right moves accuracy by "
             f"{100 / valid:.1f} percentage points." if valid else "")
    searched = _source(config).startswith("image search")
    data = ([
        "- **Biases of web-scraped data.** The images come from an image search, so they show what the search "
        "engine ranks first: popular, well-lit, centred, often professional or stock photos, over-representing "
        "some places and cultures. Photos taken in other conditions (night, unusual angles, other regions, "
        "drawings, toys) will do worse than the numbers above.",
        "- **Noisy labels.** A label is the search query, not a person's judgement, so some training images are "
        "wrong or off-topic. Deduplication removed exact and near copies, but not everything."] if searched else [
        "- **It knows only its training images.** Photos unlike them (other lighting, angles, places, cameras, "
        "drawings) will do worse than the numbers above.",
        "- **Labels are as good as their source.** Each image's label is the folder or list it came from; "
        "deduplication removed exact and near copies, but mislabelled images may remain."])
    return "\n".join([
        "## Intended use and limitations", "",
        f"Made to demonstrate and teach image classification (fastai lesson 2): sorting photos into exactly "
        f"these labels: {_join(config['labels'])}. Not for decisions about people, health, safety or money.", "",
        "- **It always picks one of its labels.** There is no \"none of these\": a photo of anything else still "
        "gets a confident-looking answer. The probabilities are not calibrated.", *data,
        f"- **Optimistic accuracy.** The validation images came from the same {'search' if searched else 'collection'} "
        f"as the training images, so the score measures this data set, not the world.{small}",
        "- **Image rights.** The training images belong to their owners. This repo does not publish them, only "
        "a few validation images, in examples/ and in the report's plots. Check you may use them before "
        "building on this model."])


def _versions(config: dict) -> str:
    versions = config.get("versions") or {}
    lines = ["## Library versions", "",
             "Trained with the versions below. `model.pkl` needs the same fastai, fastcore and torch to load "
             "reliably; `model.onnx` needs only onnxruntime.", "", "| library | version |", "|---|---|"]
    return "\n".join(lines + [f"| {k} | {v} |" for k, v in versions.items()])


def _usage(config: dict, cfg: Config, files: list[str], sizes: dict[str, int]) -> str:
    repo, example = cfg.repo_id, "photo.jpg"
    blocks = ["## How to use", "",
              "Every snippet below can pin a revision (`revision=\"<commit sha>\"`) so it keeps getting exactly "
              "this model.", "", "### The demo's API, with `gradio_client`", ""]
    if cfg.space:
        blocks += ["```python", "from gradio_client import Client, handle_file", "",
                   f'client = Client("{cfg.space}")', f'client.predict(handle_file("{example}"), api_name="/predict")',
                   "```", ""]
    else:  # no Space was named at publish time: never a placeholder that fails when pasted
        blocks += [f"The Spaces that serve this model are listed on this page, under \"Spaces using {repo}\". "
                   "Pass one's name to `gradio_client.Client` and call `predict(handle_file(\"photo.jpg\"), "
                   "api_name=\"/predict\")`; `python -m training deploy` makes one.", ""]
    if "model.pkl" in files:
        blocks += _fastai_usage(repo, example, sizes)
    blocks += ["### onnxruntime, without torch or fastai", "", "```python", *_onnx_snippet(config, repo, example),
               "```", "", "The same with the serving code the demo runs (`serving/`, in the demo Space's files: "
               "copy it next to your script). It also reads large JPEGs at reduced size and handles 16-bit and "
               "animated images the way training did:", "", "```python",
               "from huggingface_hub import snapshot_download", "from serving.model import Classifier", "",
               f'folder = snapshot_download("{repo}", allow_patterns=["model.onnx", "config.json"])',
               f'print(Classifier.from_folder(folder).classify("{example}"))', "```"]
    return "\n".join(blocks)


def _fastai_usage(repo: str, example: str, sizes: dict[str, int]) -> list[str]:
    whole = sum(sizes.values())
    return [
        "### fastai, with `load_learner`", "",
        "`model.pkl` and `export.pkl` files are pickles: loading one runs code, so load them only from repos you "
        "trust (the Hub's scanner flags fastai pickles for this reason). `model.onnx` runs no code.", "",
        "```python", "from fastai.vision.all import load_learner", "from huggingface_hub import hf_hub_download", "",
        f'learn = load_learner(hf_hub_download("{repo}", "model.pkl"))  # model.pkl alone: '
        f'{_megabytes(sizes.get("model.pkl", 0))}',
        f'label, index, probs = learn.predict("{example}")', "```", "",
        "The Hub's own snippet works too (`pip install huggingface_hub[fastai]` first, for `toml`), but it "
        f"downloads every file in the repo, {_megabytes(whole)}, for a learner of "
        f"{_megabytes(sizes.get('model.pkl', 0))}:", "",
        "```python", "from huggingface_hub import from_pretrained_fastai", "",
        f'learn = from_pretrained_fastai("{repo}")', "```", ""]


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _onnx_snippet(config: dict, repo: str, example: str) -> list[str]:
    crop_first = (config.get("preprocess") or {}).get("resize_mode") == "crop"
    square = (["side = min(image.size)  # fastai's Resize(method='crop'): centre square first",
               "left, top = (image.width - side) // 2, (image.height - side) // 2",
               "image = image.crop((left, top, left + side, top + side))"] if crop_first else [])
    return [
        "import json", "", "import numpy as np", "import onnxruntime as ort",
        "from huggingface_hub import hf_hub_download", "from PIL import Image, ImageOps", "",
        f'config = json.load(open(hf_hub_download("{repo}", "config.json")))',
        f'session = ort.InferenceSession(hf_hub_download("{repo}", "model.onnx"))',
        'p = config["preprocess"]', "",
        f'image = ImageOps.exif_transpose(Image.open("{example}")).convert("RGBA")',
        "# transparency onto white, as training saw it",
        'image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("RGB")', *square,
        'image = image.resize((p["resize"], p["resize"]), Image.Resampling[p["resample"].upper()])',
        'left = (p["resize"] - p["crop"]) // 2',
        'image = image.crop((left, left, left + p["crop"], left + p["crop"]))',
        "x = (np.asarray(image, np.float32) / 255 - np.float32(p[\"mean\"])) / np.float32(p[\"std\"])",
        'logits = session.run(None, {"input": x.transpose(2, 0, 1)[None]})[0][0]',
        "probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()",
        'print({label: round(float(p), 4) for label, p in zip(config["labels"], probs)})']


def _join(labels: list[str]) -> str:
    return ", ".join(labels[:-1]) + f" and {labels[-1]}" if len(labels) > 1 else "".join(labels)
