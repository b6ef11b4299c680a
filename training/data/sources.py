"""Turn the data stage's inputs into (label, URL or file) pairs: a URL list, a folder, or an archive.

    python -m training data --urls bears.csv            # header label,url
    python -m training data --urls grizzly.txt --labels grizzly   # one URL a line (browser export)
    python -m training data --from-folder ~/my_photos   # one subfolder per label
    python -m training data --archive https://example.org/bears.tgz
"""
from __future__ import annotations

import csv
import hashlib
import logging
import shutil
import tarfile
import zipfile
from pathlib import Path

from training.errors import StageError

log = logging.getLogger(__name__)

def read_url_list(path: Path, labels: tuple[str, ...]) -> list[tuple[str, str]]:
    """(label, url) pairs from a `label,url` CSV, or from a one-URL-a-line file for a single label."""
    if not path.is_file():
        raise StageError(f"--urls file {path} does not exist")
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    first = lines[0].strip().lower().replace(" ", "") if lines else ""
    if first.startswith("label,url"):
        pairs = [(row["label"].strip(), row["url"].strip()) for row in csv.DictReader(lines) if row.get("url")]
    else:
        if len(labels) != 1:
            raise StageError(f"{path} is a plain URL list, which holds one label's images: pass exactly one "
                             "--labels NAME, or use a CSV with a header row `label,url`")
        pairs = [(labels[0], line.strip()) for line in lines if line.strip() and not line.startswith("#")]
    return _only_labels(pairs, labels, str(path))


def folder_items(folder: Path, labels: tuple[str, ...]) -> list[tuple[str, str]]:
    """(label, file path) for every file under folder/<label>/: what a file holds decides whether it is an image,
    not its name, so each gets a manifest row, images or not. Hidden files and folders (.DS_Store,
    .ipynb_checkpoints/) are the system's and the editors', not the person's: they are not inputs."""
    if not folder.is_dir():
        raise StageError(f"--from-folder {folder} is not a folder; it should hold one subfolder per label")
    pairs = [(sub.name, str(f)) for sub in sorted(folder.iterdir()) if sub.is_dir() and not sub.name.startswith(".")
             for f in sorted(sub.rglob("*"))
             if f.is_file() and not any(part.startswith(".") for part in f.relative_to(sub).parts)]
    if not pairs:
        raise StageError(f"no files found in {folder}: expected {folder}/<label>/<image>.jpg")
    _warn_if_one_level_up(folder, {label for label, _ in pairs})
    return _only_labels(pairs, labels, str(folder))


def _warn_if_one_level_up(folder: Path, found: set[str]) -> None:
    """One label whose images sit in subfolders of their own: likely the folder above the label folders.
    A warning, not an error: one label's photos may well be filed by year, say."""
    if len(found) != 1:
        return
    (label,) = found
    nested = sorted(d.name for d in (folder / label).iterdir() if d.is_dir())
    if nested:
        log.warning("%s holds one label folder, %r, whose images are in subfolders (%s%s); if those are the labels, "
                    "use --from-folder %s", folder, label, ", ".join(nested[:5]), ", ..." if len(nested) > 5 else "",
                    folder / label)


def archive_items(archive: str, data_dir: Path, labels: tuple[str, ...]) -> list[tuple[str, str]]:
    """Fetch (with fastdownload) and safely extract an archive of label folders; return its images."""
    dest = data_dir / "archive"
    if not dest.is_dir():
        _extract(_fetch_archive(archive, data_dir), dest)
    root = dest
    # Archives often wrap the label folders in one top folder (bears/grizzly/...): step into it.
    while len(subs := [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))]) == 1 \
            and not any(f.is_file() for f in root.iterdir()):
        root = subs[0]
    return folder_items(root, labels)


def _fetch_archive(archive: str, data_dir: Path) -> Path:
    if Path(archive).expanduser().is_file():
        return Path(archive).expanduser()
    if not archive.startswith(("http://", "https://")):
        raise StageError(f"--archive {archive!r} is neither an existing file nor an http(s) URL")
    from fastdownload import download_url

    target = data_dir / "downloads" / archive.rstrip("/").split("/")[-1]
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        download_url(archive, target)
    except OSError as exc:
        raise StageError(f"could not fetch --archive {archive}: {exc}. Download it yourself and pass the file") from exc
    return target


def _extract(path: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:  # zipfile drops absolute paths and `..` from member names
                z.extractall(tmp)
        else:
            with tarfile.open(path) as tar:
                # filter="data" refuses absolute paths, links out of the folder and device files.
                tar.extractall(tmp, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StageError(f"could not extract {path}: {exc}. Expected a .zip or .tgz of label folders") from exc
    tmp.replace(dest)


def _only_labels(pairs: list[tuple[str, str]], labels: tuple[str, ...], where: str) -> list[tuple[str, str]]:
    if not labels:
        return pairs
    missing = [label for label in labels if label not in {p[0] for p in pairs}]
    if missing:
        raise StageError(f"{where} has no images for label(s) {', '.join(map(repr, missing))}; "
                         f"it has: {', '.join(sorted({p[0] for p in pairs}))}")
    return [p for p in pairs if p[0] in labels]


def input_fingerprint(urls: Path | None, from_folder: Path | None) -> str:
    """A hash of the --urls file's and the --from-folder files' names, sizes and times, so that `all` can tell
    inputs it has read from edited ones (new photos, new rows). An archive is fetched once per data folder,
    so it is not part of it."""
    files = ([Path(urls)] if urls else []) + (sorted(p for p in Path(from_folder).rglob("*") if p.is_file())
                                               if from_folder and Path(from_folder).is_dir() else [])
    digest = hashlib.sha256()
    for f in files:
        try:
            stat = f.stat()
            digest.update(f"{f}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{f}\0missing\n".encode())
    return digest.hexdigest()
