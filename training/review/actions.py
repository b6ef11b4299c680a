"""Apply review decisions to a data folder: keep, delete (to trash/), relabel and undo, each whole or not at all.

Used by `python -m training review` (training/review/state.py and its page). Each change touches four files:
the image, DATA/review.csv, DATA/manifest.csv and DATA/summary.json. `_apply_all` writes them in an order
that an interruption can't corrupt, and puts back what it did if a later step fails.

Every change stays inside the data folder, whoever asks for it (the page's API takes whatever a caller
sends): an image is images/<label>/<name> or trash/images/<label>/<name>, with plain names; a move goes
only to one of the labels the data folder had when it was opened, or to trash/; and the folder each path
ends in, symlinks resolved, must lie inside the data folder. Anything else is refused with StageError
before a file changes, and so is a review.csv that names another path. No change makes a folder under
images/, and undoing a delete removes the trash/ folders it leaves empty.

    folder = DataFolder(Path("data/bears"), holder="my script")   # refuses a read-only or busy folder
    folder.delete("images/grizzly/0a1b2c3d4e5f6a7b.jpg")
    folder.undo()
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Callable

from training.data.decisions import (
    LOG_NAME,
    NONE_OF_THESE,
    OTHER,
    PENDING,
    TRASH,
    Change,
    ReviewLog,
    image_path,
    in_trash,
    is_original,
    is_other,
    is_pending,
    label_of,
    log_text,
    now,
    read_log,
)
from training.data.lock import DataLock
from training.data.manifest import Row, count_rows, read_manifest, write_manifest
from training.errors import StageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")


def image_files(images: Path) -> list[Path]:
    """The image files in the label folders under `images`."""
    return sorted(p for p in images.glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def label_folders(images: Path) -> list[str]:
    """The labels of a data folder: the folders under `images`, hidden ones aside."""
    return sorted(d.name for d in images.iterdir() if d.is_dir() and not d.name.startswith("."))


def check_writable(data_dir: Path) -> None:
    """Raise StageError, before anything changes, unless every folder review writes to can be written."""
    images = data_dir / "images"
    folders = [data_dir, images, *(d for d in images.iterdir() if d.is_dir())]
    for extra in (data_dir / TRASH, data_dir / PENDING, data_dir / OTHER):  # visitors' photos move from and to these
        folders += [extra, *(d for d in extra.rglob("*") if d.is_dir())] if extra.is_dir() else []
    for folder in folders:
        try:
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise StageError(f"{data_dir} is read-only ({folder}: {exc.strerror}). Review moves images and rewrites "
                             f"manifest.csv there, so nothing was changed: make it writable "
                             f"(`chmod -R u+w {data_dir}`) or review a copy") from None


class DataFolder:
    """A data folder's images, manifest and review log, locked for one page; every change is whole or absent."""

    def __init__(self, data_dir: Path, holder: str):
        check_writable(data_dir)
        self.dir = data_dir
        self.labels = label_folders(data_dir / "images")  # where a move may go; review makes no label folder
        self.lock = DataLock(data_dir, holder)
        self._mutex = threading.Lock()  # the page answers from several threads; changes go one at a time
        try:
            self.log = read_log(data_dir)
            self._finish_interrupted()
        except BaseException:
            self.lock.release()
            raise

    def close(self) -> None:
        self.lock.release()

    def place(self, original: str) -> str:
        """Where the image first kept at `original` is now, under the data folder."""
        return self.log.places().get(original, original)

    def original(self, path: str) -> str:
        """The name an image at `path` has in the review log (its first place)."""
        return self.log.names().get(path, path)

    def keep(self, original: str) -> Change:
        """Record that a person looked at the image and it is right where it is."""
        place = self._current(original)
        return self._commit(Change(now(), "keep", original, place, place))

    def delete(self, original: str) -> Change:
        """Move the image to trash/ and mark it removed_by_review."""
        place = self._current(original)
        return self._commit(Change(now(), "delete", original, place, self._free(f"{TRASH}/{place}")))

    def relabel(self, original: str, label: str) -> Change:
        """Move the image to images/<label>/ and mark it relabelled; `label` must be one of `self.labels`."""
        place = self._current(original)
        if label == label_of(place):
            raise StageError(f"{place} is already labelled {label!r}")
        target = f"images/{label}/{Path(place).name}"
        change = Change(now(), "relabel", original, place, target)
        self._check(change)  # `label` is whatever the caller sent: refuse it before its path is looked up on disk
        if os.path.lexists(self.dir / target) or self.log.names().get(target, original) != original:
            raise StageError(f"can't move {place} to {target}: another image has that name; rename one of them")
        return self._commit(change)

    def admit(self, original: str, label: str) -> Change:
        """Take a visitor's photo out of feedback/: under images/<label>/ (one of `self.labels`), or, for "none of
        these", into other/feedback/. Under the label the visitor gave it is a keep, under another a relabel."""
        place = self._current(original)
        if not is_pending(place):
            raise StageError(f"{place} is not a visitor's photo waiting for review; reload the page")
        name = Path(place).name
        target = f"{OTHER}/{name}" if label == NONE_OF_THESE else f"images/{label}/{name}"
        change = Change(now(), "keep" if label == label_of(place) else "relabel", original, place, target)
        self._check(change)  # `label` is whatever the caller sent: refuse it before its path is looked up on disk
        if os.path.lexists(self.dir / target) or self.log.names().get(target, original) != original:
            raise StageError(f"can't move {place} to {target}: another image has that name; delete one of them")
        return self._commit(change)

    def undo(self) -> Change:
        """Reverse the latest change still in force."""
        active = self.log.active()
        if not active:
            raise StageError("nothing to undo: every change made with review is already undone")
        last = active[-1]
        return self._commit(Change(now(), "undo", last.original, last.after, last.before))

    def changes_since(self, when: float) -> Counter:
        """How many images were deleted, relabelled or restored by changes made after `when` and still in force."""
        then, current = self.log.places(until=when), self.log.places()
        kinds = Counter()
        for original in then.keys() | current.keys():
            a, b = then.get(original, original), current.get(original, original)
            if a != b:
                kinds["deleted" if in_trash(b) else "restored" if in_trash(a) else "pending again" if is_pending(b)
                      else "added from feedback" if is_pending(a) else "relabelled"] += 1
        return kinds

    def is_label(self, label: object) -> bool:
        """Whether a move may go to images/<label>/: only to a label folder the data folder had when opened."""
        return label in self.labels

    def _current(self, original: str) -> str:
        """Where the image `original` is now; StageError unless it is an image of this folder, still in images/."""
        place = self.place(original)
        self._check(Change(now(), "keep", original, place, place))  # before its path is looked up on disk
        if in_trash(place) or not (self.dir / place).is_file():
            raise StageError(f"{place} is not in {self.dir / 'images'} any more; reload the page")
        return place

    def _free(self, path: str) -> str:
        """`path`, or path-2, path-3... if a file is already there (trash keeps every copy)."""
        stem, suffix, n, free = path[: -len(Path(path).suffix)], Path(path).suffix, 2, path
        while os.path.lexists(self.dir / free) or free in self.log.names():
            free, n = f"{stem}-{n}{suffix}", n + 1
        return free

    def _commit(self, change: Change) -> Change:
        """Apply one change to the files and record it, all or nothing."""
        with self._mutex:
            check_writable(self.dir)
            self._check(change)
            if change.before != change.after and os.path.lexists(self.dir / change.after):
                raise StageError(f"can't move {change.before} to {change.after}: a file is already there; "
                                 "reload the page")
            new_log = self.log.with_change(change)
            rows = new_log.apply(self._rows_for(change))
            _apply_all(self.dir, new_log, change, rows)
            self.log = new_log
        log.info("%s %s -> %s", change.action, change.before, change.after)
        return change

    def _check(self, change: Change) -> None:
        """Raise StageError unless the change moves an image of this data folder to a place inside it."""
        if not is_original(change.original):
            raise StageError(f"{change.original!r} is not an image in {self.dir / 'images'}, so nothing was changed")
        if is_pending(change.after) or is_other(change.after):
            # Only a visitor's photo goes there: back to where it waited (undo), or kept as "none of these".
            if not is_pending(change.original) or (is_pending(change.after) and change.after != change.original):
                raise StageError(f"{change.original!r} can't go to {change.after!r}, so nothing was changed: only "
                                 f"a visitor's photo waiting in {PENDING}/ can be kept as {NONE_OF_THESE!r}")
        elif not in_trash(change.after):
            # All between images/ and the name, so that a label sent as "a/../b" is named, and refused, as sent.
            label = change.after.removeprefix("images/").rpartition("/")[0]
            if not self.is_label(label):
                raise StageError(f"{label!r} is not a label of this dataset, so nothing was changed: move images to "
                                 f"one of {', '.join(self.labels)}")
            if not (self.dir / "images" / label).is_dir():  # gone since the page opened: a move would make it again
                raise StageError(f"{self.dir / 'images' / label} is not one of this dataset's label folders "
                                 f"({', '.join(self.labels)}), so nothing was changed; reload the page")
        for path in (change.before, change.after):
            if image_path(path) is None:
                raise StageError(f"{path!r} is not a place for an image in {self.dir / 'images'} or "
                                 f"{self.dir / TRASH}, so nothing was changed")
            folder = (self.dir / path).parent.resolve()
            if not folder.is_relative_to(self.dir.resolve()):
                raise StageError(f"{self.dir / path} would be in {folder}, outside {self.dir} (a symlink?), so "
                                 "nothing was changed")

    def _rows_for(self, change: Change) -> list[Row]:
        """The manifest's rows, with one added for an image it doesn't list (a folder not made by `data`)."""
        path = self.dir / "manifest.csv"
        rows = read_manifest(path) if path.is_file() else []
        if not rows:
            # A folder of the person's own images: start the manifest with every image as it stands.
            files = [p.relative_to(self.dir).as_posix() for p in image_files(self.dir / "images")]
            rows = [Row(label_of(f), f, "kept", "", f) for f in files]
        names = self.log.with_change(change).names()
        if not any(names.get(r.file) == change.original for r in rows):
            rows.append(Row(label_of(change.before), change.before, "kept", "", change.before))
        return rows

    def _finish_interrupted(self) -> None:
        """Complete the last change if a page was killed between recording it and moving the file."""
        if not self.log.changes:
            return
        last = self.log.changes[-1]
        before, after = self.dir / last.before, self.dir / last.after
        if last.before != last.after and before.is_file() and not os.path.lexists(after):
            self._check(last)
            log.warning("finishing an interrupted %s: moving %s to %s", last.action, last.before, last.after)
            _move(self.dir, last)
        path = self.dir / "manifest.csv"
        if path.is_file():
            rows = read_manifest(path)
            fixed = self.log.apply(rows)
            if fixed != rows:
                write_manifest(fixed, path)


def _apply_all(data_dir: Path, new_log: ReviewLog, change: Change, rows: list[Row]) -> None:
    """review.csv, then the move, then manifest.csv and summary.json; on any failure put back what was done.

    The log goes first: if the process is killed before the move, the next page finishes the change
    (DataFolder._finish_interrupted) rather than leaving a moved file nobody recorded.
    """
    done: list[Callable[[], None]] = []
    try:
        done.append(_replace_file(data_dir / LOG_NAME, lambda p: write_text(p, log_text(new_log))))
        if change.before != change.after:
            done.append(_move(data_dir, change))
        done.append(_replace_file(data_dir / "manifest.csv", lambda p: write_manifest(rows, p)))
        summary = _recounted_summary(data_dir / "summary.json", rows)
        if summary is not None:
            done.append(_replace_file(data_dir / "summary.json",
                                      lambda p: write_text(p, json.dumps(summary, indent=2) + "\n")))
    except OSError as exc:
        _roll_back(done, exc, change)
        raise StageError(f"could not {change.action} {change.before} ({exc}); nothing was changed, "
                         "fix the cause and try again") from exc
    _remove_empty_folders((data_dir / change.before).parent, data_dir)  # what undoing a delete leaves in trash/


def _roll_back(done: list[Callable[[], None]], cause: OSError, change: Change) -> None:
    for undo in reversed(done):
        try:
            undo()
        except OSError as exc:
            raise StageError(f"could not {change.action} {change.before} ({cause}), and putting things back failed "
                             f"too ({exc}); see review.csv's last line for the change that was under way") from exc


def _replace_file(path: Path, write: Callable[[Path], None]) -> Callable[[], None]:
    """Write `path` atomically with `write`; return how to put the old contents back."""
    old = path.read_bytes() if path.exists() else None
    write(path)
    return lambda: path.unlink(missing_ok=True) if old is None else _write_bytes(path, old)


def _move(data_dir: Path, change: Change) -> Callable[[], None]:
    """Rename change.before to change.after (one filesystem: the data folder); return how to put it back.

    The folders it needs are made (only ever under trash/: DataFolder._check allows no new label folder), and
    a failure, or putting back, removes them again.
    """
    src, dst = data_dir / change.before, data_dir / change.after
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.rename(src, dst)
    except OSError:
        _remove_empty_folders(dst.parent, data_dir)
        raise

    def back() -> None:
        os.rename(dst, src)
        _remove_empty_folders(dst.parent, data_dir)
    return back


def _remove_empty_folders(folder: Path, data_dir: Path) -> None:
    """Remove `folder` and those above it while they are empty, inside trash/ only: label folders stay, even empty."""
    trash = data_dir / TRASH
    while folder == trash or trash in folder.parents:
        try:
            folder.rmdir()
        except FileNotFoundError:
            pass  # never made: mkdir failed further up
        except OSError:
            return  # not empty: another image keeps it
        folder = folder.parent


def write_text(path: Path, text: str) -> None:
    """Replace a file with `text` atomically (temporary file, fsync, rename)."""
    _write_bytes(path, text.encode("utf-8"))


def _write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _recounted_summary(path: Path, rows: list[Row]) -> dict | None:
    """summary.json with its counts redone from the reviewed manifest; None when there is no such summary."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or "labels" not in summary:
        return None  # not one `data` wrote (e.g. a hand-made folder's notes): leave it alone
    return {**summary, **count_rows(rows, list(summary["labels"]))}
