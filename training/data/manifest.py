"""manifest.csv: one row per input URL or file, saying what became of it and why."""
from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from training.errors import StageError

# pending_review: a visitor's photo brought in by `data --from-feedback`, in DATA/feedback/, until review decides.
STATUSES = ("kept", "duplicate", "rejected", "failed", "pending_review")
# Reasons `python -m training review` gives. A person's decision fits the four statuses above, so every count
# that adds up over STATUSES still adds up: a deleted image is "rejected", a relabelled one is "kept".
REVIEW_REASONS = ("removed_by_review",  # rejected: moved to trash/ by a reviewer; `file` says where it lies
                  "relabelled",  # kept, under the label a reviewer moved it to
                  "kept_by_review")  # kept: a reviewer looked at it and kept it


@dataclass(frozen=True)
class Row:
    label: str
    url: str  # the URL, or the local file's path
    status: str  # one of STATUSES
    reason: str  # a short code (http_404, truncated, near_duplicate, ...); "" when kept and never reviewed
    file: str  # kept: its file under images/; duplicate: the kept file it repeats; removed_by_review: its
    #            file under trash/; pending_review: its file under feedback/; else ""
    source: str = ""  # "feedback" for a visitor's photo (`data --from-feedback`); "" for the data stage's own inputs


FIELDS = [f.name for f in fields(Row)]
# A label becomes a folder under images/: no slashes, no leading dot ("..", hidden), no control characters.
_FOLDER_NAME = re.compile(r"^[^/\\.\x00-\x1f][^/\\\x00-\x1f]*$")


def check_label(label: str) -> None:
    """Raise StageError unless `label` can be a folder name under images/."""
    if not _FOLDER_NAME.match(label):
        raise StageError(f"label {label!r} can't be a folder name: rename it without slashes, a leading dot "
                         "or control characters")


def write_manifest(rows: list[Row], path: Path) -> None:
    """Write rows atomically, so an interrupted run leaves the previous manifest whole."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def read_manifest(path: Path) -> list[Row]:
    """The rows of a manifest written by write_manifest."""
    with path.open(newline="", encoding="utf-8") as f:
        return [Row(**row) for row in csv.DictReader(f)]


def count_rows(rows: list[Row], labels: list[str]) -> dict:
    """Rows per label and status, their totals, and how often each status:reason occurs (summary.json's counts)."""
    per_label = {label: {"found": 0, **{s: 0 for s in STATUSES}} for label in labels}
    for r in rows:
        counts = per_label.setdefault(r.label, {"found": 0, **{s: 0 for s in STATUSES}})
        counts["found"] += 1
        counts[r.status] += 1
    return {
        "labels": per_label,
        "total": {k: sum(c[k] for c in per_label.values()) for k in ("found", *STATUSES)},
        "reasons": dict(Counter(f"{r.status}:{r.reason}" for r in rows if r.reason).most_common()),
    }
