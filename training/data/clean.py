"""Verify, normalise and deduplicate images into data/<name>/images/<label>/<content-hash>.jpg.

Part of `python -m training data`. Every image is fully decoded (Pillow's verify() misses truncation),
made upright RGB by the same function the app applies to uploads, shrunk, and saved as JPEG under a
hash of its pixels, so the same picture always lands on the same name and reruns change nothing.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import imagehash
from PIL import ImageStat
from tqdm import tqdm

from serving.imaging import ImageRejected, open_upright_rgb, resize_longest, training_jpeg
from training.config import Config
from training.data.decisions import ReviewLog, in_trash, is_pending
from training.data.manifest import Row

log = logging.getLogger(__name__)
# A near duplicate is the same picture resized or recompressed: its mean colour moves by a level or two. Hashes
# are computed in grey, so without this a red and a green version of one simple shape would match.
NEAR_DUPLICATE_COLOUR = 10
# A perceptual hash with almost every bit the same (a smooth gradient's dhash is all ones) says nothing about
# the picture, so two such images are never called near duplicates on its word.
MIN_INFORMATIVE_BITS = 4


@dataclass(frozen=True)
class Source:
    """An image to clean: a downloaded raw file or one of the person's own files."""
    label: str
    url: str
    path: Path


@dataclass
class _Decoded:
    index: int
    source: Source
    jpeg: bytes  # encoded now, so a big dataset is held as ~50 KB files, not decoded pixels
    byte_digest: str
    pixel_digest: str
    phash: int
    dhash: int
    colour: tuple[float, ...]  # mean R, G, B
    informative: bool  # whether its hashes say anything (see MIN_INFORMATIVE_BITS)


def clean_images(sources: list[Source], data_dir: Path, cfg: Config, review: ReviewLog | None = None) -> list[Row]:
    """Decode, normalise and deduplicate `sources`; write the keepers; return one manifest row each.

    `review` holds the decisions of `python -m training review` (DATA/review.csv): an image a reviewer
    deleted stays in trash/, a relabelled one is written under its new label.
    """
    rows: list[Row | None] = [None] * len(sources)
    decoded: list[_Decoded] = []
    for i, src in enumerate(tqdm(sources, desc="clean", unit="img", leave=False, disable=None)):
        try:
            decoded.append(_decode(i, src, cfg))
        except ImageRejected as exc:
            log.debug("rejected %s (%s): %s", src.url, exc.reason, exc)
            rows[i] = Row(src.label, src.url, "rejected", exc.reason, "")
    groups = _group_same_images(decoded, cfg.near_duplicate_distance)
    for group in groups:
        for i, row in _judge_group(group).items():
            rows[i] = row
    if review is not None:
        rows = review.apply(rows)  # type: ignore[arg-type]
    _write_kept({rows[d.index].file: d.jpeg for d in decoded if rows[d.index].status == "kept"}, data_dir,
                _kept_feedback(review))
    return rows  # type: ignore[return-value]


def _decode(index: int, src: Source, cfg: Config) -> _Decoded:
    size = src.path.stat().st_size
    if size > cfg.max_bytes:  # downloads are capped as they arrive; a file of the person's own is capped here
        raise ImageRejected("too_large", f"{size:,} bytes, over --max-bytes {cfg.max_bytes:,}")
    data = src.path.read_bytes()
    img = open_upright_rgb(data, max_pixels=cfg.max_pixels, min_side=cfg.min_side,
                           shrink_to=(cfg.max_side, cfg.max_side), name=src.url)
    img = resize_longest(img, cfg.max_side)
    jpeg, pixels = training_jpeg(img, cfg.max_side)  # the app's feedback stores its uploads the same way
    phash, dhash = int(str(imagehash.phash(img)), 16), int(str(imagehash.dhash(img)), 16)
    informative = all(MIN_INFORMATIVE_BITS <= h.bit_count() <= 64 - MIN_INFORMATIVE_BITS for h in (phash, dhash))
    return _Decoded(index, src, jpeg, hashlib.sha256(data).hexdigest(), pixels, phash, dhash,
                    tuple(ImageStat.Stat(img).mean), informative)


def _group_same_images(decoded: list[_Decoded], max_distance: int) -> list[list[_Decoded]]:
    """Cluster images that are the same picture: equal pixels, or near duplicates (`_near`)."""
    parent = list(range(len(decoded)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a in range(len(decoded)):
        for b in range(a + 1, len(decoded)):
            da, db = decoded[a], decoded[b]
            if da.pixel_digest == db.pixel_digest or _near(da, db, max_distance):
                parent[root(b)] = root(a)
    groups: dict[int, list[_Decoded]] = {}
    for i, d in enumerate(decoded):
        groups.setdefault(root(i), []).append(d)
    return list(groups.values())


def _near(a: _Decoded, b: _Decoded, max_distance: int) -> bool:
    """A resized or recompressed copy: both a DCT hash (phash) and a gradient hash (dhash) within max_distance
    bits, which simple pictures can share one of by chance, the same mean colour, and hashes worth comparing."""
    return ((a.phash ^ b.phash).bit_count() <= max_distance and (a.dhash ^ b.dhash).bit_count() <= max_distance
            and a.informative and b.informative
            and max(abs(x - y) for x, y in zip(a.colour, b.colour)) <= NEAR_DUPLICATE_COLOUR)


def _judge_group(group: list[_Decoded]) -> dict[int, Row]:
    """Keep the first of a group; a group spread over two labels teaches a contradiction, so drop it all."""
    if len({d.source.label for d in group}) > 1:
        return {d.index: Row(d.source.label, d.source.url, "rejected", "same_image_in_two_labels", "") for d in group}
    first, *rest = group
    kept_file = _kept_path(first)
    verdicts = {first.index: Row(first.source.label, first.source.url, "kept", "", kept_file)}
    for d in rest:
        reason = ("same_bytes" if d.byte_digest == first.byte_digest
                  else "same_pixels" if d.pixel_digest == first.pixel_digest else "near_duplicate")
        verdicts[d.index] = Row(d.source.label, d.source.url, "duplicate", reason, kept_file)
    return verdicts


def _kept_path(d: _Decoded) -> str:
    return f"images/{d.source.label}/{d.pixel_digest[:16]}.jpg"


def _kept_feedback(review: ReviewLog | None) -> set[str]:
    """Where review put the visitors' photos it took into images/ (`data --from-feedback`): no input of this run."""
    if review is None:
        return set()
    return {place for original, place in review.places().items() if is_pending(original) and not in_trash(place)}


def _write_kept(kept: dict[str, bytes], data_dir: Path, also: set[str] = frozenset()) -> None:
    """Write new keepers ({path under data_dir: JPEG}) atomically; move files no longer kept, and not `also`
    (paths under data_dir kept from elsewhere), to trash/."""
    wanted = {data_dir / file for file in [*kept, *also]}
    for file, jpeg in kept.items():
        target = data_dir / file
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        try:
            tmp.write_bytes(jpeg)
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
    images = data_dir / "images"
    for stale in sorted(images.glob("*/*")) if images.is_dir() else []:
        if stale not in wanted:
            dest = data_dir / "trash" / stale.relative_to(data_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(stale, dest)
            log.info("moved %s to %s: no longer kept by this run", stale, dest)
