"""DATA/review.csv: every decision `python -m training review` made, which reruns of `data` honour.

Its format lives in the data stage, which replays it on every rerun; the review page only appends to it.

    python -m training review models/bears --data data/bears    # writes data/bears/review.csv
    python -m training data ...                                 # reads it: deleted images stay deleted

Each row is one change: `time,action,original,before,after`, paths relative to DATA. `original` names the
image by where cleaning first put it (images/<label>/<hash>.jpg), and stays its name for good. `action`
is keep, delete or relabel, or undo, which reverses the latest change not yet undone. The file only
grows, so it is also the audit trail. Replaying it gives each image's place now; `apply` rewrites
manifest rows to match, which the review page does after every change and the clean stage does on every
rerun. That is why a rerun of `data` keeps review decisions.
"""
from __future__ import annotations

import csv
import io
from dataclasses import astuple, dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from training.data.manifest import Row
from training.errors import StageError

LOG_NAME = "review.csv"
ACTIONS = ("keep", "delete", "relabel", "undo")
TRASH = "trash"
# Visitors' photos (`data --from-feedback`) wait in feedback/<the visitor's label>/<name> until reviewed; kept as
# "none of these", they go to other/feedback/<name>, with the photos that measure the "none of these" check.
PENDING, OTHER = "feedback", "other/feedback"
NONE_OF_THESE = "none of these"


@dataclass(frozen=True)
class Change:
    """One decision: the image first kept at `original` went from `before` to `after`."""
    time: str  # ISO 8601, UTC
    action: str  # one of ACTIONS
    original: str
    before: str
    after: str

    @property
    def timestamp(self) -> float:
        return datetime.fromisoformat(self.time).timestamp()


FIELDS = [f.name for f in fields(Change)]


def now() -> str:
    """The time stamp written with a change."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def image_path(path: object) -> tuple[str, str] | None:
    """(label, name) when `path` is images/<label>/<name>, feedback/<label>/<name> or other/feedback/<name> (label:
    "none of these"), or one of those under trash/, with plain names; else None.

    Plain: not empty, not hidden (so not . or ..), no separator. Those are the only paths review writes or reads,
    so a log naming any other (outside the data folder, say) was not written by review, and is not acted on.
    """
    if not isinstance(path, str):
        return None
    parts = path.split("/")
    parts = parts[1:] if parts[0] == TRASH else parts
    if len(parts) == 3 and "/".join(parts[:2]) == OTHER and _plain(parts[2]):
        return NONE_OF_THESE, parts[2]
    if len(parts) != 3 or parts[0] not in ("images", PENDING) or not all(map(_plain, parts[1:])):
        return None
    return parts[1], parts[2]


def is_original(path: object) -> bool:
    """Whether `path` can name an image in the log: where cleaning first put it, images/<label>/<name>, or where
    `data --from-feedback` put a visitor's photo, feedback/<label>/<name>."""
    return image_path(path) is not None and not in_trash(path) and not is_other(path)


def is_pending(path: str) -> bool:
    """Whether `path` is a visitor's photo waiting for review: feedback/<label>/<name>."""
    return path.startswith(PENDING + "/")


def is_other(path: str) -> bool:
    """Whether `path` is a visitor's photo kept as showing none of the labels: other/feedback/<name>."""
    return path.startswith(OTHER + "/")


def _plain(name: str) -> bool:
    return bool(name) and not name.startswith(".") and not any(c in name for c in "/\\\0")


def label_of(path: str) -> str:
    """The label an image path puts it under: images/<label>/x.jpg or trash/images/<label>/x.jpg (feedback/<label>/
    the same; other/feedback/x.jpg: "none of these")."""
    return NONE_OF_THESE if is_other(path.removeprefix(TRASH + "/")) else PurePosixPath(path).parent.name


def in_trash(path: str) -> bool:
    return PurePosixPath(path).parts[0] == TRASH


class ReviewLog:
    """The changes in review.csv, in order, and what they add up to."""

    def __init__(self, changes: list[Change]):
        self.changes = list(changes)
        self._check()

    def active(self, until: float | None = None) -> list[Change]:
        """The changes in force (made, not undone), oldest first; only those made by `until` if given."""
        stack: list[Change] = []
        for c in self.changes:
            if until is not None and c.timestamp > until:
                break
            if c.action == "undo":
                stack.pop()
            else:
                stack.append(c)
        return stack

    def places(self, until: float | None = None) -> dict[str, str]:
        """{original: where the image is} for every image a change in force moved or kept."""
        return {c.original: c.after for c in self.active(until)}

    def reviewed(self) -> set[str]:
        """The originals with a change in force."""
        return {c.original for c in self.active()}

    def names(self) -> dict[str, str]:
        """{any path an image has had: its original}, so a manifest row can be traced to its image."""
        found: dict[str, str] = {}
        for c in self.changes:
            found.update({c.original: c.original, c.before: c.original, c.after: c.original})
        return found

    def with_change(self, change: Change) -> "ReviewLog":
        return ReviewLog([*self.changes, change])

    def apply(self, rows: list[Row]) -> list[Row]:
        """Manifest rows with every decision in force: images moved, removed or confirmed by a reviewer."""
        names, places, reviewed = self.names(), self.places(), self.reviewed()
        out = []
        for row in rows:
            original = names.get(row.file)
            out.append(row if original is None else
                       _row_now(row, original, places.get(original, original), original in reviewed))
        return out

    def _check(self) -> None:
        """Raise StageError unless every action is known, every path is one review writes (inside images/ or
        trash/), and every undo reverses the change it pops: both stages replay the log, and move files by it."""
        stack: list[Change] = []
        for n, c in enumerate(self.changes, start=2):  # line 1 is the header
            if c.action not in ACTIONS:
                raise StageError(f"{LOG_NAME} line {n}: unknown action {c.action!r}; it should be one of "
                                 f"{', '.join(ACTIONS)}. Fix or remove that line")
            bad = [c.original] if not is_original(c.original) else []
            bad += [p for p in (c.before, c.after) if image_path(p) is None]
            if bad:
                raise StageError(f"{LOG_NAME} line {n} names {bad[0]!r}, which is not an image in images/ or "
                                 f"{TRASH}/; review never writes such a line, so nothing was changed: fix or remove it")
            if c.action != "undo":
                stack.append(c)
            elif not stack or (stack[-1].original, stack[-1].after, stack[-1].before) != (
                    c.original, c.before, c.after):
                raise StageError(f"{LOG_NAME} line {n} undoes a change that isn't the latest one in force; "
                                 "remove that line")
            else:
                stack.pop()


def _row_now(row: Row, original: str, place: str, reviewed: bool) -> Row:
    """The manifest row of the image first kept at `original`, now at `place`."""
    if row.status == "duplicate":
        return replace(row, file=place)  # a duplicate points at the copy that was kept, wherever it went
    if row.status not in ("kept", "pending_review") and row.reason != "removed_by_review":
        return row  # not the image's own row: cleaning dropped that input for a reason of its own
    if in_trash(place):
        return replace(row, label=label_of(place), status="rejected", reason="removed_by_review", file=place)
    if is_pending(place):  # a visitor's photo no change in force has taken out of feedback/
        return replace(row, label=label_of(place), status="pending_review", reason="", file=place)
    # A visitor's photo kept under the label the visitor gave is kept, not relabelled: only its folder changed.
    moved = label_of(place) != label_of(original) if is_pending(original) else place != original
    reason = "relabelled" if moved else "kept_by_review" if reviewed else ""
    return replace(row, label=label_of(place), status="kept", reason=reason, file=place)


def read_log(data_dir: Path) -> ReviewLog:
    """The review log of a data folder; empty when nobody has reviewed it."""
    path = data_dir / LOG_NAME
    if not path.is_file():
        return ReviewLog([])
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != FIELDS:
            raise StageError(f"{path} should have the columns {','.join(FIELDS)}, it has {reader.fieldnames}; "
                             "restore it from a backup, or move it away to forget every review decision")
        return ReviewLog([Change(**row) for row in reader])


def log_text(log: ReviewLog) -> str:
    """review.csv's contents for a log."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FIELDS)
    writer.writerows(astuple(c) for c in log.changes)
    return out.getvalue()
