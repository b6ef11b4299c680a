"""The one command line: `python -m training <stage> [flags]`. Flags map one-to-one onto `Config`."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from training.config import DEFAULT_LABELS, Config
from training.errors import StageError

log = logging.getLogger("training")
D = Config()  # defaults, shown by --help
S = argparse.SUPPRESS  # flags without a default: absent from args, so Config's default applies


def at_least(minimum: int):
    """An argparse type: a whole number no smaller than `minimum`, else argparse's own error and usage."""
    def parse(text: str) -> int:
        value = int(text)  # a ValueError becomes argparse's "invalid int value"
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value
    parse.__name__ = "int"  # the name argparse's "invalid ... value" message uses
    return parse


def fraction(text: str) -> float:
    """An argparse type: a float strictly between 0 and 1."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def share(text: str) -> float:
    """An argparse type: a float from 0 to 1, both included."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}")
    return value


def positive(text: str) -> float:
    """An argparse type: a float above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


MIN_SIZE = 32  # a resnet halves its input five times: below 32 px it has nothing left to look at


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: ...)" only where it tells something: not to on/off switches, required flags, flags
    without a default, or help that already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if (action.required or action.default in (None, S) or isinstance(action.default, bool)
                or "default" in (action.help or "")):
            return action.help
        return super()._get_help_string(action)


def _data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to classify")
    g.add_argument("--name", default=D.name, help="dataset/model name: data/<name>, models/<name>")
    g.add_argument("--labels", nargs="+", metavar="LABEL", default=S,
                   help=f"class labels (default: those in --urls/--from-folder/--archive; for search: {' '.join(DEFAULT_LABELS)})")
    g = p.add_argument_group("where images come from (search unless --urls/--from-folder/--archive)")
    g.add_argument("--query", default=D.query, help="image-search template; {label} is replaced by each label")
    g.add_argument("--max-images", type=at_least(1), default=D.max_images, help="search results per label")
    g.add_argument("--urls", type=Path, default=S, help="CSV with header label,url; or a text file, one URL a line, for one label")
    g.add_argument("--from-folder", type=Path, default=S, help="a folder with one subfolder of images per label")
    g.add_argument("--archive", default=S, help="a .zip/.tgz of label folders, as a path or URL")
    g = p.add_argument_group("where the dataset goes")
    g.add_argument("--data", type=Path, default=S, help="folder to write the dataset to (default: data/<name>)")
    g = p.add_argument_group("download and clean")
    g.add_argument("--workers", type=at_least(1), default=D.workers, help="concurrent downloads")
    g.add_argument("--deadline", type=positive, default=D.deadline, help="seconds allowed for one whole file")
    g.add_argument("--max-bytes", type=at_least(1), default=D.max_bytes, help="largest file downloaded, in bytes")
    g.add_argument("--allow-private-urls", action="store_true", help="allow loopback/private addresses (testing only)")
    g.add_argument("--retry-failed", action="store_true", help="retry URLs that failed on an earlier run")
    g.add_argument("--min-side", type=at_least(1), default=D.min_side, help="reject images smaller than this, in pixels")
    g.add_argument("--max-side", type=at_least(1), default=D.max_side, help="resize so the longest side is at most this")
    g.add_argument("--min-per-label", type=at_least(0), default=D.min_per_label, help="fail if a label keeps fewer images")
    g = p.add_argument_group("photos of none of the labels (DATA/other/, never trained on; measures 'none of these')")
    g.add_argument("--other-queries", nargs="+", metavar="QUERY", default=S,
                   help="image searches for them (default: a few general ones for the bears, else none)")
    g.add_argument("--other-per-query", type=at_least(1), default=D.other_per_query, help="search results per query")


def _train_flags(p: argparse.ArgumentParser, *, with_name: bool) -> None:
    g = p.add_argument_group("training")
    if with_name:
        g.add_argument("--name", default=D.name, help="dataset/model name: data/<name>, models/<name>")
        g.add_argument("--data", type=Path, default=S, help="dataset folder made by `data` (default: data/<name>)")
    g.add_argument("--out", type=Path, default=S, help="model folder to write (default: models/<name>)")
    g.add_argument("--arch", default=D.arch, help="resnet18/34/50, or any timm model name")
    g.add_argument("--no-pretrained", dest="pretrained", action="store_false", default=S,
                   help="start from random weights (offline runs and tests; much less accurate)")
    g.add_argument("--epochs", type=at_least(1), default=D.epochs, help="epochs with the whole model unfrozen, after fastai's one "
                                                                                  "head-only epoch")
    g.add_argument("--size", type=at_least(MIN_SIZE), default=D.size, help="input size in pixels")
    g.add_argument("--batch-size", type=at_least(1), default=D.batch_size, help="images per batch")
    g.add_argument("--lr", type=positive, default=S, help="learning rate (default: the learning-rate finder's suggestion)")
    g.add_argument("--seed", type=int, default=D.seed, help="seed for the validation split and training")
    g.add_argument("--valid-pct", type=fraction, default=D.valid_pct, help="share of images held out for validation")
    g.add_argument("--other", type=Path, default=S, metavar="DIR",
                   help="images that show none of the labels, never trained on: the report measures how many the "
                        "'none of these' check catches (default: DATA/other/ when it exists)")
    g.add_argument("--novelty-pass-rate", type=fraction, default=D.novelty_pass_rate,
                   help="share of in-domain validation images the 'none of these' threshold lets pass")
    g.add_argument("--novelty-k", type=at_least(1), default=D.novelty_k,
                   help="the novelty score is the cosine distance to this nearest training image")
    _int8_flags(g)


def _int8_flags(g) -> None:
    g.add_argument("--no-int8", dest="int8", action="store_false", default=S,
                   help="write no model.int8.onnx (by default it is written, checked against model.onnx, and served "
                        "where it passes the check below and the CPU runs it faster)")
    g.add_argument("--int8-min-agreement", type=share, default=D.int8_min_agreement, metavar="SHARE",
                   help="the int8 model serves only if its top label is the float model's on this share of the "
                        "validation images")
    g.add_argument("--int8-max-error-gap", type=share, default=D.int8_max_error_gap, metavar="GAP",
                   help="...and its validation error rate is at most this much above the float model's (0.005: half "
                        "a point)")


def _hub_flags(p: argparse.ArgumentParser, *, in_all: bool, what: str = "repo") -> None:
    title = "the Space" if what == "Space" else "publish to the Hugging Face Hub"
    g = p.add_argument_group(f"{title} (token from HF_TOKEN or `hf auth login`)")
    if in_all:
        g.add_argument("--repo-id", default=S, metavar="NS/NAME",
                       help="model repo to publish to after training (default: don't publish)")
        g.add_argument("--space", default=S, metavar="NS/NAME",
                       help="Gradio Space to deploy the published model to (needs --repo-id; default: don't deploy)")
    g.add_argument("--private", action="store_true",
                   help=f"create the {what} private (an existing {what} keeps its visibility)")
    g.add_argument("--license", default=D.license,
                   help=f"license in the {'Space' if what == 'Space' else 'model card'}'s metadata (a Hub license id)")
    if in_all:
        g.add_argument("--hardware", default=S, help="Space hardware, e.g. cpu-upgrade (default: the Space's own, "
                                                     "free cpu-basic when new)")


def _dry_run_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dry run")
    g.add_argument("--dry-run", action="store_true", help="write the files that would be uploaded to --out; contact nobody")
    g.add_argument("--out", dest="dry_run_out", type=Path, metavar="DIR", default=None,
                   help="new or empty folder for --dry-run")


def build_parser() -> argparse.ArgumentParser:
    fmt = HelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m training", formatter_class=fmt,
        description="From labels to a public image classifier: data → train → publish → deploy.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    parser.stages = sub.choices  # name -> that stage's parser, for errors in its own terms (see main)

    p = sub.add_parser("data", formatter_class=fmt, help="find, download, verify, clean and deduplicate images",
                       description="Build data/<name>/images/<label>/ and a manifest accounting for every URL.")
    _data_flags(p)
    p.add_argument("--from-feedback", default=S, metavar="REPO_OR_DIR",
                   help="instead: bring the app's feedback (its FEEDBACK_REPO dataset or FEEDBACK_DIR) into the data "
                        "folder, pending review (DATA/feedback/), then `python -m training review` keeps or moves it")

    p = sub.add_parser("train", formatter_class=fmt, help="fine-tune, evaluate and export a model folder",
                       description="Fine-tune a resnet on data/<name>/images and write models/<name>/.")
    _train_flags(p, with_name=True)

    p = sub.add_parser("all", formatter_class=fmt,
                       help="data → train (→ publish → deploy) → serve, skipping stages already up to date",
                       description="The whole job: build the dataset, train, publish with --repo-id, deploy the "
                                   "published revision with --space, then serve the model with app.py. Data and "
                                   "training are skipped when their output is up to date with these settings.")
    _data_flags(p)
    _train_flags(p, with_name=False)
    _hub_flags(p, in_all=True)
    p.add_argument("--no-serve", dest="serve", action="store_false",
                   help="stop after training (and publishing and deploying, when asked)")

    p = sub.add_parser("publish", formatter_class=fmt, help="push a model folder and its model card to a Hub model repo",
                       description="Upload model.onnx, config.json, export.pkl (as model.pkl, with a pyproject.toml, "
                                   "for from_pretrained_fastai), the report, examples/ and a model card to a Hub model "
                                   "repo in one commit; print the commit sha.")
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="model folder made by `train`, e.g. models/bears")
    p.add_argument("--repo-id", required=True, metavar="NS/NAME", help="model repo, created if missing")
    p.add_argument("--space", default=S, metavar="NS/NAME", help="the Space serving it, named in the card's examples")
    _hub_flags(p, in_all=False)
    _dry_run_flags(p)

    p = sub.add_parser("deploy", formatter_class=fmt, help="create or update the Gradio Space serving a published model",
                       description="Upload app.py, requirements.txt, serving/ and the examples to a Gradio Space, with "
                                   "preload_from_hub for the model files the app reads; set MODEL_REPO and "
                                   "MODEL_REVISION, and print the Space's URL.")
    p.add_argument("--space", required=True, metavar="NS/NAME", help="Space to create or update")
    p.add_argument("--model-repo", dest="repo_id", required=True, metavar="NS/NAME", help="model repo it serves")
    p.add_argument("--revision", required=True, metavar="SHA", help="the commit sha `publish` printed")
    p.add_argument("--allow-branch", action="store_true",
                   help="accept a branch for --revision: the demo then changes with every publish")
    p.add_argument("--hardware", default=S, help="Space hardware, e.g. cpu-upgrade (default: keep the Space's own, "
                                                 "free cpu-basic when new)")
    p.add_argument("--model-dir", type=Path, default=None,
                   help="with --dry-run: the published model folder, for its labels and examples")
    p.add_argument("--feedback-repo", default=S, metavar="NS/NAME",
                   help="turn on visitors' corrections: a Hub dataset repo (created private) the Space pushes them to; "
                        "needs a token with write access as the Space secret HF_TOKEN (default: leave it as it is)")
    _hub_flags(p, in_all=False, what="Space")
    _dry_run_flags(p)

    p = sub.add_parser("review", formatter_class=fmt, help="fix the data on a local page, hardest images first",
                       description="A local page showing the images the model finds hardest, by loss, for a label and "
                                   "split. Keep, delete (to DATA/trash/) or relabel each, with undo; changes go to "
                                   "DATA/images and are recorded in DATA/manifest.csv and DATA/review.csv, which "
                                   "reruns of `data` honour. Train again afterwards to use the cleaned data.")
    p.add_argument("out", type=Path, metavar="MODEL_DIR", help="model folder made by `train`, e.g. models/bears")
    p.add_argument("--data", type=Path, default=S, metavar="DIR",
                   help="the data folder the model was trained on (default: the one MODEL_DIR/settings.json names)")
    p.add_argument("--port", dest="review_port", type=int, default=D.review_port, metavar="PORT",
                   help="port of the page on 127.0.0.1")
    p.add_argument("--count", dest="review_count", type=at_least(1), default=D.review_count, metavar="N",
                   help="images shown per label and split, hardest first")

    p = sub.add_parser("convert", formatter_class=fmt, help="turn an existing export.pkl into a model folder",
                       description="Convert a fastai export.pkl (e.g. from the course notebook) to model.onnx + config.json.")
    p.add_argument("export_pkl", type=Path, help="path to export.pkl")
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--size", type=at_least(MIN_SIZE), default=None, help="input size (default: read from the learner's transforms)")
    p.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="the images it was trained on (DIR/images/<label>/ or DIR/<label>/): adds the 'none of these' "
                        "check, split as training does (--valid-pct, --seed)")
    p.add_argument("--valid-pct", type=fraction, default=D.valid_pct, help="share of --data held out for validation")
    p.add_argument("--seed", type=int, default=D.seed, help="seed of the validation split")
    p.add_argument("--other", type=Path, default=None, metavar="DIR",
                   help="images that show none of the labels, to measure the check on (default: DATA/other/)")
    p.add_argument("--novelty-pass-rate", type=fraction, default=D.novelty_pass_rate,
                   help="share of validation images the 'none of these' threshold lets pass")
    p.add_argument("--novelty-k", type=at_least(1), default=D.novelty_k, help="the k-th nearest training image")
    _int8_flags(p)  # with --data only: the int8 model is calibrated on its training images
    for stage in parser.stages.values():  # -v after the stage name too; absent unless given, so either place works
        stage.add_argument("-v", "--verbose", action="store_true", default=S, help="debug logging")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Fill a Config from whichever flags this stage has; the rest keep their defaults."""
    known = {f for f in Config.__dataclass_fields__}
    values = {k: v for k, v in vars(args).items() if k in known and v is not None}
    for name in ("labels", "other_queries"):
        if name in values:
            values[name] = tuple(values[name])
    return Config(**values)


def _dry_run_out(args: argparse.Namespace) -> Path | None:
    """--out when --dry-run is given; both or neither."""
    if args.dry_run != (args.dry_run_out is not None):
        raise StageError("--dry-run and --out DIR go together: --dry-run writes the files it would upload to DIR")
    return args.dry_run_out


# What an interrupted stage leaves behind, and what to do next.
INTERRUPTED = {
    "data": "downloads that finished are kept; rerun the same command to fetch the rest",
    "train": "the model folder is as it was before this run; rerun the same command to train again",
    "all": "stages that finished are kept; rerun the same command to go on from there",
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would answer with the top-level usage; the stage's own lists the flags meant
        parser.stages[args.stage].error(f"unrecognized arguments: {' '.join(unknown)}")
    # Under `accelerate launch` every process runs this; only the main one (RANK 0) reports progress.
    quiet = int(os.environ.get("RANK", "0")) > 0
    logging.basicConfig(level=logging.WARNING if quiet else logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("httpx2").setLevel(logging.WARNING)  # huggingface_hub's client: one line per request
        logging.getLogger("ddgs").setLevel(logging.WARNING)  # an INFO line per search engine that failed
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per downloaded URL drowns the summary
    try:
        return _run(args)
    except StageError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        if sys.stdout.isatty():
            print(flush=True)  # off the line a progress bar was drawing
        log.error("interrupted: %s", INTERRUPTED.get(args.stage, "rerun the same command"))
        return 130


def _run(args: argparse.Namespace) -> int:
    # Stages import lazily: `data` must not pay for importing torch, nor `--help` for anything.
    if args.stage == "data" and getattr(args, "from_feedback", None):
        from training.data.feedback import import_feedback
        import_feedback(config_from_args(args))
    elif args.stage == "data":
        from training.data.stage import build_dataset
        build_dataset(config_from_args(args))
    elif args.stage == "train":
        from training.train.stage import train
        train(config_from_args(args))
    elif args.stage == "all":
        from training.pipeline import run_all
        run_all(config_from_args(args), serve=args.serve)
    elif args.stage == "publish":
        from training.hub.publish import publish
        sha = publish(args.model_dir, config_from_args(args), dry_run_out=_dry_run_out(args))
        if sha:
            print(sha)  # alone on stdout, so `SHA=$(python -m training publish ...)` works
    elif args.stage == "deploy":
        from training.hub.deploy import deploy
        url = deploy(config_from_args(args), args.revision, allow_branch=args.allow_branch, model_dir=args.model_dir,
                     dry_run_out=_dry_run_out(args))
        if url:
            print(url)
    elif args.stage == "review":
        from training.review.stage import review
        review(config_from_args(args))
    elif args.stage == "convert":
        from training.train.convert import convert
        convert(args.export_pkl, args.out, size=args.size, data=args.data,
                settings=D.replace(valid_pct=args.valid_pct, seed=args.seed, other=args.other,
                                   novelty_pass_rate=args.novelty_pass_rate, novelty_k=args.novelty_k,
                                   **{k: v for k in ("int8", "int8_min_agreement", "int8_max_error_gap")
                                      if (v := getattr(args, k, None)) is not None}))
    return 0
