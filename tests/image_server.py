"""A loopback image server for tests and benchmarks: real HTTP, deterministic images, every way a download fails.

    with ImageServer() as server:            # 127.0.0.1, a free port, a background thread
        server.url("/good/teddy/0.jpg")      # -> "http://127.0.0.1:<port>/good/teddy/0.jpg"
        server.hits["/flaky/429.jpg"]        # requests seen per path; server.reset() clears them

`ImageServer(delay=0.1)` sleeps that long before every response (the download benchmark uses it).
Every body is built with Pillow (or zlib) and cached, so a path always serves the same bytes.

Routes (GET only; anything else is a 404):

/good/<label>/<i>.<ext>     200, a 200x150 RGB picture of smooth blobs seeded by crc32("<label>/<i>"),
                            tinted with one hue per label: the same (label, i) is the same picture in
                            every format; different pairs differ by 14+ perceptual-hash bits, ~32 typical.
                            ext is jpg, png, webp or gif, with the matching Content-Type. <label> is
                            URL-decoded, so any string works (see `good_urls`).
/bad/html.jpg               200, an HTML page, Content-Type text/html
/bad/html-as-image.jpg      200, the same HTML page, Content-Type image/jpeg
/bad/empty.jpg              200, zero bytes, image/jpeg
/bad/short.jpg              200, the 3 bytes a JPEG starts with and nothing more, image/jpeg
/bad/gzip.jpg               200, Content-Encoding: gzip over bytes that are no gzip stream
/img/binary.jpg             200, a JPEG served as "application/octet-stream; name=photo.jpg"
/bad/truncated.jpg          200, a real JPEG cut to half its length, image/jpeg (downloads fine; cleaning rejects it)
/bad/404.jpg                404
/svg/image.svg              200, an SVG, image/svg+xml
/flaky/500-then-200.jpg     the first request is a 500, later ones a good JPEG
/flaky/429.jpg              the first request is a 429 with Retry-After: 1, later ones a good JPEG
/flaky/429-long.jpg         always 429 with Retry-After: 3600
/flaky/500.jpg              always 500, without Retry-After
/slow/pieces.jpg            200, /dup/shared.jpg chunked in 3-byte pieces, the first 8 of them 20 ms apart
                            (a client must put a file's signature together from several reads)
/slow/drip.jpg              200 and headers at once, then a JPEG's first 16 bytes, then its next bytes one every
                            0.5 s, forever: only a whole-file deadline stops it (read timeouts never fire)
/big/huge.jpg               3 MB that start with a JPEG signature, with Content-Length
/big/huge-chunked.jpg       the same 3 MB, chunked, so no Content-Length
/redirect/loop              302 to itself, forever
/redirect/private           302 to http://10.0.0.1/x.jpg (a client must refuse it; nothing there answers)
/redirect/ok                302 to /good/redirected/0.jpg
/img/bomb.png               an 8000x8000 8-bit greyscale PNG of zeros (64 MP, about 64 KB on the wire)
/img/tiny.png               1x1 RGB
/img/cmyk.jpg               200x150 CMYK JPEG
/img/16bit.png              200x150 16-bit greyscale (Pillow mode I;16), left-to-right gradient 0..65535
/img/rgba.png               200x150 RGBA: fully transparent, with an opaque red 50x50 square in the middle
/img/animated.gif           200x150, 3 frames: mostly blue, then mostly red, then mostly green
/img/exif-rotated.jpg       pixels stored 200 wide x 100 high with EXIF Orientation=6 (rotate 90° clockwise
                            to view). Upright it is 100 wide x 200 high: the TOP fifth (40 rows) is solid
                            red (255, 0, 0), the rest green-ish (40, 180, 60). Ignoring EXIF shows the red
                            band down the LEFT side instead.
/dup/a.jpg, /dup/b.jpg      identical bytes
/dup/original.jpg           a 400x300 picture; /dup/resized.jpg is it resized to 240x180 and re-encoded
/dup/shared.jpg             an ordinary distinct picture (tests list the same URL under two labels)
"""
from __future__ import annotations

import colorsys
import io
import re
import struct
import threading
import time
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

import numpy as np
from PIL import Image, ImageDraw

SIZE = (200, 150)
DRIP_INTERVAL = 0.5
BIG_BYTES = 3_000_000
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif"}
_PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF"}
_GOOD = re.compile(r"^/good/(?P<label>[^/]+)/(?P<i>\d+)\.(?P<ext>jpg|png|webp|gif)$")
_HTML = b"<!DOCTYPE html><html><head><title>Not an image</title></head><body>A web page.</body></html>"
_SVG = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="200" height="150">'
        b'<rect width="200" height="150" fill="red"/></svg>')


def picture(label: str, i: int, size: tuple[int, int] = SIZE) -> Image.Image:
    """A deterministic RGB picture for (label, i): smooth light and dark blobs in the label's colour."""
    # The blobs are a random sign pattern over the 8x8 lowest cosine frequencies, exactly what a
    # perceptual hash reads, so different (label, i) pairs differ by about 32 of its 64 bits (at least
    # 14 over 180,000 pairs measured). Seeds come from crc32, not hash(), which is salted per process.
    rng = np.random.default_rng(zlib.crc32(f"{label}/{i}".encode()))
    coef = rng.choice([-1.0, 1.0], size=(8, 8)) * rng.uniform(0.6, 1.0, size=(8, 8))
    coef[0, 0] = 0.0
    w, h = size
    rows = np.cos(np.pi * np.outer(np.arange(8), np.arange(h) + 0.5) / h)
    cols = np.cos(np.pi * np.outer(np.arange(8), np.arange(w) + 0.5) / w)
    lum = rows.T @ coef @ cols
    lum = (lum - lum.min()) / (lum.max() - lum.min())
    # One hue per label, so a small model trained on these pictures has something to learn.
    tint = np.array(colorsys.hsv_to_rgb((zlib.crc32(label.encode()) % 360) / 360, 0.7, 1.0))
    return Image.fromarray((30 + 225 * lum[..., None] * tint).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    """The image's bytes in a Pillow format."""
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def good_urls(server: "ImageServer", label: str, n: int, exts: tuple[str, ...] = ("jpg",)) -> list[str]:
    """n distinct good-image URLs for a label, cycling through the given extensions."""
    return [server.url(f"/good/{quote(label, safe='')}/{i}.{exts[i % len(exts)]}") for i in range(n)]


class ImageServer:
    """The routes in the module docstring, on 127.0.0.1 in a background thread; use as a context manager."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.hits: Counter[str] = Counter()
        self.request_headers: dict[str, dict[str, str]] = {}  # the last request's headers, per path
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._good: dict[tuple[str, int, str], bytes] = {}
        self._static = _static_files()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "ImageServer":
        """Bind a free loopback port and serve in a daemon thread."""
        self._httpd = _Server(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="image-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End drips, stop accepting and close the socket."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> "ImageServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        """The absolute URL of a path on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def reset(self) -> None:
        """Forget request counts, so flaky routes fail first again."""
        with self._lock:
            self.hits.clear()

    def good_image(self, label: str, i: int, ext: str) -> bytes:
        """The exact bytes /good/<label>/<i>.<ext> serves (built once, then cached)."""
        key = (label, i, ext)
        with self._lock:
            cached = self._good.get(key)
        if cached is None:
            cached = encode(picture(label, i), _PIL_FORMATS[ext])
            with self._lock:
                self._good[key] = cached
        return cached

    def static(self, path: str) -> bytes:
        """The exact bytes a fixed route serves when it answers 200 (e.g. "/dup/a.jpg")."""
        return self._static[path][1]

    def _count(self, path: str, headers: dict[str, str]) -> int:
        with self._lock:
            self.hits[path] += 1
            self.request_headers[path] = headers
            return self.hits[path]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Don't wait for handler threads on close: an idle keep-alive connection would hold stop() up.
    block_on_close = False
    # The default backlog of 5 makes Linux drop SYNs under a burst of new connections, and the
    # client's 1 s SYN retransmit would then dominate any benchmark.
    request_queue_size = 256

    def handle_error(self, request, client_address) -> None:
        # Clients hanging up mid-body (a refused 3 MB file, a cancelled drip) is the point of several routes.
        pass


def _handler_for(server: ImageServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        owner = server
    return Handler


class _Handler(BaseHTTPRequestHandler):
    owner: ImageServer
    protocol_version = "HTTP/1.1"  # keep-alive, as real image hosts do
    timeout = 30  # an idle keep-alive connection frees its thread eventually
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's delayed
    # ACK (40 ms on Linux), a stall no real image host has and every benchmark would measure.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args) -> None:
        pass

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        count = self.owner._count(path, dict(self.headers))
        if self.owner.delay:
            time.sleep(self.owner.delay)
        try:
            self._route(path, count)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _route(self, path: str, count: int) -> None:
        good = _GOOD.match(path)
        if good:
            body = self.owner.good_image(unquote(good["label"]), int(good["i"]), good["ext"])
            return self._send(200, body, CONTENT_TYPES[good["ext"]])
        if path == "/flaky/500-then-200.jpg" and count == 1:
            return self._send(500, b"try again", "text/plain")
        if path == "/flaky/429.jpg" and count == 1:
            return self._send(429, b"slow down", "text/plain", {"Retry-After": "1"})
        if path == "/flaky/500.jpg":
            return self._send(500, b"down", "text/plain")
        if path == "/bad/gzip.jpg":
            return self._send(200, b"\xff\xd8\xff\xe0 not gzip at all", "image/jpeg", {"Content-Encoding": "gzip"})
        if path == "/flaky/429-long.jpg":
            return self._send(429, b"slow down", "text/plain", {"Retry-After": "3600"})
        if path in _REDIRECTS:
            return self._send(302, b"", "text/plain", {"Location": _REDIRECTS[path]})
        if path == "/slow/drip.jpg":
            return self._drip()
        if path == "/big/huge-chunked.jpg":
            return self._send_chunked(self.owner.static("/big/huge.jpg"), "image/jpeg")
        if path == "/slow/pieces.jpg":
            return self._send_chunked(self.owner.static("/dup/shared.jpg"), "image/jpeg", step=3, pause=0.02)
        if path in self.owner._static:
            status, body, ctype = self.owner._static[path]
            return self._send(status, body, ctype)
        self._send(404, b"not found", "text/plain")

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_chunked(self, body: bytes, ctype: str, step: int = 64 * 1024, pause: float = 0.0) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for start in range(0, len(body), step):
            piece = body[start:start + step]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            if pause and start < 8 * step:  # the first pieces one by one, so a client reads them one by one
                self.wfile.flush()
                time.sleep(pause)
        self.wfile.write(b"0\r\n\r\n")

    def _drip(self) -> None:
        self.close_connection = True  # no length and no chunking: the body ends only when we hang up
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        body = self.owner.static("/dup/shared.jpg")
        self.wfile.write(body[:16])  # the signature at once, so a client starts a file and then waits
        self.wfile.flush()
        i = 16
        while not self.owner._stopping.wait(DRIP_INTERVAL):
            self.wfile.write(body[i % len(body):i % len(body) + 1])
            self.wfile.flush()
            i += 1


_REDIRECTS = {
    "/redirect/loop": "/redirect/loop",
    "/redirect/private": "http://10.0.0.1/x.jpg",
    "/redirect/ok": "/good/redirected/0.jpg",
}


def _static_files() -> dict[str, tuple[int, bytes, str]]:
    """Every fixed route's (status, body, Content-Type), built once per server."""
    jpeg = encode(picture("static", 0), "JPEG")
    original = picture("dup", 1, (400, 300))
    dup = encode(picture("dup", 2), "JPEG")
    files = {
        "/bad/html.jpg": (200, _HTML, "text/html; charset=utf-8"),
        "/bad/html-as-image.jpg": (200, _HTML, "image/jpeg"),
        "/bad/empty.jpg": (200, b"", "image/jpeg"),
        "/bad/short.jpg": (200, b"\xff\xd8\xff", "image/jpeg"),
        "/img/binary.jpg": (200, jpeg, "application/octet-stream; name=photo.jpg"),
        "/bad/truncated.jpg": (200, jpeg[: len(jpeg) // 2], "image/jpeg"),
        "/svg/image.svg": (200, _SVG, "image/svg+xml"),
        "/flaky/500-then-200.jpg": (200, encode(picture("flaky", 500), "JPEG"), "image/jpeg"),
        "/flaky/429.jpg": (200, encode(picture("flaky", 429), "JPEG"), "image/jpeg"),
        "/big/huge.jpg": (200, jpeg[:4] + bytes(BIG_BYTES - 4), "image/jpeg"),
        "/img/bomb.png": (200, _zero_png(8000, 8000), "image/png"),
        "/img/tiny.png": (200, encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"), "image/png"),
        "/img/cmyk.jpg": (200, encode(picture("img", 0).convert("CMYK"), "JPEG"), "image/jpeg"),
        "/img/16bit.png": (200, encode(_gradient16(), "PNG"), "image/png"),
        "/img/rgba.png": (200, encode(_rgba_square(), "PNG"), "image/png"),
        "/img/animated.gif": (200, _animated_gif(), "image/gif"),
        "/img/exif-rotated.jpg": (200, _exif_rotated(), "image/jpeg"),
        "/dup/a.jpg": (200, dup, "image/jpeg"),
        "/dup/b.jpg": (200, dup, "image/jpeg"),
        "/dup/original.jpg": (200, encode(original, "JPEG", quality=95), "image/jpeg"),
        "/dup/resized.jpg": (200, encode(original.resize((240, 180), Image.Resampling.LANCZOS), "JPEG", quality=80),
                             "image/jpeg"),
        "/dup/shared.jpg": (200, encode(picture("dup", 3), "JPEG"), "image/jpeg"),
    }
    return files


def _zero_png(width: int, height: int) -> bytes:
    """An all-black 8-bit greyscale PNG, compressed row by row so the pixels never exist in memory."""
    packer = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the row's pixels
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _gradient16() -> Image.Image:
    row = np.rint(np.linspace(0, 65535, SIZE[0])).astype(np.uint16)
    return Image.fromarray(np.repeat(row[None, :], SIZE[1], axis=0))  # uint16 -> mode I;16


def _rgba_square() -> Image.Image:
    img = Image.new("RGBA", SIZE, (0, 0, 0, 0))
    cx, cy = SIZE[0] // 2, SIZE[1] // 2
    ImageDraw.Draw(img).rectangle((cx - 25, cy - 25, cx + 24, cy + 24), fill=(255, 0, 0, 255))
    return img


def _animated_gif() -> bytes:
    frames = []
    for colour, accent in (((20, 40, 230), (230, 230, 40)), ((230, 30, 30), (30, 230, 230)), ((30, 200, 60), (200, 30, 200))):
        frame = Image.new("RGB", SIZE, colour)
        ImageDraw.Draw(frame).ellipse((10, 10, 40, 40), fill=accent)  # "solid-ish": one small spot each
        frames.append(frame)
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _exif_rotated() -> bytes:
    # Orientation 6 means "rotate 90° clockwise to view", which turns the stored LEFT edge into the TOP.
    stored = Image.new("RGB", (200, 100), (40, 180, 60))
    ImageDraw.Draw(stored).rectangle((0, 0, 39, 99), fill=(255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())
