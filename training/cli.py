"""The one command line: `python -m training <stage> [flags]`. Flags map one-to-one onto `Config`."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from training.config import DEFAULT_LABELS, Config
from training.errors import StageError

log = logging.getLogger("training")
D = Config()  # defaults, shown by --help
S = argparse.SUPPRESS  # flags without a default: absent from args, so Config's default applies


def _data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to classify")
    g.add_argument("--name", default=D.name, help="dataset/model name: data/<name>, models/<name>")
    g.add_argument("--labels", nargs="+", metavar="LABEL", default=S,
                   help=f"class labels (default: those in --urls/--from-folder/--archive; for search: {' '.join(DEFAULT_LABELS)})")
    g = p.add_argument_group("where images come from (search unless --urls/--from-folder/--archive)")
    g.add_argument("--query", default=D.query, help="image-search template; {label} is replaced by each label")
    g.add_argument("--max-images", type=int, default=D.max_images, help="search results per label")
    g.add_argument("--urls", type=Path, default=S, help="CSV with header label,url; or a text file, one URL a line, for one label")
    g.add_argument("--from-folder", type=Path, default=S, help="a folder with one subfolder of images per label")
    g.add_argument("--archive", default=S, help="a .zip/.tgz of label folders, as a path or URL")
    g.add_argument("--data", type=Path, default=S, help="dataset folder (default: data/<name>)")
    g = p.add_argument_group("download and clean")
    g.add_argument("--workers", type=int, default=D.workers, help="concurrent downloads")
    g.add_argument("--deadline", type=float, default=D.deadline, help="seconds allowed for one whole file")
    g.add_argument("--max-bytes", type=int, default=D.max_bytes, help="largest file downloaded, in bytes")
    g.add_argument("--allow-private-urls", action="store_true", help="allow loopback/private addresses (testing only)")
    g.add_argument("--retry-failed", action="store_true", help="retry URLs that failed on an earlier run")
    g.add_argument("--min-side", type=int, default=D.min_side, help="reject images smaller than this, in pixels")
    g.add_argument("--max-side", type=int, default=D.max_side, help="resize so the longest side is at most this")
    g.add_argument("--min-per-label", type=int, default=D.min_per_label, help="fail if a label keeps fewer images")


def _train_flags(p: argparse.ArgumentParser, *, with_name: bool) -> None:
    g = p.add_argument_group("training")
    if with_name:
        g.add_argument("--name", default=D.name, help="dataset/model name: data/<name>, models/<name>")
        g.add_argument("--data", type=Path, default=S, help="dataset folder made by `data` (default: data/<name>)")
    g.add_argument("--out", type=Path, default=S, help="model folder to write (default: models/<name>)")
    g.add_argument("--arch", default=D.arch, help="resnet18/34/50, or any timm model name")
    g.add_argument("--no-pretrained", dest="pretrained", action="store_false", default=S,
                   help="start from random weights (offline runs and tests; much less accurate)")
    g.add_argument("--epochs", type=int, default=D.epochs, help="fine-tuning epochs")
    g.add_argument("--size", type=int, default=D.size, help="input size in pixels")
    g.add_argument("--batch-size", type=int, default=D.batch_size, help="images per batch")
    g.add_argument("--lr", type=float, default=S, help="learning rate (default: the learning-rate finder's suggestion)")
    g.add_argument("--seed", type=int, default=D.seed, help="seed for the validation split and training")
    g.add_argument("--valid-pct", type=float, default=D.valid_pct, help="share of images held out for validation")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m training", formatter_class=fmt,
        description="From labels to a public image classifier: data → train → publish → deploy.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    p = sub.add_parser("data", formatter_class=fmt, help="find, download, verify, clean and deduplicate images",
                       description="Build data/<name>/images/<label>/ and a manifest accounting for every URL.")
    _data_flags(p)

    p = sub.add_parser("train", formatter_class=fmt, help="fine-tune, evaluate and export a model folder",
                       description="Fine-tune a resnet on data/<name>/images and write models/<name>/.")
    _train_flags(p, with_name=True)

    p = sub.add_parser("all", formatter_class=fmt, help="data → train → serve, skipping stages already up to date",
                       description="The whole job: build the dataset, train, then serve the model with app.py. "
                                   "Each stage is skipped when its output is up to date with these settings.")
    _data_flags(p)
    _train_flags(p, with_name=False)
    p.add_argument("--no-serve", dest="serve", action="store_false", help="stop after training")

    p = sub.add_parser("convert", formatter_class=fmt, help="turn an existing export.pkl into a model folder",
                       description="Convert a fastai export.pkl (e.g. from the course notebook) to model.onnx + config.json.")
    p.add_argument("export_pkl", type=Path, help="path to export.pkl")
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--size", type=int, default=None, help="input size (default: read from the learner's transforms)")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Fill a Config from whichever flags this stage has; the rest keep their defaults."""
    known = {f for f in Config.__dataclass_fields__}
    values = {k: v for k, v in vars(args).items() if k in known and v is not None}
    if "labels" in values:
        values["labels"] = tuple(values["labels"])
    return Config(**values)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per downloaded URL drowns the summary
    try:
        return _run(args)
    except StageError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; finished work is kept, rerun the same command to continue")
        return 130


def _run(args: argparse.Namespace) -> int:
    # Stages import lazily: `data` must not pay for importing torch, nor `--help` for anything.
    if args.stage == "data":
        from training.data import build_dataset
        build_dataset(config_from_args(args))
    elif args.stage == "train":
        from training.train import train
        train(config_from_args(args))
    elif args.stage == "all":
        from training.pipeline import run_all
        run_all(config_from_args(args), serve=args.serve)
    elif args.stage == "convert":
        from training.convert import convert
        convert(args.export_pkl, args.out, size=args.size)
    return 0
