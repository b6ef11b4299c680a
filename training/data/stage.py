"""The data stage: labels (or a URL list, folder or archive) in, a clean labelled image folder out.

    python -m training data --labels grizzly black teddy --query "{label} bear"

Writes data/<name>/images/<label>/<hash>.jpg, manifest.csv (one row per input URL or file: kept,
duplicate, rejected or failed, and why) and summary.json. Rerunning reuses the search cache and
every finished download, so it does no network work twice, and keeps the decisions made with
`python -m training review` (review.csv): what a reviewer deleted or relabelled stays that way.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from serving.imaging import FORMAT_NAMES
from training.config import DEFAULT_LABELS, DEFAULT_OTHER_QUERIES, Config
from training.data.clean import Source, clean_images
from training.data.decisions import read_log
from training.data.download import download_all
from training.data.feedback import SOURCE as FEEDBACK
from training.data.lock import LOCK_NAME, DataLock
from training.data.manifest import (
    Row,
    check_label,
    count_rows,
    read_manifest,
    write_manifest,
)
from training.data.search import SearchEngine, search_images
from training.data.sources import (
    archive_items,
    folder_items,
    input_fingerprint,
    read_url_list,
)
from training.errors import StageError

log = logging.getLogger(__name__)


def build_dataset(cfg: Config, engine: SearchEngine | None = None, allow_address=None) -> dict:
    """Gather, download and clean images into cfg.data_dir; return the summary written to summary.json."""
    new = not cfg.data_dir.exists()
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        # A review page open on this folder moves images too; one writer at a time, or each undoes the other.
        with DataLock(cfg.data_dir, "python -m training data"):
            summary = _build(cfg, engine, allow_address)
    except BaseException:
        if new:  # refused before anything was fetched (a missing --urls file, say): leave no empty folder behind
            _remove_if_only_lock(cfg.data_dir)
        raise
    _build_other_set(cfg, engine, allow_address)
    return summary


def other_queries(cfg: Config) -> tuple[str, ...]:
    """The searches for photos of none of the labels: --other-queries, or the bears' own when searching for them."""
    if cfg.urls or cfg.from_folder or cfg.archive:
        return cfg.other_queries
    return cfg.other_queries or (DEFAULT_OTHER_QUERIES if not cfg.labels else ())


def _build_other_set(cfg: Config, engine: SearchEngine | None, allow_address) -> None:
    """DATA/other/: a small data folder of photos showing none of the labels (one folder per query under its
    images/, its own manifest), fetched and cleaned like the rest, for `train` to measure "none of these" on.
    Outside DATA/images/, so never trained on; a search that finds nothing only means it isn't measured."""
    queries = other_queries(cfg)
    if not queries:
        return
    other = cfg.replace(data=cfg.other_dir, labels=queries, query="{label}", max_images=cfg.other_per_query,
                        min_per_label=0, urls=None, from_folder=None, archive=None, other_queries=())
    log.info("data: %d searches for photos of none of the labels, into %s", len(queries), other.data_dir)
    try:
        build_dataset(other, engine, allow_address)
    except StageError as exc:
        log.warning("no photos of none of the labels (%s): the report will say the check was not measured", exc)


def _remove_if_only_lock(data_dir: Path) -> None:
    if [p.name for p in data_dir.iterdir()] == [LOCK_NAME]:
        (data_dir / LOCK_NAME).unlink()
        data_dir.rmdir()


def _build(cfg: Config, engine: SearchEngine | None, allow_address) -> dict:
    data_dir = cfg.data_dir
    inputs_seen = input_fingerprint(cfg.urls, cfg.from_folder)  # before reading: an edit during the run counts
    review = read_log(data_dir)  # decisions made with `python -m training review`, kept on every rerun
    inputs = _gather_inputs(cfg, engine)
    labels = _labels(cfg, inputs)
    rows: list[Row | None] = [None] * len(inputs)
    unique = _mark_repeated_urls(inputs, rows)

    urls = [(i, label, ref) for i, (label, ref, is_url) in enumerate(inputs) if i in unique and is_url]
    fetched = download_all([(label, ref) for _, label, ref in urls], data_dir, cfg, allow_address=allow_address)
    sources: list[tuple[int, Source]] = []
    for (i, label, ref), got in zip(urls, fetched):
        if got.status == "ok":
            sources.append((i, Source(label, ref, data_dir / got.file)))
        else:
            rows[i] = Row(label, ref, got.status, got.reason, "")
    sources += [(i, Source(label, ref, Path(ref))) for i, (label, ref, is_url) in enumerate(inputs)
                if i in unique and not is_url]
    for (i, _), row in zip(sources, clean_images([s for _, s in sources], data_dir, cfg, review)):
        rows[i] = row
    rows += _feedback_rows(data_dir)  # no input of this run, but in the data folder all the same

    write_manifest(rows, data_dir / "manifest.csv")  # type: ignore[arg-type]
    cfg.write(data_dir / "settings.json", inputs=inputs_seen)  # how this folder was made, and from what
    summary = _summarise(rows, labels, cfg)  # type: ignore[arg-type]
    (data_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _log_summary(summary, data_dir)
    _check_enough(summary, cfg, labels)
    return summary


def _feedback_rows(data_dir: Path) -> list[Row]:
    """The rows `data --from-feedback` added to the manifest (as review has left them), kept by every rerun."""
    path = data_dir / "manifest.csv"
    return [r for r in read_manifest(path) if r.source == FEEDBACK] if path.is_file() else []


def _gather_inputs(cfg: Config, engine: SearchEngine | None) -> list[tuple[str, str, bool]]:
    """(label, URL or path, is_url) for every input, in order; search only when nothing else is given."""
    for label in cfg.labels:  # before searching for them
        check_label(label)
    pairs: list[tuple[str, str, bool]] = []
    if cfg.urls:
        pairs += [(label, url, True) for label, url in read_url_list(cfg.urls, cfg.labels)]
    if cfg.from_folder:
        pairs += [(label, path, False) for label, path in folder_items(cfg.from_folder, cfg.labels)]
    if cfg.archive:
        pairs += [(label, path, False) for label, path in archive_items(cfg.archive, cfg.data_dir, cfg.labels)]
    if not (cfg.urls or cfg.from_folder or cfg.archive):
        found = search_images(cfg, engine)
        pairs = [(label, url, True) for label, urls in found.items() for url in urls]
    for label in {p[0] for p in pairs}:  # labels a CSV, folder or archive brought in
        check_label(label)
    return pairs


def _labels(cfg: Config, inputs: list[tuple[str, str, bool]]) -> list[str]:
    if cfg.labels:
        return list(cfg.labels)
    if not (cfg.urls or cfg.from_folder or cfg.archive):
        return list(DEFAULT_LABELS)
    return list(dict.fromkeys(label for label, _, _ in inputs))


def _mark_repeated_urls(inputs: list[tuple[str, str, bool]], rows: list[Row | None]) -> set[int]:
    """Row a repeat of the same (label, URL) as a duplicate; return the indexes of first occurrences."""
    first: dict[tuple[str, str], int] = {}
    for i, (label, ref, _) in enumerate(inputs):
        if (label, ref) in first:
            rows[i] = Row(label, ref, "duplicate", "same_url", "")
        else:
            first[(label, ref)] = i
    return set(first.values())


def _summarise(rows: list[Row], labels: list[str], cfg: Config) -> dict:
    counts = count_rows(rows, labels)
    return {
        "name": cfg.name,
        "source": _describe_source(cfg),
        **counts,
        "settings": {k: cfg.to_json()[k] for k in ("max_images", "min_side", "max_side", "near_duplicate_distance")},
    }


def _describe_source(cfg: Config) -> str:
    # Names, not full paths: the summary travels into config.json and the published model card.
    given = [f"{flag} {value if str(value).startswith(('http://', 'https://')) else Path(value).name}"
             for flag, value in (("urls", cfg.urls), ("folder", cfg.from_folder), ("archive", cfg.archive)) if value]
    return "; ".join(given) if given else f"image search (ddgs): {cfg.query!r}"


def _log_summary(summary: dict, data_dir: Path) -> None:
    log.info("%-20s %6s %6s %9s %8s %6s", "label", "found", "kept", "duplicate", "rejected", "failed")
    for label, c in summary["labels"].items():
        log.info("%-20s %6d %6d %9d %8d %6d", label, c["found"], c["kept"], c["duplicate"], c["rejected"], c["failed"])
    t, reasons = summary["total"], summary["reasons"]
    log.info("data: %d of %d inputs kept in %s (manifest.csv says why for the rest)",
             t["kept"], t["found"], data_dir / "images")
    refused = {reason: reasons.get(f"rejected:{reason}", 0) for reason in ("not_image", "blank", "too_costly")}
    if any(refused.values()):
        not_image, blank, costly = refused.values()
        log.info("data: refused %d files that are no image we read (%s, whatever the file name), %d blank images "
                 "and %d too costly to decode", not_image, FORMAT_NAMES, blank, costly)


# Loopback and private-network URLs are refused by default: a URL list from a stranger must not reach them.
PRIVATE_HINT = " (private and loopback addresses are refused; --allow-private-urls is for testing)"


def _check_enough(summary: dict, cfg: Config, labels: list[str]) -> None:
    # The run's labels only: visitors' photos are counted under theirs ("none of these", say), which need none.
    short = {label: summary["labels"][label]["kept"] for label in labels
             if summary["labels"][label]["kept"] < cfg.min_per_label}
    if short:
        listed = ", ".join(f"{label!r} kept {n}" for label, n in short.items())
        reasons = ", ".join(f"{reason} ({n})" for reason, n in list(summary["reasons"].items())[:3])
        hint = PRIVATE_HINT if "rejected:private_address" in summary["reasons"] else ""
        raise StageError(
            f"too few images after cleaning: {listed} (need --min-per-label {cfg.min_per_label}). "
            f"The commonest reasons: {reasons or 'none recorded'}{hint}; {cfg.data_dir / 'manifest.csv'} has one "
            "row per image. Add images with --max-images, --urls or --from-folder, then rerun")
