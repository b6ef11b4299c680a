"""serving/imaging.py: the one normalisation shared by the clean stage and the app, and its budget."""
from __future__ import annotations

import io
import logging
import struct
import subprocess
import sys
import threading
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from serving import imaging
from serving.imaging import (
    MAX_DECODE_BYTES,
    MAX_PNG_CHUNKS,
    MAX_PNG_EXTRA_CHUNKS,
    ImageRejected,
    open_upright_rgb,
    resize_longest,
    sniff_non_image,
)
from tests.image_corpus import (
    SIDE,
    corpus,
    encode,
    grey16,
    iccp_bomb,
    photo,
    png_chunk,
    png_with_chunks,
    psd,
    psd_resource_flood,
    tiff,
    with_transparent_corner,
)
from tests.live_app import ROOT

# How the app (a 224 px model: 256) and the data stage (--max-side 512) call it, and a caller that asks for
# no shrinking at all: every file gets the same answer from each.
SHRINKS = [(256, 256), (512, 512), None]

# (image-server path, reason it is refused)
REFUSED = [
    ("/bad/html.jpg", "not_image"),
    ("/svg/image.svg", "not_image"),
    ("/bad/empty.jpg", "empty"),
    ("/bad/truncated.jpg", "truncated"),
    ("/img/bomb.png", "too_many_pixels"),
]


@pytest.mark.parametrize("path,reason", REFUSED)
def test_refused_inputs_carry_a_reason(image_server, path, reason):
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(image_server.static(path))
    assert caught.value.reason == reason


@pytest.mark.parametrize("head,kind", [
    (b"%PDF-1.7\n", "PDF"), (b"  <?xml version='1.0'?><svg xmlns=", "SVG"), (b"<!DOCTYPE html><html>", "HTML"),
    (b"<?xml version='1.0'?><root/>", "XML"), (b"\xff\xd8\xff\xe0", None), (b"\x89PNG\r\n", None),
])
def test_sniff_non_image(head, kind):
    assert sniff_non_image(head) == kind


def test_pdf_and_eps_are_refused_without_being_parsed():
    with pytest.raises(ImageRejected, match="PDF"):
        open_upright_rgb(b"%PDF-1.4\n%\xe2\xe3\n1 0 obj\n")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    with pytest.raises(ImageRejected) as caught:  # Pillow could hand EPS to Ghostscript; we never let it
        open_upright_rgb(eps)
    assert caught.value.reason == "not_image"


def test_pixel_cap_is_checked_from_the_header(image_server):
    """Cut short after its header: decoded first, it would be 'truncated'; checked from the header, it never is."""
    whole = image_server.good_image("x", 0, "png")
    with pytest.raises(ImageRejected, match="over the 10,000-pixel cap") as caught:
        open_upright_rgb(whole[:len(whole) // 2], max_pixels=100 * 100)
    assert caught.value.reason == "too_many_pixels"


@pytest.mark.parametrize("path,size", [
    ("/img/cmyk.jpg", (200, 150)), ("/img/16bit.png", (200, 150)), ("/img/rgba.png", (200, 150)),
    ("/img/animated.gif", (200, 150)), ("/img/exif-rotated.jpg", (100, 200)),
])
def test_every_accepted_input_comes_out_upright_rgb(image_server, path, size):
    img = open_upright_rgb(image_server.static(path))
    assert (img.mode, img.size) == ("RGB", size)


def test_min_side(image_server):
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(image_server.static("/img/tiny.png"), min_side=64)
    assert caught.value.reason == "too_small"


def test_sixteen_bit_grey_is_rescaled_not_clipped(image_server):
    grey = np.asarray(open_upright_rgb(image_server.static("/img/16bit.png")))[..., 0]
    assert grey[:, 0].max() < 5 and grey[:, -1].min() > 250 and 100 < grey.mean() < 155


def test_sources_can_be_bytes_paths_files_or_pil(image_server, tmp_path):
    data = image_server.static("/img/exif-rotated.jpg")
    (tmp_path / "p.jpg").write_bytes(data)
    outs = [open_upright_rgb(s) for s in (data, tmp_path / "p.jpg", str(tmp_path / "p.jpg"), io.BytesIO(data),
                                            Image.open(io.BytesIO(data)))]
    assert {o.size for o in outs} == {(100, 200)}
    assert len({o.tobytes() for o in outs}) == 1


def test_draft_mode_decodes_large_jpegs_smaller_but_not_below_the_asked_size():
    big = encode(photo((4032, 3024), 1), "JPEG")
    img = open_upright_rgb(big, shrink_to=(512, 512))
    assert img.size == (1008, 756)  # 1/4 scale: the smallest DCT scale still >= 512 on both sides
    assert open_upright_rgb(big).size == (4032, 3024)


@pytest.mark.parametrize("size,max_side,expected", [((1000, 500), 512, (512, 256)), ((300, 200), 512, (300, 200)),
                                                     ((500, 2000), 512, (128, 512))])
def test_resize_longest_never_enlarges(size, max_side, expected):
    assert resize_longest(Image.new("RGB", size), max_side).size == expected


@pytest.mark.parametrize("shrink", SHRINKS, ids=["app", "data", "whole"])
@pytest.mark.parametrize("name", sorted(corpus()))
def test_every_format_and_mode_gets_its_answer(name, shrink):
    """The corpus (tests/image_corpus.py): each file kept as upright RGB, or refused with its reason."""
    case = corpus()[name]
    if case.reason is None:
        img = open_upright_rgb(case.data, shrink_to=shrink)
        assert img.mode == "RGB" and min(img.size) >= 96
    else:
        with pytest.raises(ImageRejected) as caught:
            open_upright_rgb(case.data, shrink_to=shrink)
        assert caught.value.reason == case.reason, str(caught.value)


@pytest.mark.parametrize("name", sorted(n for n, c in corpus().items() if c.transparent))
def test_every_kind_of_transparency_lands_on_white(name):
    """Alpha, palette, a colour key (PNG tRNS in RGB and 16-bit grey), in every format that has one: the
    transparent corner comes out white, never the colour underneath it (black, or the key's green)."""
    img = np.asarray(open_upright_rgb(corpus()[name].data))
    h, w = img.shape[:2]
    corner = img[2:h // 2 - 2, 2:w // 2 - 2]  # with_transparent_corner's quarter, less the lossy codecs' edge
    assert corner.min() >= 245, corner.min()


def test_a_grey_png_with_a_colour_key_lands_on_white():
    """8-bit grey with a tRNS key of 0 (the corpus has 16-bit grey): the black corner comes out white."""
    grey = photo((120, 90), 9).convert("L").point(lambda v: max(v, 1))  # no 0 but the corner's
    grey.paste(0, (0, 0, 60, 45))
    img = np.asarray(open_upright_rgb(encode(grey, "PNG", transparency=0)))
    assert (img[:45, :60] == 255).all()
    assert np.array_equal(img[45:, 60:, 0], np.asarray(grey)[45:, 60:])


@pytest.mark.parametrize("premultiplied", ["RGBa", "La"])
def test_a_premultiplied_image_given_open_lands_on_white(premultiplied):
    """Pillow's premultiplied modes (an image handed over open, never a file's): the transparent corner is white,
    the opaque rest its own colour."""
    rgba = with_transparent_corner(photo((120, 90), 10))
    plain = rgba if premultiplied == "RGBa" else rgba.convert("LA")
    expected = np.asarray(plain.convert("RGB" if premultiplied == "RGBa" else "L").convert("RGB")).copy()
    expected[:45, :60] = 255
    assert np.array_equal(np.asarray(open_upright_rgb(plain.convert(premultiplied))), expected)


def test_sixteen_bit_images_are_scaled_by_the_range_they_use():
    """7200..8200 of 0..65535: dividing by 257 gave a flat grey of 28..32; the range used maps to 0..255."""
    grey = grey16(3, 7200, 8200)
    values = np.asarray(grey, dtype=np.float64)
    lo, hi = values.min(), values.max()
    expected = np.floor((values - lo) / (hi - lo) * 255 + 0.5)  # the fraction of the range used, rounded half up
    got = np.asarray(open_upright_rgb(encode(grey, "PNG")))
    assert np.array_equal(got[..., 0], expected) and np.array_equal(got[..., 0], got[..., 2])
    assert got.min() == 0 and got.max() == 255


def test_float_images_are_scaled_by_the_range_they_use():
    values = np.linspace(0.1, 0.2, 160 * 120, dtype=np.float32).reshape(120, 160)
    values[0, :5] = np.nan  # missing values count as the lowest
    got = np.asarray(open_upright_rgb(tiff(Image.fromarray(values, "F"))))[..., 0]
    finite = values[1:].astype(np.float64)
    expected = np.rint((finite - 0.1) * (255.0 / (values[np.isfinite(values)].max() - 0.1)))
    assert np.abs(got[1:].astype(int) - expected).max() <= 1 and (got[0, :5] == 0).all()
    assert got.max() == 255


@pytest.mark.parametrize("make", [
    lambda: Image.new("RGB", (200, 100), (10, 120, 200)),
    lambda: Image.new("L", (200, 100), 0),
    lambda: Image.fromarray(np.full((100, 200), 40000, np.uint16)),
    lambda: Image.fromarray(np.full((100, 200), 40000, np.uint16) + np.tile([0, 1, 2], (100, 67))[:, :200]
                            .astype(np.uint16)),  # three levels of 65,536: noise, not a picture
    lambda: Image.new("RGB", (1, 1), (200, 30, 30)),
], ids=["flat colour", "black", "flat 16-bit", "16-bit noise", "one pixel"])
def test_near_uniform_images_are_blank(make):
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(encode(make(), "PNG"))
    assert caught.value.reason == "blank"


def test_a_photo_of_a_plain_wall_with_something_on_it_is_not_blank():
    wall = Image.new("RGB", (400, 300), (230, 228, 220))
    wall.paste((90, 60, 40), (180, 120, 220, 180))  # a small picture on the wall
    assert open_upright_rgb(encode(wall, "JPEG")).size == (400, 300)


def test_the_pixel_cap_comes_from_the_header_before_any_decoding():
    """A 100,000 x 100,000 PNG of a few hundred bytes: if it were decoded first, it would need 40 GB."""
    with pytest.raises(ImageRejected, match="pixel cap|exceeds limit") as caught:
        open_upright_rgb(corpus()["pixel_bomb.png"].data)
    assert caught.value.reason == "too_many_pixels"


def test_large_transparent_images_are_reduced_strip_by_strip_exactly():
    """Over SHRINK_ABOVE_PIXELS, an image the caller shrinks anyway is put on white and box-reduced strip by
    strip: the same pixels as doing it to the whole image with Pillow, without a second full-size copy."""
    rgba = with_transparent_corner(photo((4000, 2600), 5))
    got = open_upright_rgb(encode(rgba, "PNG"), shrink_to=(512, 512))
    whole = Image.new("RGB", rgba.size, (255, 255, 255))
    whole.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    assert got.size == (800, 520) and got.tobytes() == whole.reduce(5).tobytes()


def test_jpeg_2000_with_few_wavelet_levels_still_decodes_smaller():
    """openjpeg fails when asked to skip more resolution levels than a file has; the decoder reads how many."""
    big = photo((3000, 2000), 6)
    # 1 level in the file: halved once; 5 levels: quartered (an eighth, 375x250, would be under 256)
    for resolutions, size in ((2, (1500, 1000)), (6, (750, 500))):
        img = open_upright_rgb(encode(big, "JPEG2000", num_resolutions=resolutions), shrink_to=(256, 256))
        assert img.size == size


PEAK = """
import sys
from pathlib import Path
from serving.imaging import open_upright_rgb
def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
data = Path(sys.argv[1]).read_bytes()
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # the peak, from now
open_upright_rgb(data, shrink_to=(256, 256))
print(status("VmHWM") - before)
"""


@pytest.mark.parametrize("make", [
    lambda: grey16(9, 1000, 60000, (7300, 5470)),  # the reviewer's 40 MP 16-bit PNG: 0.8-1.1 GB before
    lambda: with_transparent_corner(photo((7300, 5470), 9)),
], ids=["16-bit grey, 40 MP", "RGBA, 40 MP"])
def test_a_40_megapixel_png_decodes_within_the_memory_budget(tmp_path, make):
    """Measured in a process of its own: the peak resident memory the decode adds, against the budget."""
    path = tmp_path / "big.png"
    make().save(path, compress_level=1)
    added = subprocess.run([sys.executable, "-c", PEAK, str(path)], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout
    assert int(added) < MAX_DECODE_BYTES


def test_a_decode_the_budget_cannot_afford_is_refused_before_it_starts():
    """WebP's decoder holds 16 bytes a pixel: 25 MP of it would take about 400 MB, so it is refused unread."""
    webp = encode(Image.linear_gradient("L").resize((5800, 4400)).convert("RGB"), "WEBP", quality=50)
    with pytest.raises(ImageRejected, match="MB budget") as caught:
        open_upright_rgb(webp, shrink_to=(256, 256))
    assert caught.value.reason == "too_costly"


NOISY = """
import logging, sys
logging.basicConfig(level=logging.DEBUG if sys.argv[2] == "debug" else logging.INFO)
from pathlib import Path
from serving.imaging import ImageRejected, open_upright_rgb
try:
    open_upright_rgb(Path(sys.argv[1]).read_bytes(), name="visitor.tif")
except ImageRejected as exc:
    print(exc.reason)
"""


def _tiff_libtiff_complains_about(tmp_path):
    """A JPEG-in-TIFF cut short: libtiff prints 'JPEGLib: ...' to stderr itself, Pillow warns, then refuses."""
    data = tiff(photo((64, 64), 2), compression="jpeg")
    path = tmp_path / "visitor.tif"
    path.write_bytes(data[:-200])
    return path


def test_decoder_messages_never_reach_stderr_at_info(tmp_path):
    done = subprocess.run([sys.executable, "-c", NOISY, str(_tiff_libtiff_complains_about(tmp_path)), "info"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "corrupt" and done.stderr == ""


def test_decoder_messages_become_one_debug_line_naming_the_file(tmp_path):
    done = subprocess.run([sys.executable, "-c", NOISY, str(_tiff_libtiff_complains_about(tmp_path)), "debug"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    lines = [line for line in done.stderr.splitlines() if "visitor.tif" in line]
    assert len(lines) == 1 and lines[0].startswith("DEBUG:serving.imaging:")
    assert "JPEGLib" in lines[0] and "Truncated File Read" in lines[0]
    assert not [line for line in done.stderr.splitlines() if "JPEGLib" in line and "visitor.tif" not in line]


def test_pillows_own_error_log_for_a_file_is_a_note_not_an_error(tmp_path):
    """Pillow logs an ERROR for a TIFF claiming too many samples per pixel; the app's log showed it with no
    file named, for an upload it rightly refused."""
    data = bytearray(tiff(photo((64, 64), 3)))
    at = data.find((277).to_bytes(2, "little") + (3).to_bytes(2, "little"))  # SamplesPerPixel, SHORT
    data[at + 8:at + 10] = (9999).to_bytes(2, "little")
    path = tmp_path / "visitor.tif"
    path.write_bytes(bytes(data))
    info = subprocess.run([sys.executable, "-c", NOISY, str(path), "info"], cwd=ROOT, capture_output=True, text=True)
    debug = subprocess.run([sys.executable, "-c", NOISY, str(path), "debug"], cwd=ROOT, capture_output=True, text=True)
    assert info.stdout.strip() == "not_image" and info.stderr == ""  # no format of ours could read it
    (line,) = [line for line in debug.stderr.splitlines() if "samples per pixel" in line.lower()]
    assert line.startswith("DEBUG:serving.imaging:visitor.tif: the decoder said:")


@pytest.mark.parametrize("kind, options, budget_mb, kept", [
    ("AVIF", {}, 15, True), ("AVIF", {"subsampling": "4:4:4"}, 15, False), ("AVIF", {"alpha": True}, 20, False),
    ("HEIF", {}, 15, True), ("HEIF", {"alpha": True}, 20, False)])
def test_avif_and_heif_memory_is_estimated_from_their_planes(monkeypatch, kind, options, budget_mb, kept):
    """libavif holds about 10 bytes a pixel for 4:2:0 colour, 14 for 4:4:4 and 20 with alpha; libheif 10, and 20
    with alpha (measured, with margin). For 1200x1000: 12 MB, 16.8 MB, and with alpha 24 MB plus the 4.8 MB RGB
    copy an RGBA image needs. A budget of 15 MB keeps only the first; 20 MB still refuses alpha."""
    options = dict(options)  # parametrize hands each run the same dict; a rerun in one process must see it whole
    img = photo((1200, 1000), 7)
    if options.pop("alpha", False):
        img = with_transparent_corner(img)
    data = encode(img, kind, quality=50, **({"speed": 10} if kind == "AVIF" else {}), **options)
    monkeypatch.setattr(imaging, "MAX_DECODE_BYTES", budget_mb * 1_000_000)
    if kept:
        assert open_upright_rgb(io.BytesIO(data)).size == (1200, 1000)
    else:
        with pytest.raises(ImageRejected, match=rf"{kind} of 1200x1000 would need about \d+ MB to decode") as caught:
            open_upright_rgb(io.BytesIO(data))
        assert caught.value.reason == "too_costly"


def test_one_pixel_seven_levels_off_is_not_blank():
    """BLANK_LEVELS is 6: one pixel 7 levels brighter on a flat 100 px square is a picture (nothing is reduced
    at this size; a 2x reduce would average it down to 2 levels)."""
    img = Image.new("RGB", (100, 100), (200, 200, 200))
    img.putpixel((40, 60), (207, 200, 200))
    assert open_upright_rgb(encode(img, "PNG")).getextrema() == ((200, 207), (200, 200), (200, 200))


def test_resize_longest_is_pillows_lanczos_to_the_longest_side():
    img = photo((300, 200), 3)
    assert resize_longest(img, 300) is img
    assert resize_longest(img, 150).tobytes() == img.resize((150, 100), Image.Resampling.LANCZOS).tobytes()


# --- the structure checks at their boundaries (issue #17: each test fails if the check is changed) -----------

def _progressive_jpeg_400x300() -> tuple[bytes, int]:
    """A progressive 4:2:0 JPEG of 400x300 (height over 255, so both bytes of each side count) and where its
    frame header (SOF2) starts."""
    data = encode(photo((400, 300), 4), "JPEG", progressive=True, quality=80)
    sof = data.find(b"\xff\xc2")
    # length 17, 8 bits, height 300, width 400, 3 components: Y 2x2 (0x22), Cb and Cr 1x1 (0x11)
    assert data[sof:sof + 19] == bytes.fromhex("ffc2 0011 08 012c 0190 03 012200 021101 031101")
    return data, sof


# libjpeg keeps every coefficient of a progressive JPEG, 2 bytes each: Y at full size, Cb and Cr at a quarter
# (4:2:0), so 400 * 300 * (1 + 1/4 + 1/4) * 2 = 360,000 bytes; Pillow's RGB image holds 4 bytes a pixel.
JPEG_COEFFICIENT_BYTES, JPEG_IMAGE_BYTES = 400 * 300 * 3 // 2 * 2, 400 * 300 * 4


def _decoded_at_exactly(monkeypatch, data: bytes, need: int, size: tuple[int, int], kind: str = "JPEG") -> None:
    """Kept with a decode budget of exactly `need` bytes; refused as too costly, by name, with one byte less."""
    monkeypatch.setattr(imaging, "MAX_DECODE_BYTES", need)
    assert open_upright_rgb(data).size == size
    monkeypatch.setattr(imaging, "MAX_DECODE_BYTES", need - 1)
    with pytest.raises(ImageRejected, match=rf"^{kind} of {size[0]}x{size[1]} would need about {need // 1_000_000} MB "
                                            "to decode") as caught:
        open_upright_rgb(data)
    assert caught.value.reason == "too_costly"


def _refused_for_time_just_under(monkeypatch, data: bytes, seconds: float, kind: str, size: tuple[int, int]) -> None:
    """Kept with a decode-time budget a hair over `seconds`; refused as too costly, by name, a hair under."""
    monkeypatch.setattr(imaging, "DECODE_BUDGET_S", seconds * (1 + 1e-9))
    assert open_upright_rgb(data).size == size
    monkeypatch.setattr(imaging, "DECODE_BUDGET_S", seconds * (1 - 1e-9))
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(data)
    assert caught.value.reason == "too_costly"
    assert str(caught.value).startswith(f"{kind} of {size[0]}x{size[1]} and {len(data):,} bytes would take about "
                                        f"{seconds:.1f} s to decode, over the ")


def test_a_jpegs_decode_time_counts_every_scan_after_the_first(monkeypatch):
    """0.12 MP: one pass at JPEG_SECONDS_PER_MP, and JPEG_SECONDS_PER_SCAN_MP for each further scan (SOS marker)."""
    data, _ = _progressive_jpeg_400x300()
    scans = data.count(b"\xff\xda")
    assert scans == 10  # Pillow's progressive JPEG: libjpeg's default scan script for 3 components
    seconds = 0.12 * (imaging.JPEG_SECONDS_PER_MP + imaging.JPEG_SECONDS_PER_SCAN_MP * (scans - 1))
    _refused_for_time_just_under(monkeypatch, data, seconds, "JPEG", (400, 300))


def test_a_jpeg_2000s_decode_time_is_reckoned_at_its_own_rate(monkeypatch):
    """256x256 at full resolution: 0.065536 MP at J2K_SECONDS_PER_MP[0]."""
    data = encode(photo((256, 256), 11), "JPEG2000")
    _refused_for_time_just_under(monkeypatch, data, 0.065536 * imaging.J2K_SECONDS_PER_MP[0], "JPEG2000", (256, 256))


def test_a_large_image_is_budgeted_for_the_reduced_copy_it_will_be_turned_into(monkeypatch):
    """3000x3000 grey (9 MP, over SHRINK_ABOVE_PIXELS) for a caller that uses 256 px: box-reduced 11 times as it
    is turned into RGB, so the RGB copy is 273x273 (9,000,000 // 121 pixels at 4 bytes), not 9 MP of it."""
    grey = Image.fromarray((np.add.outer(np.arange(3000), np.arange(3000)) % 256).astype(np.uint8), "L")
    data = encode(grey, "PNG")
    need = len(data) + 9_000_000 + 9_000_000 // 121 * 4
    monkeypatch.setattr(imaging, "MAX_DECODE_BYTES", need)
    assert open_upright_rgb(data, shrink_to=(256, 256)).size == (273, 273)
    monkeypatch.setattr(imaging, "MAX_DECODE_BYTES", need - 1)
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(data, shrink_to=(256, 256))
    assert (caught.value.reason, str(caught.value)) == (
        "too_costly", f"PNG of 3000x3000 would need about {need // 1_000_000} MB to decode, over the "
                      f"{(need - 1) // 1_000_000} MB budget")


def test_corrupt_image_data_is_refused_with_the_decoders_words():
    """A PNG whose compressed pixels are garbage (with a valid checksum): zlib can't inflate them."""
    data = encode(photo((64, 48), 12), "PNG")
    at = data.index(b"IDAT")
    length = int.from_bytes(data[at - 4:at], "big")
    garbage = bytes(range(256)) * (length // 256 + 1)
    garbage = garbage[:length]
    broken = data[:at + 4] + garbage + zlib.crc32(b"IDAT" + garbage).to_bytes(4, "big") + data[at + 8 + length:]
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(broken)
    assert (caught.value.reason, str(caught.value)) == (
        "corrupt", "the image data is corrupt: OSError: broken data stream when reading image file")


def test_an_image_given_open_over_the_pixel_cap_is_refused_by_name():
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(photo((120, 90), 13), max_pixels=10_799)
    assert (caught.value.reason, str(caught.value)) == ("too_many_pixels",
                                                        "image is 120x90, over the 10,799-pixel cap")
    assert open_upright_rgb(photo((120, 90), 13), max_pixels=10_800).size == (120, 90)


def test_a_broken_file_given_open_is_refused_not_raised():
    """Image.open reads pixels only when asked: a file cut short is found out inside open_upright_rgb, and said."""
    data = encode(photo((120, 90), 14), "PNG")
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(Image.open(io.BytesIO(data[:len(data) // 2])))
    assert (caught.value.reason, str(caught.value)) == (
        "truncated", "the image data is cut short: OSError: image file is truncated")


def test_a_grey_png_is_budgeted_at_one_byte_a_pixel_and_its_rgb_copy(monkeypatch):
    """Decoded grey holds 1 byte a pixel; turning it into RGB makes a copy of 4 (Pillow's RGB): 1000x1000 needs the
    file, 1,000,000 and 4,000,000 bytes."""
    data = encode(photo((1000, 1000), 8).convert("L"), "PNG")
    _decoded_at_exactly(monkeypatch, data, len(data) + 1_000_000 + 4_000_000, (1000, 1000), kind="PNG")


def test_a_progressive_jpeg_is_budgeted_for_every_coefficient_of_its_frame(monkeypatch):
    """The memory estimate, to the byte: the file, the coefficients, the image. At exactly the budget it is decoded;
    one byte under, refused."""
    data, _ = _progressive_jpeg_400x300()
    _decoded_at_exactly(monkeypatch, data, len(data) + JPEG_COEFFICIENT_BYTES + JPEG_IMAGE_BYTES, (400, 300))


def test_a_jpeg_frame_header_is_read_for_the_components_it_declares_only(monkeypatch):
    """Three zero bytes padded onto the frame header are no fourth component: the estimate stays the same, so the
    file is refused one byte under it, before libjpeg (which rejects the length) ever sees it."""
    data, sof = _progressive_jpeg_400x300()
    padded = data[:sof + 2] + (17 + 3).to_bytes(2, "big") + data[sof + 4:sof + 19] + bytes(3) + data[sof + 19:]
    monkeypatch.setattr(imaging, "MAX_DECODE_BYTES", len(padded) + JPEG_COEFFICIENT_BYTES + JPEG_IMAGE_BYTES - 1)
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(padded)
    assert caught.value.reason == "too_costly"


def test_a_jpeg_frame_with_zero_sampling_factors_is_corrupt_not_a_crash():
    """Every component sampled 1x0: nothing to estimate from (and nothing to divide by); libjpeg refuses it."""
    data, sof = _progressive_jpeg_400x300()
    bogus = bytearray(data)
    for component in range(3):
        bogus[sof + 11 + 3 * component] = 0x10
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(bytes(bogus))
    assert caught.value.reason == "corrupt"


def _jpeg_segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def _baseline_jpeg_in_three_scans(w: int = 64, h: int = 48) -> bytes:
    """A baseline (SOF0) 4:2:0 JPEG whose three components each have a scan of their own (non-interleaved), so
    that libjpeg keeps every coefficient, as for a progressive one. Written by hand (Pillow writes one scan): all
    quantisers 1; DC differences in categories 0-11, each a 4-bit Huffman code; the AC table holds only the end of
    block, code "0". Luma blocks cycle through 8 levels, chroma is neutral."""
    dqt = _jpeg_segment(0xDB, b"\x00" + b"\x01" * 64)
    sof = _jpeg_segment(0xC0, struct.pack(">BHHB", 8, h, w, 3) + bytes([1, 0x22, 0, 2, 0x11, 0, 3, 0x11, 0]))
    dht = _jpeg_segment(0xC4, b"\x00" + bytes([0, 0, 0, 12] + [0] * 12) + bytes(range(12))
                        + b"\x10" + bytes([1] + [0] * 15) + b"\x00")
    scans = b""
    for component, blocks in ((1, w // 8 * h // 8), (2, w // 16 * h // 16), (3, w // 16 * h // 16)):
        bits, previous = "", 0
        for block in range(blocks):
            dc = (block % 8) * 100 - 350 if component == 1 else 0
            diff, previous = dc - previous, dc
            size = abs(diff).bit_length()
            value = format(diff if diff >= 0 else diff + (1 << size) - 1, f"0{size}b") if size else ""
            bits += format(size, "04b") + value + "0"
        bits += "1" * (-len(bits) % 8)
        entropy = int(bits, 2).to_bytes(len(bits) // 8, "big").replace(b"\xff", b"\xff\x00")
        scans += _jpeg_segment(0xDA, bytes([1, component, 0x00, 0, 63, 0])) + entropy
    return b"\xff\xd8" + dqt + sof + dht + scans + b"\xff\xd9"


def test_a_baseline_jpeg_of_several_scans_is_budgeted_for_every_coefficient_of_its_frame(monkeypatch):
    """SOF0 is a frame too: 64 * 48 * (1 + 1/4 + 1/4) * 2 bytes of coefficients besides the 4-byte RGB pixels."""
    data = _baseline_jpeg_in_three_scans()
    _decoded_at_exactly(monkeypatch, data, len(data) + 64 * 48 * 3 // 2 * 2 + 64 * 48 * 4, (64, 48))


def test_a_baseline_jpeg_of_one_scan_is_budgeted_for_its_pixels_only(monkeypatch):
    """libjpeg decodes one interleaved scan a row of blocks at a time: no coefficients kept, the file and the image
    fit a budget of exactly their size."""
    data = encode(photo((400, 300), 4), "JPEG", quality=80)
    assert data.count(b"\xff\xda") == 1 and b"\xff\xc0" in data
    _decoded_at_exactly(monkeypatch, data, len(data) + JPEG_IMAGE_BYTES, (400, 300))


@pytest.mark.parametrize("between", [b"\xff\xd0", b"\xff\xd7", b"\xff\x00", b"\xff\xff\xff", b"junk"],
                         ids=["RST0", "RST7", "escaped 0xFF", "fill bytes", "stray bytes"])
def test_jpeg_markers_without_a_length_fill_and_stray_bytes_are_stepped_over_to_the_frame(monkeypatch, between):
    """Restart markers and 0xFF 0x00 carry no length, fill and stray bytes are one byte each (Pillow steps over all
    of them): the frame header after them is still found, so the progressive JPEG is budgeted to the byte."""
    data, sof = _progressive_jpeg_400x300()
    data = data[:sof] + between + data[sof:]
    _decoded_at_exactly(monkeypatch, data, len(data) + JPEG_COEFFICIENT_BYTES + JPEG_IMAGE_BYTES, (400, 300))


def test_a_jpeg_tem_marker_has_no_length_either():
    """TEM (0xFF 0x01), which Pillow doesn't accept, is still two bytes to the structure check, not a segment."""
    data, sof = _progressive_jpeg_400x300()
    assert imaging._check_jpeg(data[:sof] + b"\xff\x01" + data[sof:]).extra_bytes == JPEG_COEFFICIENT_BYTES


def test_a_lossless_jpeg_is_refused_by_name():
    data = encode(photo((64, 48), 5), "JPEG")
    lossless = data.replace(b"\xff\xc0", b"\xff\xc3", 1)  # SOF3: the same frame header, lossless coding
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(lossless)
    assert (caught.value.reason, str(caught.value)) == ("not_image", "a lossless JPEG, which this demo doesn't read")


def _tiff_directory(tags: int) -> bytes:
    """A little-endian TIFF header and one directory of `tags` SHORT entries, each value inline."""
    entries = b"".join(struct.pack("<HHIHH", 0x100 + tag, 3, 1, tag, 0) for tag in range(tags))
    return b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", tags) + entries + struct.pack("<I", 0)


def test_a_jpeg_multi_picture_index_with_more_entries_than_any_real_one_is_refused():
    data = encode(photo((64, 48), 6), "JPEG")
    mpf = _jpeg_segment(0xE2, b"MPF\0" + _tiff_directory(65))
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(data[:2] + mpf + data[2:])
    assert (caught.value.reason, str(caught.value)) == ("too_costly", "JPEG multi-picture index with 65 tags, over 64")


def test_only_app2_holds_a_multi_picture_index():
    """The same bytes in a comment are a comment: Pillow doesn't parse them, so they cost nothing."""
    data = encode(photo((64, 48), 6), "JPEG")
    comment = _jpeg_segment(0xFE, b"MPF\0" + _tiff_directory(65))
    assert open_upright_rgb(data[:2] + comment + data[2:]).size == (64, 48)


def test_png_profiles_one_is_kept_and_a_second_refused_at_its_chunk():
    """The message counts chunks one by one: IHDR and two iCCP, the second starting after the signature (8 bytes),
    IHDR (25) and the first iCCP."""
    img = photo((64, 48), 8)
    assert open_upright_rgb(iccp_bomb(img, profiles=1)).size == (64, 48)
    profile = png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(b"\x00" * 100_000))
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(iccp_bomb(img, profiles=2))
    assert caught.value.reason == "too_costly"
    assert str(caught.value) == f"PNG with 3 chunks (3 not image data, 2 colour profiles) at byte {33 + len(profile):,}"


def test_png_chunks_up_to_the_limit_are_kept_and_one_more_refused():
    png = encode(photo((64, 48), 8), "PNG")
    assert png[-12:] == png_chunk(b"IEND", b"")
    head, idat = png[:33], png[33:-12]  # signature and IHDR; the IDAT Pillow wrote
    empty = png_chunk(b"IDAT", b"")
    at_limit = head + empty * (MAX_PNG_CHUNKS - 3) + idat + png[-12:]  # IHDR, the IDATs, IEND
    imaging._check_png(at_limit)
    with pytest.raises(ImageRejected, match=f"^PNG with {MAX_PNG_CHUNKS + 1:,} chunks") as caught:
        imaging._check_png(head + empty * (MAX_PNG_CHUNKS - 2) + idat + png[-12:])
    assert caught.value.reason == "too_costly"


def test_a_png_ending_right_after_its_last_allowed_chunk_is_kept():
    """No IEND, and exactly MAX_PNG_EXTRA_CHUNKS chunks that are not image data (IHDR and tEXt) before the IDAT:
    the count stops at the end of the file, so it is kept (Pillow reads it whole)."""
    png = png_with_chunks(photo((64, 48), 9), [png_chunk(b"tEXt", b"k\x00v")] * (MAX_PNG_EXTRA_CHUNKS - 1))
    assert open_upright_rgb(png[:-12]).size == (64, 48)


def _apng(frames: int) -> bytes:
    """An animated PNG of `frames` 16x16 frames: fcTL before each, the first frame's data in IDAT, the others' in
    fdAT (sequence numbers counting both from 0, as the APNG specification asks)."""
    png = encode(photo((16, 16), 10), "PNG")
    head, idat, iend = png[:33], png[33:-12], png[-12:]
    pixels = idat[8:-4]

    def control(seq: int) -> bytes:
        return png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, 16, 16, 0, 0, 1, 10, 0, 0))

    frames_after = b"".join(control(2 * k - 1) + png_chunk(b"fdAT", struct.pack(">I", 2 * k) + pixels)
                            for k in range(1, frames))
    return head + png_chunk(b"acTL", struct.pack(">II", frames, 0)) + control(0) + idat + frames_after + iend


def test_an_apngs_frames_are_image_data_not_extra_chunks():
    """As many frames as extra chunks allowed: 1,000 fcTL and 999 fdAT, none counted against the limit."""
    data = _apng(MAX_PNG_EXTRA_CHUNKS)
    assert data.count(b"fcTL") == MAX_PNG_EXTRA_CHUNKS and data.count(b"fdAT") == MAX_PNG_EXTRA_CHUNKS - 1
    assert Image.open(io.BytesIO(data)).n_frames == MAX_PNG_EXTRA_CHUNKS
    assert open_upright_rgb(data).size == (16, 16)


def _bitmap_icon(sizes=((64, 64),)) -> bytes:
    """An icon holding bitmaps (DIB: a BITMAPINFOHEADER, its height doubled for the mask), not PNGs."""
    data = encode(photo((64, 64), 3), "ICO", sizes=list(sizes), bitmap_format="bmp")
    first = int.from_bytes(data[6 + 12:6 + 16], "little")  # where the first entry's image starts
    assert data[first:first + 4] == (40).to_bytes(4, "little")  # a BITMAPINFOHEADER, not a PNG
    return data


def test_an_icon_bitmap_at_the_pixel_cap_is_kept_and_one_over_it_refused_from_its_header():
    icon = _bitmap_icon()
    assert open_upright_rgb(icon, max_pixels=64 * 64).size == (64, 64)
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(icon, max_pixels=64 * 64 - 1)
    assert caught.value.reason == "too_many_pixels"
    assert str(caught.value) == "ICO holding a 64x64 image, over the 4,095-pixel cap"


def test_an_icon_bitmap_claiming_more_pixels_than_it_holds_is_refused_before_pillow_decodes_it():
    """Its header says 3000x3000 (6000 rows with the mask) in 12 KB: decoded, it would be cut short; read from the
    header, it is over the cap."""
    icon = bytearray(_bitmap_icon())
    icon[22 + 4:22 + 12] = (3000).to_bytes(4, "little", signed=True) + (6000).to_bytes(4, "little", signed=True)
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(bytes(icon), max_pixels=1_000_000)
    assert caught.value.reason == "too_many_pixels"
    assert str(caught.value) == "ICO holding a 3000x3000 image, over the 1,000,000-pixel cap"


def test_a_top_down_icon_bitmap_is_kept():
    """A negative height is a bitmap stored top row first (-128: 64 rows and the mask), not 2 billion rows."""
    icon = bytearray(_bitmap_icon())
    icon[22 + 8:22 + 12] = (-128).to_bytes(4, "little", signed=True)
    assert open_upright_rgb(bytes(icon), max_pixels=64 * 64).size == (64, 64)


def test_an_icon_of_two_images_is_kept():
    """The entry count is little-endian: 2 images, not 512."""
    icon = _bitmap_icon(((64, 64), (32, 32)))
    assert icon[4:6] == b"\x02\x00"
    assert open_upright_rgb(icon).size == (64, 64)


def test_an_icon_listing_more_images_than_any_real_one_is_refused():
    entry = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, 0, 0)
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(struct.pack("<HHH", 0, 1, 257) + entry * 257)
    assert caught.value.reason == "too_costly"
    assert str(caught.value) == "ICO with 257 images, over 256"


@pytest.mark.parametrize("bits, compression, after_header", [
    (8, 1, b""),  # BI_RLE8
    (4, 2, bytes(16 * 4) + b"\x00\x01"),  # BI_RLE4: a blank palette, then "end of bitmap"
], ids=["rle8", "rle4"])
def test_a_run_length_icon_bitmap_over_the_decode_budget_is_refused_unread(bits, compression, after_header):
    """Pillow decodes RLE bitmaps (BI_RLE8, and BI_RLE4 with the same decoder) in Python at 0.3 s a megabyte:
    6,666,667 bytes is the first size over the 2 s budget (6.666667 MB * 0.3 = 2.0000001 s)."""
    size = 6_666_667
    dib = struct.pack("<IiiHHIIiiII", 40, 16, 32, 1, bits, compression, size - 40, 0, 0, 0, 0)  # 16x16
    body = dib + after_header
    entry = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, bits, size, 6 + 16)
    icon = struct.pack("<HHH", 0, 1, 1) + entry + body + bytes(size - len(body))
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(icon)
    assert caught.value.reason == "too_costly"
    assert str(caught.value) == "ICO holding 6,666,667 bytes of run-length bitmap, over the 2 s budget"


def test_a_bitfields_icon_bitmap_as_large_as_a_refused_run_length_one_is_kept():
    """BI_BITFIELDS (compression 3) is raw pixels with colour masks, not run length: an entry of 6,666,667 bytes
    holding a 16x16 BGRA bitmap (alpha 255) decodes to the very pixels written."""
    size = 6_666_667
    picture = photo((16, 16), 3)
    bgra = np.dstack([np.asarray(picture)[::-1, :, ::-1], np.full((16, 16), 255, np.uint8)]).tobytes()  # bottom-up
    dib = struct.pack("<IiiHHIIiiII", 40, 16, 32, 1, 32, 3, len(bgra), 0, 0, 0, 0)  # 16x16, 32 bits, BI_BITFIELDS
    body = dib + struct.pack("<III", 0xFF0000, 0xFF00, 0xFF) + bgra
    entry = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, size, 6 + 16)
    icon = struct.pack("<HHH", 0, 1, 1) + entry + body + bytes(size - len(body))
    assert np.array_equal(np.asarray(open_upright_rgb(icon)), np.asarray(picture))


def test_an_icon_whose_second_image_claims_too_many_pixels_is_refused():
    """Directory entries are 16 bytes apart: the second (32x32, read at 6 + 16 = 22) points at a bitmap whose header
    says 3000x3000. Pillow would decode only the first, larger entry; the check reads every one."""
    icon = bytearray(_bitmap_icon(((64, 64), (32, 32))))
    icon[6:22], icon[22:38] = icon[22:38], icon[6:22]  # Pillow writes the 32x32 entry first: put it second
    second = int.from_bytes(icon[22 + 12:22 + 16], "little")
    assert icon[22] == 32 and icon[second:second + 4] == (40).to_bytes(4, "little")
    icon[second + 4:second + 12] = (3000).to_bytes(4, "little", signed=True) + (6000).to_bytes(4, "little", signed=True)
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(bytes(icon), max_pixels=1_000_000)
    assert caught.value.reason == "too_many_pixels"
    assert str(caught.value) == "ICO holding a 3000x3000 image, over the 1,000,000-pixel cap"


def _psd_with_resources(count: int) -> bytes:
    """A Photoshop file with `count` image resources, each named "ab" (a Pascal string of odd length 3, padded to
    4) holding one byte (padded to 2): 16 bytes each, read as Pillow reads them."""
    resource = b"8BIM" + struct.pack(">H", 1000) + b"\x02ab\x00" + struct.pack(">I", 1) + b"x\x00"
    plain = psd(photo(SIDE, 8))
    return plain[:30] + struct.pack(">I", 16 * count) + resource * count + plain[34:]


def test_psd_resources_with_names_and_odd_sizes_are_counted_one_by_one():
    assert open_upright_rgb(_psd_with_resources(imaging.MAX_PSD_RESOURCES)).size == SIDE
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(_psd_with_resources(imaging.MAX_PSD_RESOURCES + 1))
    assert caught.value.reason == "too_costly"
    assert str(caught.value) == "PSD with over 1,000 image resources"


def test_a_psd_colour_mode_length_is_read_from_all_four_bytes():
    """A length of 16,777,216 (high byte 1) runs past this 30 KB file: Pillow can't identify it, and the check, which
    reads the length as Pillow does, never takes the resource flood right after it for the resources."""
    flood = psd_resource_flood(photo(SIDE, 8))
    data = flood[:26] + struct.pack(">I", 1 << 24) + flood[30:]
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(data))
    assert imaging._check_psd(data) is None
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(data)
    assert caught.value.reason == "not_image"


def _gif_head() -> bytes:
    """A GIF up to the end of its global palette."""
    gif = encode(photo((16, 16), 1), "GIF")
    return gif[:13 + (3 << ((gif[10] & 7) + 1))]


@pytest.mark.parametrize("cut", ["header only", "extension introducer", "extension label", "palette end",
                                 "extension end"])
def test_a_gif_cut_short_before_its_image_is_not_an_image_not_a_crash(cut):
    """Cut at the last byte the structure check reads: before the palette flags (10 bytes), after an extension's
    0x21, after its label; or cut cleanly, with no image and no trailer, after the palette or a whole extension."""
    head = _gif_head()
    data = {"header only": head[:10], "extension introducer": head + b"\x21",
            "extension label": head + b"\x21\xfe", "palette end": head,
            "extension end": head + b"\x21\xfe\x01x\x00"}[cut]
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(data)
    assert caught.value.reason == "not_image"


@pytest.mark.parametrize("stray, reason", [(imaging.MAX_GIF_SUBBLOCKS, None),
                                           (imaging.MAX_GIF_SUBBLOCKS + 1, "too_costly")])
def test_gif_stray_bytes_before_the_image_are_counted_one_by_one(stray, reason):
    """Pillow steps over a stray byte at a time, in Python: 10,000 are allowed, 10,001 are not."""
    head = _gif_head()
    gif = encode(photo((16, 16), 1), "GIF")
    data = head + bytes(stray) + gif[len(head):]
    if reason is None:
        assert open_upright_rgb(data).size == (16, 16)
    else:
        with pytest.raises(ImageRejected) as caught:
            open_upright_rgb(data)
        assert caught.value.reason == reason


@pytest.mark.parametrize("blocks, reason", [(imaging.MAX_GIF_SUBBLOCKS - 1, None),
                                           (imaging.MAX_GIF_SUBBLOCKS, "too_costly")])
def test_gif_extension_blocks_before_the_image_are_counted_one_by_one(blocks, reason):
    """An application extension (0x21 0xFF, not a comment) of one-byte blocks: its introducer is one step and each
    block one more, so 9,999 blocks make the 10,000 steps allowed and 10,000 blocks one too many."""
    head = _gif_head()
    gif = encode(photo((16, 16), 1), "GIF")
    data = head + b"\x21\xff" + b"\x01x" * blocks + b"\x00" + gif[len(head):]
    if reason is None:
        assert open_upright_rgb(data).size == (16, 16)
    else:
        with pytest.raises(ImageRejected) as caught:
            open_upright_rgb(data)
        assert caught.value.reason == reason
        assert str(caught.value) == ("GIF with over 10,000 data blocks or stray bytes, or 1,000 of comments, before "
                                     "its first image")


def test_tiff_tags_are_counted_by_the_bytes_they_point_at_outside_the_directory():
    """A 100-byte TIFF whose ImageDescription points at 100 bytes is kept: values held inside an entry (4 bytes of
    LONG; 4 of a type TIFF doesn't define, one byte each) point at nothing. At 101 bytes it is refused by name."""
    def blob(pointed: int) -> bytes:
        entries = (struct.pack("<HHII", 0x10E, 2, pointed, 50)  # ASCII: one byte a value, at offset 50
                   + struct.pack("<HHII", 0x100, 4, 1, 7)  # LONG: 4 bytes, inline
                   + bytes.fromhex("f0ff 6300 04000000 abcdef01"))  # tag 0xFFF0 of type 99: 4 values, inline
        head = b"II*\0" + struct.pack("<IH", 8, 3) + entries + bytes(4)
        return head + bytes(100 - len(head))

    assert imaging._check_directory(blob(100), 1000, "TIFF") == {0x10E: (100, 50), 0x100: (1, 7), 0xFFF0: (4, 0xAB)}
    with pytest.raises(ImageRejected) as caught:
        imaging._check_directory(blob(101), 1000, "TIFF")
    assert (caught.value.reason, str(caught.value)) == ("too_costly",
                                                        "TIFF whose tags point at 101 bytes, more than its 100")


@pytest.mark.parametrize("order, magic", [("<", b"II*\0"), (">", b"MM\0*")], ids=["little_endian", "big_endian"])
def test_a_tiff_with_more_tags_than_any_real_one_is_refused_by_name(order, magic):
    entries = b"".join(struct.pack(order + "HHII", tag, 3, 1, 0) for tag in range(imaging.MAX_TIFF_ENTRIES + 1))
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(magic + struct.pack(order + "IH", 8, imaging.MAX_TIFF_ENTRIES + 1) + entries + bytes(4))
    assert caught.value.reason == "too_costly"
    assert str(caught.value) == "TIFF with 1,001 tags, over 1,000"


def test_a_tiff_listing_more_strips_than_its_rows_make_is_refused():
    """16 rows in strips of 16 rows is one strip: a TIFF that lists two offsets is refused before Pillow makes a
    tile of each."""
    tags = [(256, 3, 1, 16), (257, 3, 1, 16), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 4, 2, 0), (277, 3, 1, 1), (278, 3, 1, 16), (279, 4, 2, 0)]
    ifd_end = 8 + 2 + 12 * len(tags) + 4
    arrays = {273: struct.pack("<II", ifd_end + 16, ifd_end + 16), 279: struct.pack("<II", 256, 0)}
    entries, tail = b"", b""
    for tag, kind, count, value in tags:
        if tag in arrays:
            value, tail = ifd_end + len(tail), tail + arrays[tag]
        entries += struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3 else
                                                            struct.pack("<I", value))
    data = b"II*\0" + struct.pack("<IH", 8, len(tags)) + entries + bytes(4) + tail + bytes(256)
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(data)
    assert caught.value.reason == "too_costly"
    assert str(caught.value) == "TIFF of 16x16 listing 2 pieces where it has 1"


def _tiff_of(tags: list[tuple[int, int, int, int]], arrays: dict[int, bytes], payload: bytes) -> bytes:
    """A little-endian TIFF with one directory of (tag, type, count, value) entries, SHORT (3) or LONG (4); a tag in
    `arrays` points at its bytes, laid out after the directory; then `payload`."""
    tags = sorted(tags)
    ifd_end = 8 + 2 + 12 * len(tags) + 4
    entries, tail = b"", b""
    for tag, kind, count, value in tags:
        if tag in arrays:
            value, tail = ifd_end + len(tail), tail + arrays[tag]
        entries += struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3 else
                                                            struct.pack("<I", value))
    return b"II*\0" + struct.pack("<IH", 8, len(tags)) + entries + bytes(4) + tail + payload


GREY_TAGS = [(258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1), (277, 3, 1, 1)]  # 8 bits, uncompressed, grey


def _tiled_tiff(image=(32, 32), tile=(16, 16), tiles=4, pixels: Image.Image | None = None) -> bytes:
    """A grey TIFF of `image` in tiles of `tile`, listing `tiles` tile offsets; each tile's bytes from `pixels`, cut
    in tiles row by row, or zeros."""
    size = tile[0] * tile[1]
    if pixels is None:
        payload = bytes(size * tiles)
    else:
        grid = np.asarray(pixels)
        payload = b"".join(grid[r:r + tile[1], c:c + tile[0]].tobytes()
                           for r in range(0, image[1], tile[1]) for c in range(0, image[0], tile[0]))
    tags = [*GREY_TAGS, (256, 3, 1, image[0]), (257, 3, 1, image[1]), (322, 3, 1, tile[0]), (323, 3, 1, tile[1]),
            (324, 4, tiles, 0), (325, 4, tiles, 0)]
    start = 8 + 2 + 12 * len(tags) + 4 + 8 * tiles  # after the directory and both arrays
    arrays = {324: struct.pack(f"<{tiles}I", *(start + size * n for n in range(tiles))),
              325: struct.pack(f"<{tiles}I", *[size] * tiles)}
    return _tiff_of(tags, arrays, payload)


def test_a_tiff_in_tiles_is_kept_pixel_for_pixel():
    """32x32 in four 16x16 tiles, uncompressed: Pillow makes a tile of each and reads back the pixels written."""
    picture = photo((32, 32), 5).convert("L")
    data = _tiled_tiff(pixels=picture)
    assert len(Image.open(io.BytesIO(data)).tile) == 4
    assert np.array_equal(np.asarray(open_upright_rgb(data).convert("L")), np.asarray(picture))


def test_a_tiff_in_tiles_far_larger_than_the_image_is_refused_by_name():
    """libtiff allocates whole tiles: one 4096x4096 tile (16,777,216 pixels) for a 16x16 image is over both 4 times
    the image and 1,048,576."""
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(_tiled_tiff(image=(16, 16), tile=(4096, 4096), tiles=1))
    assert (caught.value.reason, str(caught.value)) == ("too_costly", "TIFF of 16x16 in tiles of 4096x4096")


def test_a_tiff_with_no_image_width_has_no_tiles_to_list():
    """ImageWidth (256) absent reads as 0: 0 tiles across, so two 16x16 tile offsets for 32 rows are refused."""
    data = _tiled_tiff(image=(32, 32), tiles=2)
    entry = data.index(struct.pack("<HHI", 256, 3, 1))
    data = data[:entry] + struct.pack("<HHIHH", 0xFFFE, 3, 1, 32, 0) + data[entry + 12:]  # a private tag in its place
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(data)
    assert (caught.value.reason, str(caught.value)) == ("too_costly", "TIFF of 0x32 listing 2 pieces where it has 0")


def test_a_tiff_with_no_planar_configuration_is_chunky():
    """PlanarConfiguration (284) absent is 1, chunky (TIFF 6.0): an RGB image of 16 rows in one strip of 16 has one
    piece, not one per sample, so three strip offsets are refused."""
    tags = [(256, 3, 1, 16), (257, 3, 1, 16), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 2), (273, 4, 3, 0),
            (277, 3, 1, 3), (278, 3, 1, 16), (279, 4, 3, 0)]
    start = 8 + 2 + 12 * len(tags) + 4 + 24
    data = _tiff_of(tags, {273: struct.pack("<3I", start, start, start), 279: struct.pack("<3I", 768, 0, 0)},
                    bytes(768))
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(data)
    assert (caught.value.reason, str(caught.value)) == ("too_costly", "TIFF of 16x16 listing 3 pieces where it has 1")


def test_a_float_image_spanning_all_of_float32_is_scaled_in_float64():
    """-3e38..3e38: their difference overflows float32 (max 3.4e38) but not float64."""
    values = np.linspace(-3e38, 3e38, 160 * 120, dtype=np.float32).reshape(120, 160)
    wide = values.astype(np.float64)
    expected = np.rint((wide - wide.min()) * (255.0 / (wide.max() - wide.min())))
    got = np.asarray(open_upright_rgb(tiff(Image.fromarray(values, "F"))))[..., 0]
    assert np.array_equal(got, expected)


def test_a_32_bit_image_spanning_four_billion_levels_is_scaled_in_64_bits():
    """-2e9..2e9: (v - lo) * 255 is about 1e12, far over int32; rounded half up, by hand in Python integers."""
    values = np.linspace(-2_000_000_000, 2_000_000_000, 160 * 120).astype(np.int32).reshape(120, 160)
    lo, hi = int(values.min()), int(values.max())
    expected = np.array([[((int(v) - lo) * 255 + (hi - lo) // 2) // (hi - lo) for v in row] for row in values])
    got = np.asarray(open_upright_rgb(tiff(Image.fromarray(values, "I"))))[..., 0]
    assert np.array_equal(got, expected)


def test_missing_float_values_are_set_before_the_cast_so_numpy_never_warns():
    """NaN cast to 8 bits is undefined (numpy warns "invalid value encountered in cast"): it becomes lo first."""
    values = np.linspace(0.1, 0.2, 160 * 120, dtype=np.float32).reshape(120, 160)
    values[0, :5] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = np.asarray(open_upright_rgb(tiff(Image.fromarray(values, "F"))))[..., 0]
    assert (got[0, :5] == 0).all()


@pytest.mark.filterwarnings("ignore:Truncated File Read")  # Pillow's, about the same file
def test_libtiff_messages_during_a_decode_become_one_debug_line_in_this_process(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="serving.imaging")
    with pytest.raises(ImageRejected):
        open_upright_rgb(_tiff_libtiff_complains_about(tmp_path), name="visitor.tif")
    lines = [r.getMessage() for r in caplog.records if r.name == "serving.imaging"]
    named = [line for line in lines if line.startswith("visitor.tif: the decoder said: ")]
    assert len(named) == 1 and "JPEGLib" in named[0]
    assert not [line for line in lines if "JPEGLib" in line and "visitor.tif" not in line]


@pytest.mark.filterwarnings("ignore:Truncated File Read")  # Pillow's, about the same file
def test_libtiff_messages_outside_a_decode_are_logged_on_their_own(tmp_path, caplog):
    """Pillow used directly, in a thread that never decoded through open_upright_rgb: libtiff's complaint is a
    DEBUG line of its own."""
    caplog.set_level(logging.DEBUG, logger="serving.imaging")
    path = _tiff_libtiff_complains_about(tmp_path)
    failures = []

    def decode():
        try:
            Image.open(path).load()
        except OSError as exc:
            failures.append(exc)

    thread = threading.Thread(target=decode)
    thread.start()
    thread.join()
    assert len(failures) == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "serving.imaging"]
    assert [line for line in lines if line.startswith("JPEGLib: ")], lines


def test_warnings_not_from_pillow_are_still_shown_as_usual():
    code = "import warnings, serving.imaging\nwarnings.warn('not about a file', UserWarning)\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "UserWarning: not about a file" in done.stderr


def _ppm(side: int, pad: int) -> bytes:
    """A binary PPM (P6) whose header has a comment of `pad` bytes; the header's parse ends 14 + pad + the side's
    digits after the magic number (counted by hand below)."""
    pixels = photo((side, side), 3).tobytes()
    return b"P6\n#" + b"x" * pad + b"\n" + f"{side} {side}\n255".encode() + b"\n" + pixels


@pytest.mark.parametrize("over", [0, 1])
def test_a_pnm_header_up_to_the_limit_is_read_and_one_byte_over_is_refused(over):
    # After "P6": "\n" (1), "#" + pad + "\n" (pad + 2), "100 100\n255" (11): the parse stops right after "255",
    # at 14 + pad, which must be at most MAX_PNM_HEADER (1,024).
    data = _ppm(100, imaging.MAX_PNM_HEADER - 14 + over)
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (100, 100)  # a file Pillow reads
    if not over:
        assert open_upright_rgb(data).tobytes() == photo((100, 100), 3).tobytes()
        return
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(data)
    assert (caught.value.reason, str(caught.value)) == ("too_costly", "PNM whose header runs past 1,024 bytes")


def test_a_plain_pnm_with_a_comment_among_its_values_is_refused():
    data = b"P3\n2 2\n255\n" + b"255 0 0  0 255 0\n# a comment Pillow copies the values anew for\n0 0 255  9 9 9\n"
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(data)
    assert (caught.value.reason, str(caught.value)) == ("too_costly", "plain-text PNM with comments among its values")


def _j2k_head(*, siz_at: int, image=(640, 480), offset=(0, 0), tile=(640, 480), levels=5, after_levels=7) -> bytes:
    """A codestream's start: SIZ at siz_at (Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz at +6..+26), then COD, whose
    decomposition levels are at +9; padded before SIZ with 0xEE bytes."""
    siz = b"\xff\x51" + bytes(4) + b"".join(n.to_bytes(4, "big") for n in (*image, *offset, *tile)) + bytes(12)
    cod = b"\xff\x52" + bytes(7) + bytes([levels, after_levels]) + bytes(4)
    return b"\xee" * siz_at + siz + cod


@pytest.mark.parametrize("head, levels", [
    (_j2k_head(siz_at=0), 3),  # SIZ first: found at 0
    (_j2k_head(siz_at=40), 3),
    (_j2k_head(siz_at=40, levels=2), 2),  # fewer levels than 1/8 needs: as many as it has
    (_j2k_head(siz_at=40, tile=(320, 480)), 0),  # tiles: openjpeg keeps each tile's buffers whole
    (_j2k_head(siz_at=40, tile=(640, 240)), 0),
    (_j2k_head(siz_at=40, offset=(40, 30), tile=(600, 450)), 3),  # one tile exactly covering the offset image
    (_j2k_head(siz_at=40)[:88], 0),  # COD found, its levels byte (at 82 + 9) cut off
    # one tile exactly covering an image whose sizes need all 4 bytes: 8,388,608 rows offset by as many
    (_j2k_head(siz_at=0, image=(4, 1 << 24), offset=(0, 1 << 23), tile=(4, 1 << 23)), 3),
])
def test_jpeg_2000_levels_come_from_siz_and_cod(head, levels):
    assert imaging._j2k_levels_available(head) == levels


def test_pillows_own_log_outside_a_decode_is_one_debug_line_naming_its_logger(caplog):
    with caplog.at_level(logging.DEBUG, logger="serving.imaging"):
        logging.getLogger("PIL.TiffImagePlugin").error("samples per pixel: %d", 9999)  # no decode in progress
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "serving.imaging"] == [
        ("DEBUG", "PIL.TiffImagePlugin: samples per pixel: 9999")]
