"""training/data/clean.py: which images count as the same picture, and files of the person's own."""
from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageDraw

from tests.image_corpus import encode, photo
from tests.live_app import ROOT
from training.config import Config
from training.data import clean
from training.data.clean import Source, clean_images
from training.data.decisions import ReviewLog
from training.data.manifest import Row


def _write(folder: Path, name: str, img: Image.Image, fmt: str = "PNG") -> Path:
    path = folder / name
    path.write_bytes(encode(img, fmt))
    return path


def _clean(tmp_path: Path, files: list[tuple[str, Path]], **settings) -> dict[str, tuple[str, str]]:
    """{file name: (status, reason)} after cleaning (label, file) pairs into tmp_path/data."""
    rows = clean_images([Source(label, str(path), path) for label, path in files], tmp_path / "data",
                        Config(**settings))
    return {Path(r.url).name: (r.status, r.reason) for r in rows}


def _shape(colour, background=(235, 235, 235), size=(200, 150)) -> Image.Image:
    img = Image.new("RGB", size, background)
    ImageDraw.Draw(img).ellipse((60, 30, 140, 110), fill=colour)
    return img


def test_a_resized_recompressed_copy_is_a_near_duplicate(tmp_path):
    original = photo((400, 300), 1)
    files = [("a", _write(tmp_path, "original.png", original)),
             ("a", _write(tmp_path, "copy.jpg", original.resize((300, 225)), "JPEG"))]
    assert _clean(tmp_path, files) == {"original.png": ("kept", ""), "copy.jpg": ("duplicate", "near_duplicate")}


def test_the_same_shape_in_another_colour_is_another_picture(tmp_path):
    """Perceptual hashes are computed in grey: a red and a green circle hash alike. The colour tells them apart."""
    files = [("red", _write(tmp_path, "red.png", _shape((200, 30, 30)))),
             ("green", _write(tmp_path, "green.png", _shape((30, 200, 30))))]
    assert _clean(tmp_path, files) == {"red.png": ("kept", ""), "green.png": ("kept", "")}


def test_hashes_that_say_nothing_are_no_evidence(tmp_path):
    """Two different smooth gradients: each one's dhash is all ones, so they 'match' by hash alone."""
    left = Image.linear_gradient("L").rotate(90).resize((200, 150)).convert("RGB")
    right = Image.fromarray((np.asarray(left, dtype=np.int16) // 2 + 60).astype(np.uint8))
    files = [("a", _write(tmp_path, "gradient.png", left)), ("b", _write(tmp_path, "dimmer.png", right))]
    assert _clean(tmp_path, files) == {"gradient.png": ("kept", ""), "dimmer.png": ("kept", "")}


def test_flat_images_are_blank_never_duplicates_across_labels(tmp_path):
    """Solid red and solid green once counted as near duplicates, then as the same image in two labels."""
    files = [("a", _write(tmp_path, "red.png", Image.new("RGB", (200, 150), (200, 20, 20)))),
             ("b", _write(tmp_path, "green.png", Image.new("RGB", (200, 150), (20, 200, 20))))]
    assert _clean(tmp_path, files) == {"red.png": ("rejected", "blank"), "green.png": ("rejected", "blank")}


def test_a_file_of_the_persons_own_over_max_bytes_is_refused(tmp_path):
    big = _write(tmp_path, "big.png", photo((600, 400), 2))
    small = _write(tmp_path, "small.png", photo((100, 80), 3))
    got = _clean(tmp_path, [("a", big), ("a", small)], max_bytes=big.stat().st_size - 1)
    assert got == {"big.png": ("rejected", "too_large"), "small.png": ("kept", "")}


def test_kept_images_are_shrunk_to_max_side(tmp_path):
    files = [("a", _write(tmp_path, "wide.jpg", photo((2000, 1000), 4), "JPEG"))]
    _clean(tmp_path, files, max_side=512)
    (kept,) = (tmp_path / "data" / "images" / "a").glob("*.jpg")
    with Image.open(kept) as img:
        assert img.size == (512, 256)


def test_stale_images_move_to_trash_on_a_rerun(tmp_path):
    """An image no longer kept (its source is gone) leaves images/ for trash/: nothing is deleted."""
    first = _write(tmp_path, "first.png", photo((200, 150), 5))
    second = _write(tmp_path, "second.png", photo((200, 150), 6))
    _clean(tmp_path, [("a", first), ("a", second)])
    kept = sorted(p.name for p in (tmp_path / "data" / "images" / "a").iterdir())
    _clean(tmp_path, [("a", second)])
    now = sorted(p.name for p in (tmp_path / "data" / "images" / "a").iterdir())
    trashed = sorted(p.name for p in (tmp_path / "data" / "trash" / "images" / "a").iterdir())
    assert len(kept) == 2 and len(now) == 1 and sorted(now + trashed) == kept


def test_several_stale_images_of_one_label_all_move_to_trash(tmp_path):
    """The second stale file meets a trash folder the first one made."""
    files = [_write(tmp_path, f"{n}.png", photo((200, 150), 20 + n)) for n in range(3)]
    _clean(tmp_path, [("a", f) for f in files])
    kept = sorted(p.name for p in (tmp_path / "data" / "images" / "a").iterdir())
    _clean(tmp_path, [("a", files[0])])
    now = sorted(p.name for p in (tmp_path / "data" / "images" / "a").iterdir())
    trashed = sorted(p.name for p in (tmp_path / "data" / "trash" / "images" / "a").iterdir())
    assert len(kept) == 3 and len(now) == 1 and len(trashed) == 2 and sorted(now + trashed) == kept


def test_the_hashes_compared_are_imagehashs_own_bits(tmp_path):
    path = _write(tmp_path, "photo.png", photo((200, 150), 8))
    decoded = clean._decode(0, Source("a", str(path), path), Config())
    with Image.open(path) as img:
        for ours, theirs in ((decoded.phash, imagehash.phash(img)), (decoded.dhash, imagehash.dhash(img))):
            assert ours == int("".join("1" if bit else "0" for bit in theirs.hash.flatten()), 2)


def _kept_name(label: str, img: Image.Image) -> str:
    """Where a kept RGB image under max_side goes, by the rule in docs/data.md: sha256 of its size and pixels."""
    return f"images/{label}/{hashlib.sha256(str(img.size).encode() + img.tobytes()).hexdigest()[:16]}.jpg"


def _red_plus(img: Image.Image, levels: int) -> Image.Image:
    pixels = np.asarray(img, dtype=np.int16).copy()
    pixels[..., 0] += levels  # photo() keeps red under 230 here: nothing clips, the mean moves by exactly `levels`
    return Image.fromarray(pixels.astype(np.uint8))


def test_every_verdict_and_the_file_it_names(tmp_path):
    """One of each verdict, rows in the order given; a duplicate names the file of the first of its picture.
    Red 10 levels up with the same hashes is still a near duplicate (NEAR_DUPLICATE_COLOUR is 10)."""
    one, two = photo((200, 150), 11), photo((200, 150), 12)
    files = [("a", _write(tmp_path, "one.png", one))]
    files += [("a", Path(shutil.copyfile(files[0][1], tmp_path / "one_again.png")))]
    files += [("a", _write(tmp_path, "one.bmp", one, "BMP")),
              ("a", _write(tmp_path, "redder.png", _red_plus(one, 10))),
              ("a", _write(tmp_path, "two.png", two)), ("b", _write(tmp_path, "two.bmp", two, "BMP"))]
    (tmp_path / "text.png").write_text("not an image at all")
    files.insert(1, ("c", tmp_path / "text.png"))
    rows = clean_images([Source(label, str(path), path) for label, path in files], tmp_path / "data",
                        Config(near_duplicate_distance=0))
    kept = _kept_name("a", one)
    assert rows == [Row("a", str(tmp_path / "one.png"), "kept", "", kept),
                    Row("c", str(tmp_path / "text.png"), "rejected", "not_image", ""),
                    Row("a", str(tmp_path / "one_again.png"), "duplicate", "same_bytes", kept),
                    Row("a", str(tmp_path / "one.bmp"), "duplicate", "same_pixels", kept),
                    Row("a", str(tmp_path / "redder.png"), "duplicate", "near_duplicate", kept),
                    Row("a", str(tmp_path / "two.png"), "rejected", "same_image_in_two_labels", ""),
                    Row("b", str(tmp_path / "two.bmp"), "rejected", "same_image_in_two_labels", "")]


def test_a_mean_colour_more_than_ten_levels_off_is_another_picture(tmp_path):
    """Same hashes (distance 0), red 11 levels up: not a near duplicate (10 levels is, above)."""
    one = photo((200, 150), 11)
    files = [("a", _write(tmp_path, "one.png", one)), ("a", _write(tmp_path, "reddest.png", _red_plus(one, 11)))]
    assert _clean(tmp_path, files, near_duplicate_distance=0) == {"one.png": ("kept", ""), "reddest.png": ("kept", "")}


def test_the_pixel_and_size_limits_are_the_configs(tmp_path):
    """Config(max_pixels, min_side, max_bytes) reach the decoder; a file of exactly max_bytes is still taken."""
    wide, tiny = _write(tmp_path, "wide.png", photo((300, 200), 8)), _write(tmp_path, "tiny.png", photo((60, 60), 9))
    assert _clean(tmp_path, [("a", wide)], max_pixels=300 * 200 - 1) == {"wide.png": ("rejected", "too_many_pixels")}
    assert _clean(tmp_path, [("a", tiny)], min_side=61) == {"tiny.png": ("rejected", "too_small")}
    assert _clean(tmp_path, [("a", wide)], max_bytes=wide.stat().st_size) == {"wide.png": ("kept", "")}


def test_a_kept_image_is_the_pillow_jpeg_at_quality_92(tmp_path):
    img = photo((200, 150), 10)
    _clean(tmp_path, [("a", _write(tmp_path, "photo.png", img))])
    expected = io.BytesIO()
    img.save(expected, "JPEG", quality=92)
    assert (tmp_path / "data" / _kept_name("a", img)).read_bytes() == expected.getvalue()


def test_a_rerun_writes_new_keepers_after_ones_already_there(tmp_path):
    old, new = photo((200, 150), 13), photo((200, 150), 14)
    files = [("a", _write(tmp_path, "old.png", old))]
    _clean(tmp_path, files)
    _clean(tmp_path, files + [("a", _write(tmp_path, "new.png", new))])
    assert (tmp_path / "data" / _kept_name("a", new)).is_file()


def test_rows_go_through_the_review_log(tmp_path):
    """An empty review log changes nothing, but the rows must still pass through it."""
    path = _write(tmp_path, "photo.png", photo((200, 150), 15))
    rows = clean_images([Source("a", str(path), path)], tmp_path / "data", Config(), ReviewLog([]))
    assert [(r.status, r.reason) for r in rows] == [("kept", "")]


WRITE_CAPPED = """
import resource, sys
from pathlib import Path
from training.config import Config
from training.data import clean
from training.data.clean import Source, clean_images
from training.data.decisions import ReviewLog
from training.data.manifest import Row
src = Path(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # as a disk that fills up mid-write
try:
    clean_images([Source("a", str(src), src)], Path(sys.argv[2]), Config())
except OSError as exc:
    print("refused:", exc.errno)
"""


def test_a_kept_image_is_whole_or_absent_when_writing_fails(tmp_path):
    """Kept images go through a temporary name: a write cut short leaves no half JPEG under images/."""
    source = _write(tmp_path, "photo.png", photo((600, 450), 7))  # its JPEG is well over the 20 KB the OS allows
    done = subprocess.run([sys.executable, "-c", WRITE_CAPPED, str(source), str(tmp_path / "data")], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    assert done.stdout.startswith("refused: 27")  # EFBIG
    assert [p.name for p in (tmp_path / "data").rglob("*") if p.is_file()] == []
