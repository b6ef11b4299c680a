"""manifest.csv: one row per input URL or file, saying what became of it and why."""
from __future__ import annotations

import csv
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

STATUSES = ("kept", "duplicate", "rejected", "failed")


@dataclass(frozen=True)
class Row:
    label: str
    url: str  # the URL, or the local file's path
    status: str  # one of STATUSES
    reason: str  # "" when kept; a short code otherwise (http_404, truncated, near_duplicate, ...)
    file: str  # kept: its file under images/; duplicate: the kept file it repeats; else ""


FIELDS = [f.name for f in fields(Row)]


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
