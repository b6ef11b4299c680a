"""A corpus of image files of our own making: every supported format and pixel mode, and files to refuse.

    files = corpus()          # {file name: Case(data, reason)}; reason None means the file must be kept
    write_corpus(folder)      # the same files under folder/<label>/, for the data stage

Every kept picture is a different photo-like image (its own seed), so none is a duplicate of another, and
each is at least 96 px a side, over the data stage's 64 px minimum. File names never decide the format:
several lie about it, and some have no extension. Hostile files are built small: what makes them costly is
their structure, not their size. Generated, never downloaded; `python -m bench.hostile` builds larger ones.
"""
from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from serving.imaging import (DECODE_BUDGET_S, JPEG_SECONDS_PER_SCAN_MP, MAX_GIF_COMMENT_SUBBLOCKS, MAX_JPEG_SEGMENTS,
                             MAX_PNG_EXTRA_CHUNKS, MAX_PSD_RESOURCES)

SIDE = (160, 120)


@dataclass(frozen=True)
class Case:
    data: bytes
    reason: str | None  # what both the data stage and the app say: None = kept / classified
    transparent: bool = False  # a corner of it is fully transparent, so it must come out white there


def photo(size: tuple[int, int] = SIDE, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: a gradient of its own colours, a few shapes and some grain."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    t = ((x / w + y / h) / 2)[..., None]
    pixels = c0 * (1 - t) + c1 * t
    for _ in range(4):  # blocks of another colour, so hashes and edges have something to hold on to
        x0, y0 = rng.integers(0, w - w // 4), rng.integers(0, h - h // 4)
        pixels[y0:y0 + h // 4, x0:x0 + w // 4] = rng.uniform(0, 255, 3)
    pixels += rng.normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def with_transparent_corner(img: Image.Image) -> Image.Image:
    """RGBA, its top-left quarter fully transparent (and black underneath, as many encoders leave it)."""
    rgba = img.convert("RGBA")
    w, h = rgba.size
    rgba.paste((0, 0, 0, 0), (0, 0, w // 2, h // 2))
    return rgba


def grey16(seed: int, lo: int, hi: int, size: tuple[int, int] = SIDE) -> Image.Image:
    """A 16-bit grey picture whose values use only lo..hi of 0..65535."""
    grey = np.asarray(photo(size, seed).convert("L"), dtype=np.float64) / 255
    return Image.fromarray(np.rint(lo + grey * (hi - lo)).astype(np.uint16))


def psd(img: Image.Image) -> bytes:
    """A minimal Photoshop file (Pillow reads PSD but can't write it): RGB, 8 bits, raw planes."""
    w, h = img.size
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, h, w, 8, 3)
    planes = b"".join(img.getchannel(c).tobytes() for c in "RGB")
    return header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + planes


def plain_ppm(img: Image.Image) -> bytes:
    """P3 (RGB) or P2 (grey): every value written as text, which Pillow decodes in Python, slowly."""
    w, h = img.size
    values = " ".join(map(str, np.asarray(img).ravel()))
    return f"{'P2' if img.mode == 'L' else 'P3'}\n{w} {h}\n255\n{values}\n".encode()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with_chunks(img: Image.Image, extra: list[bytes]) -> bytes:
    """A PNG of img with the given chunks inserted after IHDR."""
    png = encode(img, "PNG")
    ihdr_end = 8 + 8 + 13 + 4
    return png[:ihdr_end] + b"".join(extra) + png[ihdr_end:]


def iccp_bomb(img: Image.Image, profiles: int = 3) -> bytes:
    """A PNG with several iCCP chunks (the reviewer's had 9,366), each decompressed by a naive reader."""
    profile = b"icc\x00\x00" + zlib.compress(b"\x00" * 100_000)
    return png_with_chunks(img, [png_chunk(b"iCCP", profile)] * profiles)


def chunk_flood(img: Image.Image) -> bytes:
    """A PNG with more text chunks than any real file, each handled in Python."""
    return png_with_chunks(img, [png_chunk(b"tEXt", b"k\x00v")] * (MAX_PNG_EXTRA_CHUNKS + 1))


def scan_bomb(size: tuple[int, int] = (2000, 1500)) -> bytes:
    """A progressive JPEG with its last scan repeated until decoding it would take over the budget: a smooth
    picture, so that each scan is a few bytes (the reviewer's 1,000 scans of 36 MP took 271 KB)."""
    smooth = photo(size, 7).reduce(8).resize(size, Image.Resampling.BILINEAR)
    data = encode(smooth, "JPEG", progressive=True, quality=50)
    last, end = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    mp = size[0] * size[1] / 1e6
    repeats = int(DECODE_BUDGET_S / (JPEG_SECONDS_PER_SCAN_MP * mp)) + 10
    return data[:end] + data[last:end] * repeats + data[end:]


def segment_flood(img: Image.Image) -> bytes:
    """A JPEG with more comment segments before its image than any real file."""
    data = encode(img, "JPEG")
    comment = b"\xff\xfe" + struct.pack(">H", 6) + b"hi!!"
    return data[:2] + comment * (MAX_JPEG_SEGMENTS + 1) + data[2:]


def gif_comment_flood(img: Image.Image, blocks: int = MAX_GIF_COMMENT_SUBBLOCKS + 1) -> bytes:
    """A GIF with a comment of one-byte blocks before its image: Pillow joins them one by one."""
    gif = encode(img, "GIF")
    at = 13 + (3 << ((gif[10] & 7) + 1) if gif[10] & 0x80 else 0)
    comment = b"\x21\xfe" + b"\x01x" * blocks + b"\x00"
    return gif[:at] + comment + gif[at:]


def exif_copies(img: Image.Image, tags: int = 100, size: int = 4_000) -> bytes:
    """A JPEG whose EXIF (of `size` bytes, at most 65,527) has tags that all point at the same bytes: Pillow keeps a
    copy per tag, so 64 KB can make hundreds of megabytes."""
    entries = b"".join(struct.pack(">HHII", 0xC000 + i, 7, size - 8, 8) for i in range(tags))
    blob = b"MM\0*" + struct.pack(">IH", 8, tags) + entries + b"\0\0\0\0"
    blob = b"Exif\0\0" + blob + bytes(size - len(blob))
    jpeg = encode(img, "JPEG")
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(blob) + 2) + blob + jpeg[2:]


def ico_around(png: bytes) -> bytes:
    """An icon holding one PNG, which Pillow decodes inside Image.open."""
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + png


def psd_resource_flood(img: Image.Image, count: int = MAX_PSD_RESOURCES + 1) -> bytes:
    """A Photoshop file with more image resources than any real one, each read in Python."""
    resource = b"8BIM" + struct.pack(">H", 1000) + b"\x00\x00" + struct.pack(">I", 0)
    resources = resource * count
    plain = psd(img)
    return plain[:26] + struct.pack(">I", 0) + struct.pack(">I", len(resources)) + resources + plain[34:]


def pixel_bomb() -> bytes:
    """A PNG whose header claims 100,000 x 100,000 pixels: a few hundred bytes on disk."""
    raw = zlib.compress(b"\x00" * 1000)
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", raw) + png_chunk(b"IEND", b"")


def line_drawing(size: tuple[int, int] = (2600, 1800)) -> Image.Image:
    """Thin black lines on white: nearly all of it one colour, and not blank."""
    from PIL import ImageDraw
    img = Image.new("L", size, 255)
    draw = ImageDraw.Draw(img)
    for n in range(6):
        draw.ellipse((200 + 300 * n, 300, 600 + 300 * n, 1400), outline=0, width=1)
    return img


def tiff(img: Image.Image, **options) -> bytes:
    return encode(img, "TIFF", **options)


@lru_cache(maxsize=1)
def corpus() -> dict[str, Case]:
    """The whole corpus, built once per process (about a second)."""
    seeds = iter(range(100, 1000))

    def p(size=SIDE):
        return photo(size, next(seeds))

    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: stored sideways, shown upright
    palette_trns, gif_trns = (p().convert("P", palette=Image.Palette.ADAPTIVE, colors=64) for _ in range(2))
    for img in (palette_trns, gif_trns):
        img.paste(0, (0, 0, 80, 60))
    rgb_key = p()
    rgb_key.paste((0, 255, 0), (0, 0, 80, 60))
    grey_key = grey16(next(seeds), 2000, 30000)
    grey_key.paste(0, (0, 0, 80, 60))
    animated = [p(), p(), p()]
    files = {
        # JPEG, and files that don't say they are one
        "baseline.jpg": Case(encode(p(), "JPEG", quality=90), None),
        "progressive_no_extension": Case(encode(p(), "JPEG", progressive=True), None),
        "grey.jpg": Case(encode(p().convert("L"), "JPEG"), None),
        "cmyk.jpg": Case(encode(p().convert("CMYK"), "JPEG"), None),
        "rotated.jpg": Case(encode(p((120, 160)), "JPEG", exif=exif), None),
        "two_pictures.mpo": Case(encode(p(), "MPO", save_all=True, append_images=[p()]), None),
        "really_a_jpeg.png": Case(encode(p(), "JPEG"), None),
        # PNG in every mode, with every kind of transparency
        "rgb.png": Case(encode(p(), "PNG"), None),
        "rgba.png": Case(encode(with_transparent_corner(p()), "PNG"), None, transparent=True),
        "la.png": Case(encode(with_transparent_corner(p()).convert("LA"), "PNG"), None, transparent=True),
        "grey.png": Case(encode(p().convert("L"), "PNG"), None),
        "palette.png": Case(encode(p().convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), None),
        "palette_key.png": Case(encode(palette_trns, "PNG", transparency=0), None, transparent=True),
        "rgb_key.png": Case(encode(rgb_key, "PNG", transparency=(0, 255, 0)), None, transparent=True),
        "grey16_part_of_range.png": Case(encode(grey16(next(seeds), 7200, 8200), "PNG"), None),
        "grey16_key.png": Case(encode(grey_key, "PNG", transparency=0), None, transparent=True),
        "bilevel.png": Case(encode(p().convert("1"), "PNG"), None),
        "animated.png": Case(encode(animated[0], "PNG", save_all=True, append_images=animated[1:]), None),
        # the web's other formats, and phones'
        "lossy.webp": Case(encode(p(), "WEBP", quality=80), None),
        "lossless_alpha.webp": Case(encode(with_transparent_corner(p()), "WEBP", lossless=True), None,
                                    transparent=True),
        "animated.webp": Case(encode(p(), "WEBP", save_all=True, append_images=[p()]), None),
        "palette.gif": Case(encode(p(), "GIF"), None),
        "transparent.gif": Case(encode(gif_trns, "GIF", transparency=0), None, transparent=True),
        "animated.gif": Case(encode(p(), "GIF", save_all=True, append_images=[p(), p()]), None),
        "iphone.heic": Case(encode(p(), "HEIF", quality=80), None),
        "alpha.heic": Case(encode(with_transparent_corner(p()), "HEIF", quality=90), None, transparent=True),
        "photo.avif": Case(encode(p(), "AVIF", quality=70), None),
        "alpha.avif": Case(encode(with_transparent_corner(p()), "AVIF", quality=90), None, transparent=True),
        # TIFF, in the modes scanners and cameras write
        "lzw.tif": Case(tiff(p(), compression="tiff_lzw"), None),
        "alpha_deflate.tif": Case(tiff(with_transparent_corner(p()), compression="tiff_adobe_deflate"), None,
                                  transparent=True),
        "cmyk.tif": Case(tiff(p().convert("CMYK")), None),
        "jpeg_inside.tif": Case(tiff(p(), compression="jpeg"), None),
        "grey16.tif": Case(tiff(grey16(next(seeds), 0, 65535)), None),
        "float_part_of_range.tif": Case(tiff(Image.fromarray(
            np.asarray(p().convert("L"), dtype=np.float32) / 2550 + 0.1, "F")), None),
        "int32.tif": Case(tiff(Image.fromarray(np.asarray(p().convert("L"), dtype=np.int32) * 1000 - 50_000, "I")),
                          None),
        "pages.tif": Case(encode(p(), "TIFF", save_all=True, append_images=[p()]), None),
        # older and rarer formats Pillow decodes safely
        "rgb.bmp": Case(encode(p(), "BMP"), None),
        "palette.bmp": Case(encode(p().convert("P"), "BMP"), None),
        "photo.jp2": Case(encode(p(), "JPEG2000"), None),
        "grey.j2k": Case(encode(p().convert("L"), "JPEG2000"), None),
        "rgb.ppm": Case(encode(p(), "PPM"), None),
        "grey.pgm": Case(encode(p().convert("L"), "PPM"), None),
        "bilevel.pbm": Case(encode(p().convert("1"), "PPM"), None),
        "grey16.pgm": Case(encode(grey16(next(seeds), 0, 4095), "PPM"), None),
        "plain.ppm": Case(plain_ppm(p()), None),
        "layers.psd": Case(psd(p()), None),
        "icon.ico": Case(encode(with_transparent_corner(p((128, 128))), "ICO", sizes=[(128, 128)]), None,
                         transparent=True),
        "photo.qoi": Case(encode(p(), "QOI"), None),
        "photo.sgi": Case(encode(p(), "SGI"), None),
        "photo.pcx": Case(encode(p(), "PCX"), None),
        "rle.tga": Case(encode(with_transparent_corner(p()), "TGA", compression="tga_rle"), None, transparent=True),
        # not images, or not ones we read
        "notes.txt": Case(b"just some text, not a picture\n", "not_image"),
        "page.jpg": Case(b"<!DOCTYPE html><html><body>Not found</body></html>", "not_image"),
        "drawing.svg": Case(b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "not_image"),
        "paper.pdf": Case(b"%PDF-1.4\n%\xe2\xe3\n1 0 obj\n<<>>\nendobj\n", "not_image"),
        "vector.eps": Case(encode(p(), "EPS"), "not_image"),
        "texture.dds": Case(encode(p(), "DDS"), "not_image"),
        "cursor.xbm": Case(encode(p().convert("1"), "XBM"), "not_image"),
        "empty.jpg": Case(b"", "empty"),
        "cut_short.jpg": Case(encode(p(), "JPEG")[:2000], "truncated"),
        "cut_short.png": Case(encode(p(), "PNG")[:3000], "truncated"),
        "cut_short.tif": Case(tiff(p(), compression="jpeg")[:-200], "corrupt"),  # libtiff prints its own error
        # nothing to recognise
        "flat.png": Case(encode(Image.new("RGB", SIDE, (200, 30, 30)), "PNG"), "blank"),
        "flat_green.jpg": Case(encode(Image.new("RGB", SIDE, (30, 200, 30)), "JPEG"), "blank"),
        "flat16.png": Case(encode(Image.new("I;16", SIDE, 30000), "PNG"), "blank"),
        "flat_float.tif": Case(tiff(Image.new("F", SIDE, 0.25)), "blank"),
        # costly: refused from their structure, before decoding
        "pixel_bomb.png": Case(pixel_bomb(), "too_many_pixels"),
        "scans.jpg": Case(scan_bomb(), "too_costly"),
        "segments.jpg": Case(segment_flood(p()), "too_costly"),
        "exif_copies.jpg": Case(exif_copies(p()), "too_costly"),
        "profiles.png": Case(iccp_bomb(p()), "too_costly"),
        "chunks.png": Case(chunk_flood(p()), "too_costly"),
        "comments.gif": Case(gif_comment_flood(p()), "too_costly"),
        "profiles_inside.ico": Case(ico_around(iccp_bomb(p((128, 128)))), "too_costly"),
        "resources.psd": Case(psd_resource_flood(p()), "too_costly"),
        "line_drawing.png": Case(encode(line_drawing(), "PNG"), None),
        "big.qoi": Case(encode(p((1600, 1200)), "QOI"), "too_costly"),
        "big_plain.ppm": Case(plain_ppm(p((800, 700))), "too_costly"),  # three values a pixel
    }
    return files


def write_corpus(folder: Path, labels: tuple[str, ...] = ("a", "b")) -> dict[Path, Case]:
    """Write the corpus under folder/<label>/, alternating labels; return {path: case}."""
    written = {}
    for n, (name, case) in enumerate(sorted(corpus().items())):
        path = folder / labels[n % len(labels)] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(case.data)
        written[path] = case
    return written
