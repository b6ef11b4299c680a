"""Open any image the way training saw it: upright RGB, first frame, transparency on white, within a budget.

The clean stage (`python -m training data`) writes every training image through `open_upright_rgb`, and
the app passes every upload through it, so training and serving read the same files the same way:

- **Formats, by content, never by name:** FORMATS below (HEIC/HEIF through the pillow-heif plugin, AVIF
  through Pillow's own). EPS (Ghostscript), PDF, SVG, HTML and Pillow's other formats are `not_image`.
- **A budget for every decode,** whatever the file holds, checked before a pixel is decoded: the pixel cap,
  the cheap structural signs (a JPEG's scans and segments, a PNG's chunks) and an estimate of the decoder's
  CPU time from its measured cost per megapixel. Over it: `too_costly`. Memory stays linear in 8-bit
  pixels: conversions go strip by strip, and a large image the caller will shrink anyway is reduced as it
  is converted, so no second full-size copy is made.
- **Pixels:** EXIF rotation; the first frame; every kind of transparency (alpha, palette, a colour key)
  onto white; 16-bit, 32-bit and float images scaled by the range they actually use; near-uniform
  images refused as `blank`.
- **Quiet decoders:** Pillow's and libtiff's own messages about a file become one DEBUG line naming it.

Only Pillow, pillow-heif and numpy: the app imports this without torch or fastai.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import io
import logging
import math
import os
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Union

import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

# Well below Pillow's own 89 MP bomb limit: a 12 MP phone photo (4032x3024) passes, a decompression
# bomb is refused from its header before a single pixel is decoded.
MAX_PIXELS = 40_000_000
BACKGROUND = (255, 255, 255)
# Pillow's name → the name people know. In the order Image.open tries them: TGA last, since it has no signature
# and must not claim other files.
FORMAT_NAMES_BY_FORMAT = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "GIF": "GIF", "HEIF": "HEIC", "AVIF": "AVIF",
                          "TIFF": "TIFF", "BMP": "BMP", "JPEG2000": "JPEG 2000", "PPM": "PNM", "PSD": "PSD",
                          "ICO": "ICO", "QOI": "QOI", "SGI": "SGI", "PCX": "PCX", "TGA": "TGA"}
FORMATS = tuple(FORMAT_NAMES_BY_FORMAT)
FORMAT_NAMES = ", ".join(FORMAT_NAMES_BY_FORMAT.values()).replace(", TGA", " or TGA")

# The CPU one decode may take, in seconds of the benchmark machine (docs/benchmarks.md): a file whose
# estimate is over it is refused before decoding, so that a few small files can't keep the app busy.
DECODE_BUDGET_S = 2.0
# Measured decoding cost per megapixel (docs/benchmarks.md), by Pillow's decoder (its tile codec name) or,
# for formats decoded by a library of their own, by format. Costs of a few ms a megapixel are left out.
SECONDS_PER_MP = {
    "zip": 0.03,  # PNG
    "gif": 0.015, "pcx": 0.015, "sgi_rle": 0.01,
    "WEBP": 0.05, "AVIF": 0.015, "HEIF": 0.035,
    # Pillow's decoders written in Python, far slower than the rest (docs/benchmarks.md)
    "qoi": 3.0, "sgi16": 3.0, "ppm_plain": 1.3,  # plain-text PNM: per million values, three a pixel for colour
}
# AV1 and HEVC: entropy decoding grows with the bits too. RLE BMP: Pillow's Python decoder costs per code.
SECONDS_PER_MB = {"AVIF": 0.1, "HEIF": 0.18, "bmp_rle": 0.3}
TIFF_SECONDS_PER_MP = {"tiff_lzw": 0.035, "tiff_adobe_deflate": 0.025, "tiff_deflate": 0.025, "jpeg": 0.02,
                       "tiff_lzma": 0.15, "lzma": 0.15, "zstd": 0.01, "webp": 0.05}
# JPEG: entropy decoding per megapixel, plus one more pass over every block for each extra progressive scan.
JPEG_SECONDS_PER_MP, JPEG_SECONDS_PER_SCAN_MP = 0.008, 0.0015
# JPEG 2000 by how many resolution levels openjpeg skips (Image.reduce): each level a quarter of the pixels.
J2K_SECONDS_PER_MP = (0.15, 0.06, 0.015, 0.005)
# The memory one decode may take, its input bytes included: a few decodes at once fit a small server.
MAX_DECODE_BYTES = 300_000_000
# Bytes a decoder holds per pixel at its peak where that is more than Pillow's own image (MODE_BYTES): libwebp
# keeps RGBA frames besides Pillow's copy, libavif and libheif their YUV planes, openjpeg 32-bit samples.
DECODER_BYTES_PER_PIXEL = {"WEBP": 16, "AVIF": 10, "HEIF": 10, "JPEG2000": 16}
# libavif's and libheif's planes grow with alpha, and AV1's with full-resolution colour (4:4:4) or 10 and 12 bits
# (measured, 8 MP: 9.5 bytes a pixel for 4:2:0 AVIF, 11 for 4:4:4, 17-19 with alpha; HEIC 7-8, 14 with alpha).
AV1_FULL_COLOUR_BYTES_PER_PIXEL, ALPHA_PLANES_BYTES_PER_PIXEL = 14, 20
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
MODE_BYTES = {"1": 1, "L": 1, "P": 1, **dict.fromkeys(SIXTEEN_BIT, 2)}  # Pillow keeps 4 bytes a pixel for the rest
# Steps before the first scan (segments, fill and stray bytes, each read by Pillow in Python): real files take a
# dozen or so. Lossless JPEG is refused: libjpeg-turbo ignores the scale Pillow asks for and overruns its buffer.
MAX_JPEG_SEGMENTS = 500
LOSSLESS_JPEG = (0xC3, 0xC7, 0xCB, 0xCF)
# Entries of a TIFF-structured directory (a TIFF file's first, a JPEG's EXIF or multi-picture index), each read in
# Python, and whose data Pillow keeps a copy of per tag: real files have tens.
MAX_TIFF_ENTRIES, MAX_MPF_ENTRIES = 1_000, 64
TIFF_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8,
                   18: 8}
# A PNM header (magic, width, height, maximum, comments) is read a byte at a time; real ones are a few dozen bytes.
MAX_PNM_HEADER = 1_024
# PNG chunks, each handled in Python: every IDAT of a 10 MB file at 1 KB each is 10,000; iCCP may occur once.
MAX_PNG_CHUNKS, MAX_PNG_EXTRA_CHUNKS, MAX_PNG_ICCP = 100_000, 1_000, 1
# GIF sub-blocks before the first image, each read in Python, and those of comments, which Pillow joins one by
# one (quadratic in their number); real files have a handful.
MAX_GIF_SUBBLOCKS, MAX_GIF_COMMENT_SUBBLOCKS = 10_000, 1_000
# ICO entries, each read in Python: real icons hold a few sizes. PSD image resources, likewise: a few dozen.
MAX_ICO_ENTRIES, MAX_PSD_RESOURCES = 256, 1_000
# Above this, a decoded image the caller will shrink anyway (shrink_to) is reduced while it is converted,
# so the RGB copy is a fraction of it; below, conversion is exact and cheap either way.
SHRINK_ABOVE_PIXELS = 8_000_000
STRIP_BYTES = 8_000_000  # converted a strip of about this much at a time: memory stays linear in 8-bit pixels
# Blank: every channel of a ~256 px thumbnail within this many levels. JPEG noise on a flat colour stays
# inside it; any picture with something to recognise spans far more.
BLANK_THUMB, BLANK_LEVELS = 256, 6  # at 256 px a 1 px line on a 7,000 px drawing still moves a pixel 9 levels
HIGH_DEPTH = (*SIXTEEN_BIT, "I", "F")
# EXIF orientation → the transpose that makes the image upright (the EXIF standard's eight cases).
ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}

ImageSource = Union[str, os.PathLike, bytes, BinaryIO, Image.Image]

pillow_heif.register_heif_opener()


class ImageRejected(ValueError):
    """An input that is not a usable image; `reason` is a short code for manifests and logs."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def sniff_non_image(head: bytes) -> str | None:
    """Name the document type when the first bytes show HTML, SVG, XML or PDF, else None."""
    text = head.lstrip()[:512].lower()
    if text.startswith(b"%pdf"):
        return "PDF"
    if b"<svg" in text:
        return "SVG"
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "HTML"
    if text.startswith(b"<?xml"):
        return "XML"
    return None


def identify(head: bytes) -> str | None:
    """The format among FORMATS whose signature the first 16 bytes of a file show, else None (TGA has none:
    it is only tried, last, when a file is opened)."""
    return next((fmt for fmt in FORMATS if (accept := Image.OPEN.get(fmt, (None, None))[1]) and accept(head[:16])),
                None)


def open_upright_rgb(source: ImageSource, *, max_pixels: int = MAX_PIXELS, min_side: int = 1,
                     shrink_to: tuple[int, int] | None = None, name: str = "image") -> Image.Image:
    """Decode `source` within the budget and return it as an upright RGB image, or raise ImageRejected.

    `shrink_to`: the smallest size the caller will use. A much larger image may come back smaller, never
    below it: a JPEG decoded at 1/2, 1/4 or 1/8 scale in the DCT, a JPEG 2000 at a lower resolution level,
    others box-reduced. `name` is what the DEBUG line about decoder messages calls the file.
    """
    with _decoder_notes(name):
        img = source if isinstance(source, Image.Image) else _decode(_read_bytes(source), max_pixels, shrink_to)
        if img.width * img.height > max_pixels:  # checked from the header for files; here for an image given open
            raise ImageRejected("too_many_pixels",
                                f"image is {img.width}x{img.height}, over the {max_pixels:,}-pixel cap")
        if img is source:
            _pillow(img.load)  # Image.open reads pixels only when asked: a broken file given open fails here, by name
        rgb = _upright(_to_rgb(img, _reduce_factor(img.size, shrink_to)), _orientation(img))
    if min(rgb.size) < min_side:
        raise ImageRejected("too_small", f"image is {rgb.width}x{rgb.height}, smaller than {min_side}px on a side")
    if _is_blank(rgb):
        raise ImageRejected("blank", f"image is {rgb.width}x{rgb.height} of nearly one flat colour")
    return rgb


def resize_longest(img: Image.Image, max_side: int) -> Image.Image:
    """Shrink so the longest side is at most `max_side`; never enlarge."""
    if max(img.size) <= max_side:
        return img
    return ImageOps.contain(img, (max_side, max_side), Image.Resampling.LANCZOS)


# A training image: its longest side at most TRAINING_MAX_SIDE (training crops 224 px; 512 leaves room for
# RandomResizedCrop), saved as JPEG at this quality (visually lossless: training data, not thumbnails).
TRAINING_MAX_SIDE, TRAINING_JPEG_QUALITY = 512, 92


def training_jpeg(img: Image.Image, max_side: int = TRAINING_MAX_SIDE) -> tuple[bytes, str]:
    """An upright RGB image as the data stage stores it: shrunk to `max_side`, JPEG; and the SHA-256 of its pixels,
    which names the file, so that the same picture always gets the same name (the clean stage and app feedback)."""
    img = resize_longest(img, max_side)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=TRAINING_JPEG_QUALITY)
    return out.getvalue(), hashlib.sha256(f"{img.size}".encode() + img.tobytes()).hexdigest()


# --- decoding, within the budget ---------------------------------------------------------------------------

def _read_bytes(source: ImageSource) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, (str, os.PathLike)):
        return Path(source).read_bytes()
    return source.read()


def _decode(data: bytes, max_pixels: int, shrink_to: tuple[int, int] | None) -> Image.Image:
    if not data:
        raise ImageRejected("empty", "the file is empty")
    kind = sniff_non_image(data[:1024])
    if kind:
        raise ImageRejected("not_image", f"this is {kind}, not a raster image")
    structure = _check_structure(data, max_pixels)
    img = _pillow(lambda: Image.open(io.BytesIO(data), formats=FORMATS))
    if img.width * img.height > max_pixels:
        raise ImageRejected("too_many_pixels", f"image is {img.width}x{img.height}, over the {max_pixels:,}-pixel cap")
    full_size = img.size  # before a JPEG draft: entropy decoding touches every coefficient at any scale
    skipped = _shrink_while_decoding(img, shrink_to, structure)
    _check_cost(img, full_size, data, skipped, structure.scans)
    decoded = (full_size[0] >> skipped, full_size[1] >> skipped) if skipped else img.size
    _check_memory(img, decoded, len(data) + structure.extra_bytes, shrink_to, _decoder_bytes_per_pixel(img, data))
    if len(img.tile) == 1:
        # The bytes are all in memory: hand them to the decoder at once rather than in Pillow's 64 KB reads, each
        # of which makes libjpeg suspend and resume (same pixels, sooner). One tile only: strips or tiles that
        # share an offset would each be handed the rest of the file.
        img.decodermaxblock = max(len(data), img.decodermaxblock)
    _pillow(img.load)  # an animation's first frame: Image.open leaves it there
    if skipped:
        img.reduce = 0  # JPEG 2000's setting shadows Image.reduce(), the method; 0 gives the method back
    return img


def _pillow(step):
    """Run one step of Pillow's on untrusted bytes; whatever it raises means the file can't be read as given.

    Pillow's plugins raise what their parsing hits (IndexError, OverflowError, RuntimeError, ... besides
    OSError): from a stranger's file each is a broken file, not a bug of ours, so each becomes a reason."""
    try:
        return step()
    except Image.DecompressionBombError as exc:
        raise ImageRejected("too_many_pixels", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected("not_image", f"not an image format we read ({FORMAT_NAMES})") from exc
    except Exception as exc:  # noqa: BLE001  (see the docstring)
        truncated = isinstance(exc, EOFError) or "truncated" in str(exc).lower()
        reason = "truncated" if truncated else "corrupt"
        raise ImageRejected(reason, f"the image data is {'cut short' if truncated else 'corrupt'}: "
                                    f"{type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class _Structure:
    """What reading a file's structure, before Pillow, tells the estimates."""
    scans: int = 1  # a JPEG's scans: each is one more pass over every block
    extra_bytes: int = 0  # memory a decoder holds besides its image: libjpeg's coefficients, for several scans
    j2k_levels: int = 0  # resolution levels a JPEG 2000 can skip: its wavelet decomposition, if in one tile


def _check_structure(data: bytes, max_pixels: int) -> _Structure:
    """Refuse, as too_costly, structures whose handling costs grow with the file, not the pixels: Pillow reads
    them in Python, in Image.open, before any other check can run."""
    if data.startswith(b"\xff\xd8\xff"):
        return _check_jpeg(data)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        _check_png(data)
    elif data.startswith((b"GIF87a", b"GIF89a")):
        _check_gif(data)
    elif data.startswith(b"\0\0\1\0"):
        _check_ico(data, max_pixels)
    elif data.startswith(b"8BPS"):
        _check_psd(data)
    elif data.startswith((b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")):
        _check_tiff(data)
    elif data[:1] == b"P" and data[1:2] in b"123456fF":
        _check_pnm(data)
    elif data.startswith((b"\0\0\0\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return _Structure(j2k_levels=_j2k_levels_available(data))
    return _Structure()


def _check_jpeg(data: bytes) -> _Structure:
    steps, at, frame = 0, 2, b""
    while at + 4 <= len(data) and data[at:at + 2] != b"\xff\xda":  # up to the first scan (SOS)
        steps += 1
        if steps > MAX_JPEG_SEGMENTS:
            raise ImageRejected("too_costly", f"JPEG with over {MAX_JPEG_SEGMENTS} segments before its image data")
        marker = data[at + 1] if data[at] == 0xFF else None
        if marker is None or marker == 0xFF:  # a stray byte, or fill before a marker: Pillow steps over each
            at += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker in (0x00, 0x01):  # markers with no length
            at += 2
            continue
        segment = data[at + 4:at + 2 + int.from_bytes(data[at + 2:at + 4], "big")]
        if marker in LOSSLESS_JPEG:
            raise ImageRejected("not_image", "a lossless JPEG, which this demo doesn't read")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame, not tables
            frame = segment
        if marker == 0xE2 and segment.startswith(b"MPF\0"):  # the multi-picture index, parsed in Image.open
            _check_directory(segment[4:], MAX_MPF_ENTRIES, "JPEG multi-picture index")
        if marker == 0xE1 and segment.startswith(b"Exif\0\0"):  # read in Image.open for its resolution
            _check_directory(segment[6:], MAX_TIFF_ENTRIES, "JPEG EXIF")
        at += 2 + len(segment) + 2
    scans = max(1, data.count(b"\xff\xda"))  # 0xFF 0xDA can't occur inside entropy-coded data
    return _Structure(scans=scans, extra_bytes=_coefficient_bytes(frame) if scans > 1 else 0)


def _coefficient_bytes(frame: bytes) -> int:
    """What libjpeg keeps for a JPEG of several scans, at any scale: every coefficient of every component, 2 bytes."""
    if len(frame) < 6:
        return 0
    height, width, count = int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big"), frame[5]
    sampling = [(c >> 4, c & 15) for c in frame[7:6 + 3 * count:3]]
    if not sampling or not all(h and v for h, v in sampling):
        return 0
    h_max, v_max = max(h for h, _ in sampling), max(v for _, v in sampling)
    return int(sum(width * height * h * v / (h_max * v_max) for h, v in sampling) * 2)


def _check_png(data: bytes) -> None:
    chunks, extra, iccp, at = 0, 0, 0, 8
    while at + 8 <= len(data):
        length, kind = int.from_bytes(data[at:at + 4], "big"), data[at + 4:at + 8]
        chunks += 1
        extra += kind not in (b"IDAT", b"fdAT", b"fcTL")
        iccp += kind == b"iCCP"
        if chunks > MAX_PNG_CHUNKS or extra > MAX_PNG_EXTRA_CHUNKS or iccp > MAX_PNG_ICCP:
            raise ImageRejected("too_costly", f"PNG with {chunks:,} chunks ({extra:,} not image data, "
                                              f"{iccp} colour profiles) at byte {at:,}")
        if kind == b"IEND":
            return
        at += 12 + length


def _check_gif(data: bytes) -> None:
    at = 13 + (3 << ((data[10] & 7) + 1) if len(data) > 10 and data[10] & 0x80 else 0)  # after the global palette
    steps = comment = 0
    while at < len(data) and data[at] not in (0x2C, 0x3B):  # up to the first image, or the end
        steps += 1
        if data[at] == 0x21:  # an extension: a label, then data blocks
            label, at = data[at + 1] if at + 1 < len(data) else 0, at + 2
            while at < len(data) and data[at] and steps <= MAX_GIF_SUBBLOCKS:
                steps += 1
                comment += label == 0xFE
                at += 1 + data[at]
        at += 1  # past the extension's end, or a stray byte, which Pillow steps over and reads on
        if steps > MAX_GIF_SUBBLOCKS or comment > MAX_GIF_COMMENT_SUBBLOCKS:
            raise ImageRejected("too_costly", f"GIF with over {MAX_GIF_SUBBLOCKS:,} data blocks or stray bytes, or "
                                              f"{MAX_GIF_COMMENT_SUBBLOCKS:,} of comments, before its first image")


def _check_ico(data: bytes, max_pixels: int) -> None:
    """Pillow decodes an icon's largest image inside Image.open: a PNG in it gets the checks a PNG gets, a bitmap
    (DIB) the pixel cap and, run-length encoded, the cost of Pillow's Python decoder for it."""
    count = int.from_bytes(data[4:6], "little")
    if count > MAX_ICO_ENTRIES:
        raise ImageRejected("too_costly", f"ICO with {count:,} images, over {MAX_ICO_ENTRIES}")
    for entry in range(6, 6 + 16 * count, 16):
        size, offset = (int.from_bytes(data[entry + n:entry + n + 4], "little") for n in (8, 12))
        inner = data[offset:offset + size]
        png = inner.startswith(b"\x89PNG\r\n\x1a\n")
        width, height = ((int.from_bytes(inner[16:20], "big"), int.from_bytes(inner[20:24], "big")) if png else
                         (int.from_bytes(inner[4:8], "little", signed=True),
                          int.from_bytes(inner[8:12], "little", signed=True) // 2))  # a DIB: image and mask
        if abs(width * height) > max_pixels:
            raise ImageRejected("too_many_pixels", f"ICO holding a {width}x{height} image, over the "
                                                   f"{max_pixels:,}-pixel cap")
        run_length = not png and int.from_bytes(inner[16:20], "little") in (1, 2)
        if png:
            _check_png(inner)
        elif run_length and len(inner) / 1e6 * SECONDS_PER_MB["bmp_rle"] > DECODE_BUDGET_S:
            raise ImageRejected("too_costly", f"ICO holding {len(inner):,} bytes of run-length bitmap, over the "
                                              f"{DECODE_BUDGET_S:g} s budget")


def _check_psd(data: bytes) -> None:
    at = 26 + 4 + int.from_bytes(data[26:30], "big")  # after the header and the colour-mode data
    end, at, resources = at + 4 + int.from_bytes(data[at:at + 4], "big"), at + 4, 0
    while at + 12 <= min(end, len(data)):  # "8BIM", id, a padded Pascal name, a size, padded data
        resources += 1
        if resources > MAX_PSD_RESOURCES:
            raise ImageRejected("too_costly", f"PSD with over {MAX_PSD_RESOURCES:,} image resources")
        name = data[at + 6] + 1
        at += 6 + name + (name & 1)
        size = int.from_bytes(data[at:at + 4], "big")
        at += 4 + size + (size & 1)


def _check_tiff(data: bytes) -> None:
    """Pillow reads the first directory in Python, keeps one copy per tag of the data it points to, and makes one
    tile per strip or tile offset listed; libtiff allocates whole tiles, however small the image."""
    tags = _check_directory(data, MAX_TIFF_ENTRIES, "TIFF")
    width, height = tags.get(256, (0, 0))[1], tags.get(257, (0, 0))[1]
    planes = tags.get(277, (1, 1))[1] if tags.get(284, (1, 1))[1] == 2 else 1
    if 322 in tags:  # tiled
        tile_w, tile_h = tags[322][1], tags.get(323, (0, 0))[1]
        if tile_w * tile_h > max(4 * width * height, 1 << 20):
            raise ImageRejected("too_costly", f"TIFF of {width}x{height} in tiles of {tile_w}x{tile_h}")
        listed = tags.get(324, (0, 0))[0]
        expected = math.ceil(width / max(tile_w, 1)) * math.ceil(height / max(tile_h, 1)) * planes
    else:
        listed, rows = tags.get(273, (0, 0))[0], tags.get(278, (0, height))[1] or height
        expected = math.ceil(height / max(rows, 1)) * planes
    if listed > max(expected, 1):
        raise ImageRejected("too_costly", f"TIFF of {width}x{height} listing {listed:,} pieces where it has "
                                          f"{expected:,}")


def _check_directory(blob: bytes, max_entries: int, what: str) -> dict[int, tuple[int, int]]:
    """{tag: (count, first value)} of a TIFF-structured blob's first directory; too_costly past max_entries, or
    when its entries point at more data than the blob holds (each such tag is a copy Pillow keeps)."""
    order = {b"II": "little", b"MM": "big"}.get(blob[:2])
    version = int.from_bytes(blob[2:4], order) if order else 0
    if version not in (42, 43):
        return {}
    big = version == 43  # BigTIFF: 8-byte counts and offsets
    count_bytes, entry_bytes, field = (8, 20, 8) if big else (2, 12, 4)
    at = int.from_bytes(blob[8:16] if big else blob[4:8], order)
    entries = int.from_bytes(blob[at:at + count_bytes], order)
    if entries > max_entries:
        raise ImageRejected("too_costly", f"{what} with {entries:,} tags, over {max_entries:,}")
    tags, pointed = {}, 0
    for start in range(at + count_bytes, at + count_bytes + entries * entry_bytes, entry_bytes):
        entry = blob[start:start + entry_bytes]
        tag, kind = int.from_bytes(entry[0:2], order), int.from_bytes(entry[2:4], order)
        count, unit = int.from_bytes(entry[4:4 + field], order), TIFF_TYPE_BYTES.get(kind, 1)
        pointed += count * unit if count * unit > field else 0
        tags[tag] = (count, int.from_bytes(entry[4 + field:4 + field + min(unit, field)], order))
    if pointed > len(blob):
        raise ImageRejected("too_costly", f"{what} whose tags point at {pointed:,} bytes, more than its {len(blob):,}")
    return tags


def _check_pnm(data: bytes) -> None:
    """Pillow reads a PNM header a byte at a time, and copies a plain file's values anew for each comment."""
    header, tokens, at = data[2:2 + MAX_PNM_HEADER + 1], 0, 0
    wanted = 2 if data[1:2] in b"14" else 3  # width, height, and the maximum value but for bilevel
    while tokens < wanted and at < len(header):
        if header[at:at + 1] == b"#":  # a comment, to the end of its line
            end = header.find(b"\n", at)
            at = len(header) if end < 0 else end
        elif header[at:at + 1].isspace():
            at += 1
        else:
            while at < len(header) and not header[at:at + 1].isspace():
                at += 1
            tokens += 1
    if tokens < wanted or at > MAX_PNM_HEADER:
        raise ImageRejected("too_costly", f"PNM whose header runs past {MAX_PNM_HEADER:,} bytes")
    if data[1:2] in b"123" and b"#" in data[2 + at:]:
        raise ImageRejected("too_costly", "plain-text PNM with comments among its values")


def _j2k_levels_available(data: bytes) -> int:
    """Resolution levels openjpeg can skip in this JPEG 2000: at most 3 (1/8 scale, as for JPEG) and its wavelet
    decomposition's (COD); none when it is in tiles (SIZ), whose buffers openjpeg keeps whole at any level."""
    head = data[:65536]
    siz, cod = head.find(b"\xff\x51"), head.find(b"\xff\x52")
    if siz < 0 or cod < 0 or len(head) < max(siz + 30, cod + 10):
        return 0
    image_w, image_h, left, top, tile_w, tile_h = (int.from_bytes(head[siz + n:siz + n + 4], "big")
                                                    for n in range(6, 30, 4))
    if tile_w < image_w - left or tile_h < image_h - top:
        return 0
    return min(3, head[cod + 9])


def _shrink_while_decoding(img: Image.Image, shrink_to: tuple[int, int] | None, structure: _Structure) -> int:
    """Ask the decoder for a smaller image where it can make one cheaply; return JPEG 2000 levels skipped."""
    if not shrink_to:
        return 0
    if img.format in ("JPEG", "MPO"):
        _pillow(lambda: img.draft("RGB", shrink_to))  # 1/2, 1/4 or 1/8 scale from the DCT, still at least shrink_to
    elif img.format == "JPEG2000":
        levels = 0
        while levels < structure.j2k_levels and all(s >> (levels + 1) >= t for s, t in zip(img.size, shrink_to)):
            levels += 1
        img.reduce = levels  # Pillow's property: read back, 0 gives Image.reduce, the method
        return levels
    return 0


def _check_cost(img: Image.Image, size: tuple[int, int], data: bytes, j2k_skipped: int, scans: int) -> None:
    """Refuse, as too_costly, a decode of an image of `size` estimated at over DECODE_BUDGET_S of CPU."""
    mp, mb = size[0] * size[1] / 1e6, len(data) / 1e6
    codec = img.tile[0].codec_name if img.tile else img.format
    if img.format in ("JPEG", "MPO"):
        seconds = mp * (JPEG_SECONDS_PER_MP + JPEG_SECONDS_PER_SCAN_MP * (scans - 1))
    elif img.format == "JPEG2000":
        seconds = mp * J2K_SECONDS_PER_MP[j2k_skipped]
    elif img.format == "TIFF":
        seconds = mp * TIFF_SECONDS_PER_MP.get(str(img.info.get("compression")), 0.0)
    else:
        per_mp = SECONDS_PER_MP.get(codec, SECONDS_PER_MP.get(img.format, 0.0))
        values = len(img.getbands()) if codec == "ppm_plain" else 1  # plain-text PNM: per value, not per pixel
        seconds = mp * per_mp * values + mb * SECONDS_PER_MB.get(codec, SECONDS_PER_MB.get(img.format, 0.0))
    if seconds > DECODE_BUDGET_S:
        raise ImageRejected("too_costly", f"{img.format} of {size[0]}x{size[1]} and {len(data):,} bytes would take "
                                          f"about {seconds:.1f} s to decode, over the {DECODE_BUDGET_S:g} s budget")


def _decoder_bytes_per_pixel(img: Image.Image, data: bytes) -> int:
    """What decoding `img` holds per pixel at its peak (see DECODER_BYTES_PER_PIXEL)."""
    if img.format in ("AVIF", "HEIF") and img.mode != "RGB":
        return ALPHA_PLANES_BYTES_PER_PIXEL
    if img.format == "AVIF":
        at = data.find(b"av1C")  # the AV1 configuration box: its third byte holds bit depth and colour subsampling
        flags = data[at + 6] if 0 <= at and at + 6 < len(data) else 0
        if flags & 0x40 or flags & 0x0C != 0x0C:  # high_bitdepth; or not subsampled both ways (4:4:4, 4:2:2)
            return AV1_FULL_COLOUR_BYTES_PER_PIXEL
    return DECODER_BYTES_PER_PIXEL.get(img.format, MODE_BYTES.get(img.mode, 4))


def _check_memory(img: Image.Image, size: tuple[int, int], nbytes: int, shrink_to: tuple[int, int] | None,
                  bytes_per_pixel: int) -> None:
    """Refuse, as too_costly, a decode of `size` pixels (after a JPEG draft or JPEG 2000 levels) estimated to
    need over MAX_DECODE_BYTES: the file, the decoder's peak, and the RGB copy when conversion makes one."""
    pixels = size[0] * size[1]
    decoded = pixels * bytes_per_pixel
    factor = _reduce_factor(size, shrink_to)
    copy = 0 if img.mode == "RGB" and factor == 1 else pixels // factor ** 2 * 4
    if nbytes + decoded + copy > MAX_DECODE_BYTES:
        raise ImageRejected("too_costly", f"{img.format} of {size[0]}x{size[1]} would need about "
                                          f"{(nbytes + decoded + copy) // 1_000_000} MB to decode, over the "
                                          f"{MAX_DECODE_BYTES // 1_000_000} MB budget")


# --- pixels ------------------------------------------------------------------------------------------------

def _reduce_factor(size: tuple[int, int], shrink_to: tuple[int, int] | None) -> int:
    """How much a large decoded image may be box-reduced as it is converted: never below shrink_to."""
    if not shrink_to or size[0] * size[1] <= SHRINK_ABOVE_PIXELS:
        return 1
    return max(1, min(size[0] // shrink_to[0], size[1] // shrink_to[1]))


def _to_rgb(img: Image.Image, factor: int) -> Image.Image:
    """RGB, transparency on white, high bit depths scaled, box-reduced by `factor`: strip by strip."""
    convert = _strip_converter(img)
    if factor == 1 and (convert is None or img.width * img.height * 4 <= STRIP_BYTES):
        return img if convert is None else convert(img)  # one strip, or already RGB: no copying around it
    out = Image.new("RGB", (math.ceil(img.width / factor), math.ceil(img.height / factor)))
    top = 0
    for strip in _strips(img, factor):
        rgb = strip if convert is None else convert(strip)
        out.paste(rgb.reduce(factor) if factor > 1 else rgb, (0, top // factor))
        top += strip.height
    return out


def _strip_converter(img: Image.Image):
    """A function taking a strip of `img` (same mode) to RGB, with the image's own scaling and transparency;
    None when `img` is RGB already."""
    key = img.info.get("transparency") if img.mode not in ("P", "PA") else None
    if img.mode in HIGH_DEPTH:
        lo, hi = _used_range(img)
        return lambda strip: _on_white(_scaled(strip, lo, hi), _key_mask(strip, key))
    if img.mode == "P" and "transparency" in img.info:
        return lambda strip: _on_white(strip.convert("RGBA"), None)
    if img.mode == "La":  # premultiplied grey (an image given open): Pillow converts it to LA and nothing else
        return lambda strip: _on_white(strip.convert("LA").convert("RGBA"), None)
    if img.mode in ("RGBA", "LA", "RGBa", "PA") or (key is not None and img.mode in ("1", "L", "RGB")):
        return lambda strip: _on_white(strip.convert("RGBA"), None)  # Pillow turns a colour key into alpha
    return None if img.mode == "RGB" else lambda strip: strip.convert("RGB")


def _used_range(img: Image.Image) -> tuple[float, float]:
    """The lowest and highest finite value of a 16-bit, 32-bit or float image; ImageRejected if it is flat."""
    lo, hi = img.getextrema()
    if img.mode == "F" and not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = _finite_extrema(img) or (0.0, 0.0)
    flat = hi - lo <= (1e-6 * max(1.0, abs(lo), abs(hi)) if img.mode == "F" else 3)
    if flat:
        raise ImageRejected("blank", f"{img.mode} image of {img.width}x{img.height} whose values all lie in {lo}..{hi}")
    return lo, hi


def _finite_extrema(img: Image.Image) -> tuple[float, float] | None:
    """The lowest and highest finite value of a float image, None when it has none."""
    lo, hi = math.inf, -math.inf
    for strip in _strips(img, 1):
        values = np.asarray(strip)
        values = values[np.isfinite(values)]
        if values.size:
            lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
    return None if lo > hi else (lo, hi)


def _strips(img: Image.Image, factor: int) -> Iterator[Image.Image]:
    """`img` as horizontal strips of about STRIP_BYTES at 4 bytes a pixel, each a multiple of `factor` rows."""
    rows = factor * max(1, STRIP_BYTES // (img.width * 4 * factor))
    for top in range(0, img.height, rows):
        yield img.crop((0, top, img.width, min(img.height, top + rows)))


def _scaled(strip: Image.Image, lo: float, hi: float) -> Image.Image:
    """A strip of a high-depth image as 8-bit grey, lo..hi mapped to 0..255 (rounded; non-finite as lo)."""
    values = np.array(strip, dtype=np.float64 if strip.mode == "F" else None)  # a strip's own copy, worked in place
    if strip.mode == "F":  # float64: a float image may span all of float32, whose differences overflow it
        np.nan_to_num(values, copy=False, nan=lo, posinf=hi, neginf=lo)
        np.clip(values, lo, hi, out=values)
        values -= lo
        values *= 255.0 / (hi - lo)
        grey = np.rint(values, out=values)
    else:  # integers stay integers: (v - lo) * 255 / (hi - lo), rounded half up; 32-bit values need 64 bits
        span = int(hi) - int(lo)
        grey = (values.astype(np.int64 if strip.mode == "I" else np.int32) - int(lo)) * 255 + span // 2
        grey //= span
    return Image.fromarray(grey.astype(np.uint8), "L")


def _key_mask(strip: Image.Image, key) -> Image.Image | None:
    """Alpha for a high-depth strip whose colour key (PNG tRNS) marks transparent pixels, else None."""
    if key is None:
        return None
    return Image.fromarray(np.where(np.asarray(strip) == key, 0, 255).astype(np.uint8), "L")


def _on_white(img: Image.Image, alpha: Image.Image | None) -> Image.Image:
    """img (RGBA, or grey with a separate alpha) composited onto BACKGROUND, as RGB."""
    if alpha is None and img.mode != "RGBA":
        return img.convert("RGB")
    flat = Image.new("RGB", img.size, BACKGROUND)
    flat.paste(img.convert("RGB"), mask=alpha if alpha is not None else img.getchannel("A"))
    return flat


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation, 1 to 8, read here rather than by Pillow's getexif(), which would read every tag of an
    EXIF block (and keep a copy of each one's data); anything odd counts as 1, upright."""
    if img.format == "TIFF":
        value = img.tag_v2.get(0x0112)  # the image's own directory, already read and checked
    else:
        raw = img.info.get("exif") or b""
        blob = raw[6:] if raw.startswith(b"Exif\0\0") else raw
        try:
            value = _check_directory(blob, MAX_TIFF_ENTRIES, "EXIF").get(0x0112, (0, 1))[1]
        except ImageRejected:  # an EXIF block too large to trust: the picture may still be fine
            value = 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _upright(img: Image.Image, orientation: int) -> Image.Image:
    """Read after decoding and applied last, to the smaller converted image (the same pixels either way)."""
    step = ORIENTATIONS.get(orientation)
    return img if step is None else img.transpose(step)


def _is_blank(img: Image.Image) -> bool:
    """Whether every channel of a small thumbnail lies within BLANK_LEVELS: a flat colour, maybe with noise."""
    factor = max(1, max(img.size) // BLANK_THUMB)
    thumb = img.reduce(factor) if factor > 1 else img
    return all(hi - lo <= BLANK_LEVELS for lo, hi in thumb.getextrema())


# --- decoder messages -------------------------------------------------------------------------------------

_notes = threading.local()


@contextmanager
def _decoder_notes(name: str) -> Iterator[None]:
    """Collect what Pillow and libtiff say while this thread decodes; log it as one DEBUG line naming the file."""
    _notes.lines = []
    try:
        yield
    finally:
        lines, _notes.lines = _notes.lines, None
        if lines:
            log.debug("%s: the decoder said: %s", name, "; ".join(dict.fromkeys(lines))[:1000])


def _note(text: str) -> bool:
    """Keep `text` for the current decode in this thread; False when no decode is running here."""
    lines = getattr(_notes, "lines", None)
    if lines is None:
        return False
    lines.append(text.strip())
    return True


class _PillowLog(logging.Handler):
    """Pillow's own log records (an ERROR for a bad TIFF, say) become notes of the decode they are about."""

    def emit(self, record: logging.LogRecord) -> None:
        if not _note(record.getMessage()):
            log.debug("%s: %s", record.name, record.getMessage())


def _route_pillow_warnings() -> None:
    """Pillow's warnings ("Truncated File Read", "Corrupt EXIF data") during a decode become notes too."""
    shown = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not (f"{os.sep}PIL{os.sep}" in filename and _note(str(message))):
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning
    warnings.filterwarnings("always", module="PIL")  # every time, not once per place: each belongs to a file


_LIBTIFF_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)


def _route_libtiff_messages() -> object | None:
    """libtiff prints its warnings and errors to stderr itself; hand them to _note instead. Returns the handler,
    which must stay referenced. Linux only (where the loaded libtiff can be found); elsewhere they stay on stderr."""
    try:
        maps = Path("/proc/self/maps").read_text()
        path = next(line.split()[-1] for line in maps.splitlines() if "libtiff" in line.rsplit("/", 1)[-1])
        libtiff, libc = ctypes.CDLL(path), ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, StopIteration):
        return None
    libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]

    def handler(module, fmt, args):
        text = ctypes.create_string_buffer(512)
        libc.vsnprintf(text, len(text), fmt, args)
        message = f"{(module or b'libtiff').decode(errors='replace')}: {text.value.decode(errors='replace')}"
        if not _note(message):
            log.debug("%s", message)

    callback = _LIBTIFF_HANDLER(handler)
    libtiff.TIFFSetWarningHandler(callback)
    libtiff.TIFFSetErrorHandler(callback)
    return callback


# Pillow refuses (DecompressionBombError) over twice this, also inside containers whose size we can't read
# from the header (a PNG inside an ICO); between the two it only warns, and our own cap refuses first.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS // 2
_pillow_log = logging.getLogger("PIL")
_pillow_log.addHandler(_PillowLog(logging.INFO))  # not Pillow's DEBUG chatter (every PNG chunk, every TIFF tag)
_pillow_log.propagate = False  # its records reach the log as our DEBUG lines, never as ERROR with no file named
_route_pillow_warnings()
Image.init()  # every plugin loaded now, so that libtiff is in memory
_LIBTIFF_CALLBACK = _route_libtiff_messages()
