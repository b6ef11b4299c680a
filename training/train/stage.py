"""Fine-tune a resnet on the cleaned images, then evaluate it and write the model folder.

    python -m training train --data data/bears --out models/bears

Reads DATA/images/<label>/*.jpg (made by `python -m training data`) and DATA/summary.json if present.
Writes MODEL_DIR/ with export.pkl, model.onnx, config.json, settings.json, examples/ and report/
(history.csv, lr_find.png when --lr is not given, and what `training.train.evaluate` writes). Uses the GPU
with mixed precision when there is one.
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.error import URLError

import fastprogress.fastprogress as fastprogress
import torch
import torchvision.models
from fastai.callback.core import Callback
from fastai.callback.progress import CSVLogger
from fastai.callback.schedule import valley
from fastai.data.block import CategoryBlock, DataBlock
from fastai.data.transforms import Normalize, RandomSplitter, get_image_files, parent_label
from fastai.learner import AvgLoss
from fastai.metrics import error_rate
from fastai.torch_core import set_seed
from fastai.vision.augment import RandomResizedCrop, aug_transforms
from fastai.vision.core import imagenet_stats
from fastai.vision.data import ImageBlock
from fastai.vision.learner import vision_learner
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from training.config import Config
from training.errors import StageError
from training.train import distributed
from training.train.evaluate import evaluate
from training.train.export import EXAMPLES_PER_LABEL, export
from training.train.novelty import add_novelty_check, add_to_report, other_images
from training.train.quantize import add_int8_model
from training.train.quantize import add_to_report as add_int8_to_report

log = logging.getLogger(__name__)

TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50")
DATA_HINT = "run `python -m training data` first"


def train(cfg: Config) -> Path:
    """Fine-tune, evaluate and export; return the model folder.

    Everything is written to MODEL_DIR/.partial/ first and moved into place at the end, so a run that fails
    or is interrupted before that last step leaves the previous model, and its report, as they were.
    """
    images = cfg.data_dir / "images"
    counts = count_images(images)
    out = cfg.model_dir
    if out.exists() and not out.is_dir():
        raise StageError(f"--out {out} is a file; give a folder to write the model to")
    device = distributed.join()  # None in a single process
    set_seed(cfg.seed, reproducible=True)
    dls = build_dataloaders(cfg, images, device)
    learn = build_learner(dls, cfg)
    staging, made_out = out / ".partial", not out.exists()
    if distributed.is_main():
        shutil.rmtree(staging, ignore_errors=True)  # left by a run that was killed
        (staging / "report").mkdir(parents=True)
    try:
        with _bars_only_on_a_terminal():
            written = _train_into(staging, learn, cfg, counts)
    except BaseException:
        if distributed.is_main():
            shutil.rmtree(staging, ignore_errors=True)
            if made_out and not any(out.iterdir()):
                out.rmdir()
        raise
    if written:  # the main process: the others stop here
        _move_into(staging, out)
    return out


def _train_into(folder: Path, learn, cfg: Config, counts: dict[str, int]) -> bool:
    """Find the learning rate, fit, evaluate and write the model folder's files into `folder`.

    Return whether this process wrote them: with several processes only the main one evaluates and writes.
    """
    report = folder / "report"
    # With several processes the main one runs the finder by itself and tells the others its suggestion.
    lr = cfg.lr if cfg.lr is not None else distributed.on_main(lambda: find_lr(learn, report / "lr_find.png"))
    seconds = _fit(learn, cfg.epochs, lr, report / "history.csv")
    if not distributed.is_main():
        return False
    processes = distributed.world_size()
    with distributed.alone():  # the main process evaluates the whole validation split by itself
        evaluation = evaluate(learn, report)
    resolved = cfg.replace(data=cfg.data_dir, out=cfg.model_dir, lr=lr)
    dataset = _dataset_summary(cfg.data_dir, counts, learn.dls)
    _write_model(learn, folder, resolved, evaluation, dataset, seconds, processes)
    log.info("trained %s for 1 head-only epoch and %d more in %.0f s at lr %.3g%s: error rate %.1f%% on %d "
             "validation images; wrote %s (report: %s)", cfg.arch, cfg.epochs, seconds, lr,
             f" on {processes} processes" if processes > 1 else "", 100 * evaluation.metrics["error_rate"],
             dataset["valid_images"], cfg.model_dir, cfg.model_dir / "report" / "report.md")
    return True


@contextlib.contextmanager
def _bars_only_on_a_terminal():
    """Into a log file, fastai's per-epoch table without its progress bars.

    fastprogress means to draw bars on a terminal only, but its check never calls isatty(), so a log got
    thousands of bar fragments (lr_find alone draws a hundred bars). Its settings are global, so they are
    put back afterwards.
    """
    saved = fastprogress.NO_BAR, fastprogress.ConsoleProgressBar.fill
    if not sys.stdout.isatty():
        fastprogress.NO_BAR = True
        fastprogress.ConsoleProgressBar.fill = ""  # each bar still prints this once as it starts
    try:
        yield
    finally:
        fastprogress.NO_BAR, fastprogress.ConsoleProgressBar.fill = saved


def _write_model(learn, folder: Path, resolved: Config, evaluation, dataset: dict, seconds: float,
                 processes: int) -> None:
    """Write the model folder's files into `folder`, settings.json last."""
    learn.to_fp32()  # export.pkl and model.onnx are float32 whatever trained them
    # settings.json keeps the batch size asked for, config.json the one used (smaller on a small dataset).
    info = _config_info(resolved.replace(batch_size=learn.dls.bs), evaluation.metrics, dataset, seconds, processes)
    export(learn, folder, info=info, examples=evaluation.examples(EXAMPLES_PER_LABEL))
    train_items = [Path(p) for p in learn.dls.train.items]
    # The int8 model first: the "none of these" check calibrates a threshold for each model the folder holds.
    int8 = add_int8_model(folder, train_items, evaluation.items, evaluation.targets,
                          min_agreement=resolved.int8_min_agreement, max_error_gap=resolved.int8_max_error_gap,
                          seed=resolved.seed) if resolved.int8 else None
    others = other_images(resolved.other_dir)
    section = add_novelty_check(folder, train_items, evaluation.items, k=resolved.novelty_k,
                                pass_rate=resolved.novelty_pass_rate, others=others, seed=resolved.seed)
    add_to_report(folder / "report", section)
    add_int8_to_report(folder / "report", int8)
    resolved.write(folder / "settings.json")


def _move_into(staging: Path, out: Path) -> None:
    """Move what `staging` holds into `out`, replacing the earlier run's files; other files in `out` stay.

    settings.json goes first and comes back last: `python -m training all` takes a model folder whose
    settings match as up to date, so a half-moved folder must have none.
    """
    try:
        (out / "settings.json").unlink(missing_ok=True)
        for entry in sorted(staging.iterdir(), key=lambda e: e.name == "settings.json"):
            if (out / entry.name).is_dir():
                shutil.rmtree(out / entry.name)
            os.replace(entry, out / entry.name)
        staging.rmdir()
    except OSError as exc:
        raise StageError(f"could not move the new model into {out} ({exc}); what is left of it is in {staging}: "
                         "fix the cause and train again") from exc


def count_images(images: Path) -> dict[str, int]:
    """Images per label folder; raise StageError unless there are 2+ labels with 2+ images each."""
    if not images.is_dir():
        raise StageError(f"no images folder at {images}: check --name or --data, or build it with "
                         f"`python -m training data --data {images.parent}` and your labels (or --from-folder)")
    files = get_image_files(images)
    if not files:
        raise StageError(f"no images in {images}; {DATA_HINT}")
    stray = [f for f in files if f.parent.parent != images]
    if stray:
        raise StageError(f"{len(stray)} images are not directly in a label folder (e.g. {stray[0]}); "
                         f"put each image in {images}/<label>/, or {DATA_HINT}")
    counts = Counter(parent_label(f) for f in files)
    counts.update({d.name: 0 for d in images.iterdir() if d.is_dir() and d.name not in counts})
    if len(counts) < 2:
        raise StageError(f"only one label ({', '.join(counts)}) in {images}; a classifier needs at least two: "
                         f"add a folder of images for another label, e.g. `python -m training data --labels A B`")
    few = {label: n for label, n in counts.items() if n < 2}
    if few:
        raise StageError(f"too few images to split into training and validation: "
                         f"{', '.join(f'{k!r} has {v}' for k, v in sorted(few.items()))} in {images}; every label "
                         f"needs at least 2; add images or remove the folder, then {DATA_HINT}")
    return dict(sorted(counts.items()))


def build_dataloaders(cfg: Config, images: Path, device: torch.device | None = None):
    """The DataBlock of the lesson, split by cfg.seed; raises StageError if the split leaves a label out."""
    items = get_image_files(images)
    splitter = RandomSplitter(cfg.valid_pct, seed=cfg.seed)
    n_train = _check_split(items, splitter, cfg)
    block = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files, get_y=parent_label,
                      splitter=splitter, item_tfms=RandomResizedCrop(cfg.size, min_scale=cfg.min_scale),
                      batch_tfms=[*aug_transforms(), Normalize.from_stats(*imagenet_stats)])
    # The training loader drops its last partial batch, so a batch larger than the training set gives none;
    # with several processes, each trains on its share of the training set.
    share = n_train // distributed.world_size()
    if share < 1:
        raise StageError(f"{n_train} training images cannot be shared among {distributed.world_size()} processes; "
                         "add images or start fewer processes")
    bs = min(cfg.batch_size, share)
    if bs < cfg.batch_size:
        log.warning("only %d training images per process: using batches of %d instead of %d", share, bs, cfg.batch_size)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return block.dataloaders(images, bs=bs, num_workers=_num_workers(), device=device)


def _check_split(items, splitter, cfg: Config) -> int:
    """Check every label has a training image and the validation set is not empty; return the train size."""
    train_idx, valid_idx = splitter(items)
    if not len(valid_idx):
        raise StageError(f"--valid-pct {cfg.valid_pct} of {len(items)} images leaves no validation image; "
                         "raise --valid-pct or add images")
    missing = sorted({parent_label(f) for f in items} - {parent_label(items[i]) for i in train_idx})
    if missing:
        raise StageError(f"with seed {cfg.seed} and --valid-pct {cfg.valid_pct}, label(s) {', '.join(missing)} "
                         "get no training image: too few images to split; add images or lower --valid-pct")
    unseen = sorted({parent_label(f) for f in items} - {parent_label(items[i]) for i in valid_idx})
    if unseen:
        log.warning("label(s) %s have no validation image; their metrics will be empty", ", ".join(unseen))
    return len(train_idx)


def _num_workers() -> int:
    cpus = os.cpu_count() or 1
    if torch.cuda.is_available():
        return min(8, cpus)  # on a GPU, JPEG decoding is the bottleneck: give it the spare cores
    # On CPU the model already uses every core; on 2 cores worker processes would only contend with it.
    return 0 if cpus <= 2 else min(4, cpus // 2)


def resolve_arch(name: str):
    """The torchvision resnet of that name, or a timm model name when timm is installed."""
    if name in TORCHVISION_ARCHS:
        return getattr(torchvision.models, name)
    try:
        import timm
    except ImportError:
        raise StageError(f"unknown arch {name!r}: use one of {', '.join(TORCHVISION_ARCHS)}, "
                         "or `pip install timm` to use a timm model name") from None
    if not timm.list_models(name):
        raise StageError(f"unknown arch {name!r}: not one of {', '.join(TORCHVISION_ARCHS)} nor a timm model; "
                         "see `python -c \"import timm; print(timm.list_models('resnet*'))\"`")
    return name


def build_learner(dls, cfg: Config):
    """vision_learner with error_rate, on mixed precision when there is a GPU."""
    arch = resolve_arch(cfg.arch)
    try:
        learn = vision_learner(dls, arch, metrics=error_rate, pretrained=cfg.pretrained)
    except (URLError, ConnectionError) as exc:
        raise StageError(f"could not download the pretrained {cfg.arch} weights ({exc}); check the network, "
                         "or train from random weights with --no-pretrained") from exc
    if torch.cuda.is_available():
        learn.to_fp16()
    return learn


def find_lr(learn, plot: Path) -> float:
    """Run fastai's learning-rate finder, save its plot and return the 'valley' suggestion."""
    saved = learn.model_dir
    with tempfile.TemporaryDirectory() as tmp:
        learn.model_dir = Path(tmp)  # lr_find checkpoints the weights there; keep that out of the model folder
        try:
            # 3 significant digits: the suggestion is a float32 (0.0010000000474974513), and no more precise than that.
            lr = float(f"{learn.lr_find(suggest_funcs=(valley,), show_plot=False).valley:.3g}")
        finally:
            learn.model_dir = saved
    _plot_lr_find(learn.recorder.lrs, learn.recorder.losses, lr, plot)
    log.info("learning-rate finder suggests %.3g (plot: report/%s)", lr, plot.name)
    return lr


def _plot_lr_find(lrs: list, losses: list, lr: float, path: Path) -> None:
    # fastai's own plot goes through pyplot, which needs a display backend; the object API does not.
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(lrs[:-5], [float(x) for x in losses[:-5]])  # fastai skips the last 5 too: the loss has blown up
    ax.axvline(lr, color="tab:orange", linestyle="--", label=f"valley {lr:.2g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="loss", title="Learning-rate finder")
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")


def _fit(learn, epochs: int, lr: float, history: Path) -> float:
    """fine_tune (data-parallel when launched so) with a CSV history; return the seconds it took."""
    main = distributed.is_main()
    # fine_tune fits twice (frozen, then unfrozen); appending keeps the frozen epoch in the file.
    # Every process sees the same gathered metrics, so only the main one writes them.
    loggers = [CSVLogger(history.resolve(), append=True)] if main else []
    mean_loss = EpochMeanLoss()
    start = time.perf_counter()
    with distributed.data_parallel(learn):
        learn.fine_tune(epochs, lr, cbs=[*loggers, mean_loss])
    seconds = time.perf_counter() - start
    if main:
        _tidy_history(history, mean_loss.means)
    return seconds


class EpochMeanLoss(Callback):
    """The plain mean of each epoch's training-batch losses, for the report's over/underfitting verdict.

    fastai's train_loss column is a running average (beta 0.98) that restarts with each fit: with the dozen
    batches an epoch of a lesson-sized dataset has, it still carries epochs-old losses and reads as
    underfitting. Given to fine_tune, so it sees both fits and is never exported with the learner.
    """

    def __init__(self):
        self.means: list[float] = []
        self.loss = AvgLoss()  # fastai's own batch-size-weighted mean, the one its valid_loss column uses

    def before_epoch(self):
        self.loss.reset()

    def after_batch(self):
        if self.training:
            self.loss.accumulate(self.learn)

    def after_epoch(self):
        self.means.append(float("nan") if self.loss.value is None else float(self.loss.value))


def _tidy_history(path: Path, means: list[float]) -> None:
    """Rewrite CSVLogger's two appended tables as one, numbering epochs through, naming the phase and adding
    each epoch's mean train loss next to fastai's running one."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    header, table, phase = rows[0], [], "frozen"
    for row in rows[1:]:
        if row == header:
            phase = "unfrozen"
            continue
        mean = f"{means[len(table)]:.6f}" if len(table) < len(means) else ""
        table.append([len(table), phase, row[1], mean, *row[2:]])
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([[header[0], "phase", header[1], "train_loss_mean", *header[2:]], *table])


def _dataset_summary(data_dir: Path, counts: dict[str, int], dls) -> dict:
    summary_file = data_dir / "summary.json"
    try:
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StageError(f"{summary_file} is not valid JSON ({exc}); {DATA_HINT.replace('first', 'again')}") from exc
    return {"images_per_label": counts, "total_images": sum(counts.values()),
            "train_images": len(dls.train_ds), "valid_images": len(dls.valid_ds), "summary": summary}


def _config_info(cfg: Config, metrics: dict, dataset: dict, seconds: float, processes: int) -> dict:
    """config.json's fields beyond labels and preprocessing, in the contract's order."""
    headline = {k: metrics[k] for k in ("error_rate", "accuracy", "valid_loss", "valid_images", "per_class")}
    return {"arch": cfg.arch, "pretrained": cfg.pretrained, "metrics": headline, "dataset": dataset,
            "seed": cfg.seed, "made_by": "train",
            "training": {"epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size,
                         "valid_pct": cfg.valid_pct, "size": cfg.size, "min_scale": cfg.min_scale,
                         "device": "cuda" if torch.cuda.is_available() else "cpu", "processes": processes,
                         "seconds": round(seconds, 1)}}
