"""Hostile files: the worst CPU time and peak memory one file costs the data stage and POST /classify.

    python -m bench.hostile                # makes the corpus once (bench/out/hostile/, a few minutes), then measures
    python -m bench.hostile --only scans   # the files whose names contain "scans"

The corpus: the reviews' findings at full size (a 36 MP progressive JPEG with 100 and 1,000 repeated scans, a
PNG of 32x32 pixels and 9,366 colour profiles, a 40 MP 16-bit PNG of 92 KB, a 40 MP float TIFF, a GIF with a
4 MB comment of one-byte blocks, an icon around a PNG with 2,000 colour profiles, a PSD of 700,000 image
resources), the costliest files each format is still allowed (at the pixel cap, or at the limit
serving/imaging.py sets for its decoder), and a few structural floods. Every file fits the app's 10 MB upload
cap.

Each file goes through the data stage's cleaning (`training.data.clean.clean_images`) in a process of its own,
and through the live app's POST /classify. For each it prints the CPU seconds and the peak resident memory the
file added (VmHWM, reset just before), and what was decided. Targets: at most 2 s and 300 MB each.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import httpx
import numpy as np
from PIL import Image

from bench.common import OUT, machine, model_folder
from tests.image_corpus import (chunk_flood, encode, exif_copies, gif_comment_flood, iccp_bomb, ico_around, photo,
                                plain_ppm, png_chunk, psd_resource_flood, segment_flood, with_transparent_corner)
from tests.live_app import LiveApp

TARGET_S, TARGET_MB = 2.0, 300
CORPUS = OUT / "hostile"
MAX_UPLOAD = 10_000_000


def smooth(size: tuple[int, int], levels: int = 256) -> Image.Image:
    """A smooth picture in bands of `levels` shades: tiny once compressed, so that a file under 10 MB can hold
    the most pixels."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * levels // w, y * levels // h, (x + y) * levels // (w + h)], -1) * (256 // levels)
    return Image.fromarray(rgb.astype(np.uint8))


def repeated_scans(side: int, repeats: int) -> bytes:
    """The review's finding: a progressive JPEG with its last scan repeated."""
    data = encode(smooth((side, side)), "JPEG", progressive=True, quality=50)
    last, end = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    return data[:end] + data[last:end] * repeats + data[end:]


def idat_flood(img: Image.Image, chunks: int = 100_001) -> bytes:
    """A PNG whose image data is followed by many empty IDAT chunks, each a loop in Pillow's Python."""
    png = encode(img, "PNG")
    end = png.rfind(b"IEND") - 4
    return png[:end] + png_chunk(b"IDAT", b"") * chunks + png[end:]


def recipes() -> dict[str, Callable[[], bytes]]:
    """name → how to make the file: each a way to make one decode costly."""
    import serving.imaging  # noqa: F401  (registers pillow-heif, which also encodes HEIC)

    def forty() -> Image.Image:
        return smooth((7300, 5470))

    def grey16() -> Image.Image:
        return Image.fromarray(np.asarray(forty().convert("L"), dtype=np.uint16) * 200 + 1000)

    def floats() -> Image.Image:
        return Image.fromarray(np.asarray(forty().convert("L"), dtype=np.float32) / 2550 + 0.1, "F")

    return {
        "scans_100_36mp.jpg": lambda: repeated_scans(6000, 100),
        "scans_1000_36mp.jpg": lambda: repeated_scans(6000, 1000),
        "profiles_9366.png": lambda: iccp_bomb(photo((32, 32), 1), profiles=9366),
        "grey16_40mp.png": lambda: encode(grey16(), "PNG", compress_level=9),
        "float_40mp.tif": lambda: encode(floats(), "TIFF", compression="tiff_adobe_deflate"),
        "rgba_40mp.png": lambda: encode(with_transparent_corner(forty()), "PNG", compress_level=9),
        "palette_40mp.gif": lambda: encode(forty(), "GIF"),
        "lzw_40mp.tif": lambda: encode(smooth((7300, 5470), 8), "TIFF", compression="tiff_lzw"),
        "lzma_13mp.tif": lambda: encode(smooth((4200, 3100), 16), "TIFF", compression="lzma"),
        "jpeg2000_40mp.jp2": lambda: encode(forty(), "JPEG2000", irreversible=True, quality_mode="rates",
                                            quality_layers=[200]),
        "webp_18mp.webp": lambda: encode(smooth((4900, 3600)), "WEBP", quality=60),
        "webp_40mp.webp": lambda: encode(forty(), "WEBP", quality=60),
        "avif_28mp.avif": lambda: encode(smooth((6100, 4600)), "AVIF", quality=50, speed=10),
        "avif_444_alpha_14mp.avif": lambda: encode(with_transparent_corner(smooth((4400, 3300))), "AVIF",
                                                   quality=50, speed=10, subsampling="4:4:4"),
        "heic_28mp.heic": lambda: encode(smooth((6100, 4600)), "HEIF", quality=50),
        "heic_37mp.heic": lambda: encode(smooth((7000, 5200)), "HEIF", quality=50),
        "heic_12mp.heic": lambda: encode(photo((4032, 3024), 2), "HEIF", quality=40),
        "heic_12mp_9mb.heic": lambda: encode(photo((4032, 3024), 2), "HEIF", quality=80),
        "qoi_0.66mp.qoi": lambda: encode(photo((940, 700), 3), "QOI"),
        "plain_0.66mp.pgm": lambda: plain_ppm(photo((940, 700), 4).convert("L")),
        "segments.jpg": lambda: segment_flood(photo((640, 480), 5)),
        "exif_5400_tags.jpg": lambda: exif_copies(photo((640, 480), 11), tags=5400, size=65_527),
        "chunks.png": lambda: chunk_flood(photo((640, 480), 6)),
        "idat_flood.png": lambda: idat_flood(photo((640, 480), 7)),
        "gif_comment_4mb.gif": lambda: gif_comment_flood(photo((640, 480), 8), 2_000_000),
        "ico_2000_profiles.ico": lambda: ico_around(iccp_bomb(photo((128, 128), 9), profiles=2000)),
        "psd_resources_8mb.psd": lambda: psd_resource_flood(photo((640, 480), 10), 700_000),
    }


def corpus(only: str | None) -> list[Path]:
    """The corpus files, each made on the first run that needs it and kept in bench/out/hostile/."""
    CORPUS.mkdir(parents=True, exist_ok=True)
    files = []
    for name, make in recipes().items():
        if only is None or only in name:
            path = CORPUS / name
            if not path.exists():
                print(f"making {name} (once)...", flush=True)
                path.write_bytes(make())
            files.append(path)
    too_big = [p.name for p in files if p.stat().st_size > MAX_UPLOAD]
    if too_big:
        raise SystemExit(f"over the 10 MB upload cap, so /classify would refuse them unread: {too_big}")
    return files


DATA_STAGE = """
import json, resource, sys, tempfile
from pathlib import Path
from training.config import Config
from training.data.clean import Source, clean_images
def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
path = Path(sys.argv[1])
with tempfile.TemporaryDirectory() as tmp:
    rss, start = status("VmRSS"), cpu()
    open("/proc/self/clear_refs", "w").write("5")  # the peak, from now
    (row,) = clean_images([Source("a", path.name, path)], Path(tmp), Config())
    print(json.dumps({"cpu": cpu() - start, "mb": (status("VmHWM") - rss) / 1e6, "said": row.reason or row.status}))
"""


def data_stage(path: Path) -> dict:
    """CPU seconds, peak MB added and the manifest's verdict, cleaning `path` in a process of its own."""
    done = subprocess.run([sys.executable, "-c", DATA_STAGE, str(path)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_mb(pid: int, key: str) -> float:
    return next(int(line.split()[1]) * 1024 for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith(key)) / 1e6


def classify(app: LiveApp, client: httpx.Client, path: Path) -> dict:
    """CPU seconds and peak MB the app spent on one POST /classify of `path`, and its answer."""
    pid = app.proc.pid
    time.sleep(0.3)  # let the previous request's work settle
    rss, start = process_mb(pid, "VmRSS"), process_cpu(pid)
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    reply = client.post(app.url + "/classify", files={"file": (path.name, path.read_bytes())})
    said = "classified" if reply.status_code == 200 else reply.json().get("reason")
    return {"cpu": process_cpu(pid) - start, "mb": process_mb(pid, "VmHWM") - rss, "said": said}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="measure only the files whose names contain this")
    args = parser.parse_args(argv)
    files = corpus(args.only)
    folder = model_folder()
    rows = {path.name: {"MB": path.stat().st_size / 1e6, "data": data_stage(path)} for path in files}
    with tempfile.TemporaryDirectory() as uploads, \
            LiveApp({"MODEL_DIR": str(folder), "GRADIO_TEMP_DIR": uploads}) as app, \
            httpx.Client(timeout=120) as client:
        classify(app, client, files[0])  # warm up: the first request pays for imports
        for path in files:
            rows[path.name]["app"] = classify(app, client, path)
    print(f"\n{machine()}")
    print(f"{'file':24} {'MB':>6} | {'data stage: s':>13} {'+MB':>6} {'said':>16} | {'/classify: s':>12} {'+MB':>6} "
          f"{'said':>16}")
    for name, r in rows.items():
        d, a = r["data"], r["app"]
        print(f"{name:24} {r['MB']:6.2f} | {d['cpu']:13.2f} {d['mb']:6.0f} {d['said']:>16} | {a['cpu']:12.2f} "
              f"{a['mb']:6.0f} {a['said']:>16}")
    worst = {side: (max(r[side]["cpu"] for r in rows.values()), max(r[side]["mb"] for r in rows.values()))
             for side in ("data", "app")}
    ok = all(s <= TARGET_S and mb <= TARGET_MB for s, mb in worst.values())
    for side, label in (("data", "data stage"), ("app", "/classify")):
        s, mb = worst[side]
        print(f"worst, {label:10}: {s:.2f} s of CPU, +{mb:.0f} MB peak (targets ≤ {TARGET_S:g} s, ≤ {TARGET_MB} MB)")
    print("targets met" if ok else "targets MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
