"""Open any image the way training saw it: upright, RGB, first frame, transparency blended onto white.

The clean stage (`python -m training data`) writes every training image through `open_upright_rgb`,
and the app passes every upload through it, so training and serving prepare images the same way.
Only Pillow and numpy: the app imports this without torch or fastai.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Well below Pillow's own 89 MP bomb limit: a 12 MP phone photo (4032x3024) passes, a decompression
# bomb is refused from its header before a single pixel is decoded.
MAX_PIXELS = 40_000_000
BACKGROUND = (255, 255, 255)
# Raster formats only. Pillow can also open EPS (through Ghostscript) and others we never want to
# parse from an untrusted upload; SVG, PDF and HTML are not images Pillow decodes at all.
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")  # JPEG covers MPO (multi-picture) files too

ImageSource = Union[str, os.PathLike, bytes, BinaryIO, Image.Image]


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


def open_upright_rgb(
    source: ImageSource,
    *,
    max_pixels: int = MAX_PIXELS,
    min_side: int = 1,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode `source` fully and return it as an upright RGB image, or raise ImageRejected."""
    img = source if isinstance(source, Image.Image) else _open_checked(source, max_pixels, draft_size)
    if img.width * img.height > max_pixels:
        raise ImageRejected("too_many_pixels", f"image is {img.width}x{img.height}, over the {max_pixels:,}-pixel cap")
    img = ImageOps.exif_transpose(img) or img
    img = _to_rgb(img)
    if min(img.size) < min_side:
        raise ImageRejected("too_small", f"image is {img.width}x{img.height}, smaller than {min_side}px on a side")
    return img


def resize_longest(img: Image.Image, max_side: int) -> Image.Image:
    """Shrink so the longest side is at most `max_side`; never enlarge."""
    if max(img.size) <= max_side:
        return img
    return ImageOps.contain(img, (max_side, max_side), Image.Resampling.LANCZOS)


def _open_checked(source: ImageSource, max_pixels: int, draft_size: tuple[int, int] | None) -> Image.Image:
    data = _read_bytes(source)
    if not data:
        raise ImageRejected("empty", "the file is empty")
    kind = sniff_non_image(data[:1024])
    if kind:
        raise ImageRejected("not_image", f"this is {kind}, not a raster image")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it; treat the warning as the refusal it is.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            if img.width * img.height > max_pixels:
                raise ImageRejected(
                    "too_many_pixels", f"image is {img.width}x{img.height}, over the {max_pixels:,}-pixel cap"
                )
            if draft_size and img.format == "JPEG":
                # Decode a large JPEG at 1/2, 1/4 or 1/8 scale straight from the DCT: much faster, and
                # still at least draft_size, so the later resize sees enough pixels.
                img.draft("RGB", draft_size)
            img.seek(0)  # first frame of an animation
            # The bytes are all in memory: hand them to the decoder at once rather than in Pillow's 64 KB
            # reads, each of which makes libjpeg suspend and resume (same pixels, sooner).
            img.decodermaxblock = max(len(data), img.decodermaxblock)
            img.load()
    except ImageRejected:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageRejected("too_many_pixels", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected("not_image", "not an image format we read (JPEG, PNG, GIF, WebP, BMP, TIFF)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = "truncated" if "truncated" in str(exc).lower() or isinstance(exc, EOFError) else "corrupt"
        raise ImageRejected(reason, f"the image data is {'cut short' if reason == 'truncated' else 'corrupt'}: {exc}") from exc
    return img


def _read_bytes(source: ImageSource) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, (str, os.PathLike)):
        return Path(source).read_bytes()
    return source.read()


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale: scale 0..65535 down to 0..255. Pillow's own convert("L") clips instead,
        # which turns most of the picture white.
        grey = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, BACKGROUND)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return img if img.mode == "RGB" else img.convert("RGB")
