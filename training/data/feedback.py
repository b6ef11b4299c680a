"""Bring visitors' corrections from the app (serving/feedback.py) into a data folder, for review before any training.

    python -m training data --from-feedback you/bears-feedback --name bears    # the Hub dataset the app pushes to
    python -m training data --from-feedback feedback/ --data data/bears       # or the app's FEEDBACK_DIR

Each row becomes a manifest row with source `feedback` and status `pending_review`; its photo, decoded within
the same budget and stored as the clean stage stores images, goes to DATA/feedback/<the visitor's label>/<hash>.jpg
("none of these" for null), not under images/, so no training sees it until `python -m training review` keeps
or moves it. DATA/feedback/rows.jsonl keeps each row as the app wrote it (the model's answer, for the review
page), with the file it became. A rerun brings in only rows it has not seen (by their place: source, rows file,
line); a photo already in the data folder becomes a `duplicate` row.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from serving.imaging import ImageRejected, open_upright_rgb, training_jpeg
from training.config import Config
from training.data.decisions import NONE_OF_THESE, PENDING, read_log
from training.data.lock import DataLock
from training.data.manifest import Row, check_label, read_manifest, write_manifest
from training.errors import StageError

log = logging.getLogger(__name__)

SOURCE = "feedback"
ROWS_FILE = "rows.jsonl"
HUB_REPO = re.compile(r"[\w.-]+/[\w.-]+")
IMAGE = re.compile(r"images/[0-9a-f]{16}\.jpg")  # what the app writes: nothing else is read from a row


def import_feedback(cfg: Config) -> dict:
    """Add the rows of cfg.from_feedback not yet in cfg.data_dir's manifest as pending_review; return the counts."""
    data_dir = cfg.data_dir
    if not (data_dir / "images").is_dir():
        raise StageError(f"no data folder at {data_dir}: feedback joins an existing dataset. Make it first with "
                         "`python -m training data`, or pass the one the model was trained on with --data")
    source = _fetch(cfg.from_feedback)
    with DataLock(data_dir, "python -m training data --from-feedback"):
        counts = _import(source, str(cfg.from_feedback), data_dir, cfg)
    log.info("feedback: %d new rows from %s: %d pending review in %s, %d duplicates, %d refused (%d already "
             "imported); review them with `python -m training review`", counts["new"], cfg.from_feedback,
             counts["pending_review"], data_dir / PENDING, counts["duplicate"], counts["rejected"], counts["seen"])
    return counts


def _fetch(where: str) -> Path:
    """The folder holding rows/ and images/: `where` itself, or a download of the Hub dataset it names."""
    if Path(where).expanduser().is_dir():
        return Path(where).expanduser()
    if not HUB_REPO.fullmatch(where):
        raise StageError(f"--from-feedback {where!r} is neither a folder nor a Hub dataset repo (user/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(where, repo_type="dataset", allow_patterns=["rows/*.jsonl", "images/*.jpg"]))
    except RepositoryNotFoundError as exc:
        raise StageError(f"the Hub dataset {where} was not found, or it is private and HF_TOKEN (or `hf auth "
                         "login`) gives no access to it") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise StageError(f"could not download the Hub dataset {where} ({exc}); check the network, or download it "
                         "and pass the folder") from exc


def _import(folder: Path, name: str, data_dir: Path, cfg: Config) -> dict:
    manifest = data_dir / "manifest.csv"
    # A folder of the person's own images has no manifest yet: it starts with every image as it stands.
    rows = read_manifest(manifest) if manifest.is_file() else [
        Row(p.parent.name, f, "kept", "", f) for p in sorted((data_dir / "images").glob("*/*.jpg"))
        if (f := p.relative_to(data_dir).as_posix())]
    seen = {r.url for r in rows}
    taken = {Path(r.file).name: r.file for r in rows if r.file} | _files_of(data_dir)
    labels = sorted(d.name for d in (data_dir / "images").iterdir() if d.is_dir() and not d.name.startswith("."))
    counts = {"new": 0, "seen": 0, "pending_review": 0, "duplicate": 0, "rejected": 0}
    kept_rows: list[dict] = []
    for url, row in _rows(folder, name):
        if url in seen:
            counts["seen"] += 1
            continue
        seen.add(url)
        new = _one(folder, url, row, labels, taken, data_dir, cfg)
        rows.append(new)
        counts["new"] += 1
        counts[new.status] += 1
        if new.status == "pending_review":
            kept_rows.append({**row, "file": new.file, "url": url})
    if counts["new"]:
        with (data_dir / PENDING / ROWS_FILE).open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept_rows)
        write_manifest(read_log(data_dir).apply(rows), manifest)
    return counts


def _files_of(data_dir: Path) -> dict[str, str]:
    """{file name: its path} of every image the data folder has, so a photo already there is a duplicate."""
    return {p.name: p.relative_to(data_dir).as_posix()
            for folder in ("images", PENDING) if (data_dir / folder).is_dir()
            for p in (data_dir / folder).glob("*/*.jpg")}


def _rows(folder: Path, name: str):
    """(url, row) for every line of every rows file, in order; a line that is no JSON object is skipped, logged."""
    for path in sorted((folder / "rows").glob("*.jsonl")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict):
                log.warning("feedback: %s line %d is not a row the app writes; skipped", path, n)
                continue
            yield f"feedback:{name}#{path.name}:{n}", row


def _one(folder: Path, url: str, row: dict, labels: list[str], taken: dict[str, str], data_dir: Path,
         cfg: Config) -> Row:
    """The manifest row for one feedback row, its photo written to feedback/<label>/ when it is new and usable."""
    said = row.get("visitor_label")
    label = NONE_OF_THESE if said is None else said
    image = row.get("image")
    if not isinstance(label, str) or not isinstance(image, str) or not IMAGE.fullmatch(image):
        return Row(str(label), url, "rejected", "malformed_row", "", SOURCE)
    try:
        check_label(label)
        jpeg, digest = _normalised(folder / image, cfg)
    except StageError:
        return Row(label, url, "rejected", "bad_label", "", SOURCE)
    except ImageRejected as exc:
        return Row(label, url, "rejected", exc.reason, "", SOURCE)
    name = f"{digest[:16]}.jpg"
    if name in taken:
        return Row(label, url, "duplicate", "same_pixels", taken[name], SOURCE)
    file = f"{PENDING}/{label}/{name}"
    target = data_dir / file
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(name + ".part")
    part.write_bytes(jpeg)
    part.replace(target)
    taken[name] = file
    if label not in labels and label != NONE_OF_THESE:
        log.warning("feedback: %s is labelled %r, not one of %s: review can move or delete it", url, label,
                    ", ".join(labels))
    return Row(label, url, "pending_review", "", file, SOURCE)


def _normalised(path: Path, cfg: Config) -> tuple[bytes, str]:
    """The photo as the clean stage stores it, decoded within the same limits (a dataset repo is anyone's with
    write access: its files are read as untrusted)."""
    if not path.is_file():
        raise ImageRejected("missing", f"{path} is not in the feedback folder")
    if path.stat().st_size > cfg.max_bytes:
        raise ImageRejected("too_large", f"{path.stat().st_size:,} bytes, over --max-bytes {cfg.max_bytes:,}")
    img = open_upright_rgb(path.read_bytes(), max_pixels=cfg.max_pixels, min_side=cfg.min_side,
                           shrink_to=(cfg.max_side, cfg.max_side), name=str(path))
    return training_jpeg(img, cfg.max_side)
