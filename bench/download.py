"""Benchmark: our download_all against fastai's download_images, same 300 URLs, 100 ms server latency each.

    python -m bench.download            # prints both wall times and the speed-up

The loopback image server (its own process) sleeps before every response, standing in for the round
trip to a real image host, so the wait dominates and concurrency decides the time. Both sides get their
defaults, ours Config.workers and fastai's n_workers=8, so the speed-up at defaults is at most the ratio
of the two; --workers shows how ours scales. fastai drops failures silently, so for it we count the files it wrote.
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import tempfile
import time
from pathlib import Path

from bench.common import machine
from tests.image_server import ImageServer
from training.config import Config
from training.data.download import download_all


def time_ours(urls: list[str], dest: Path, workers: int) -> tuple[float, int]:
    """Seconds for download_all over the URLs, and how many outcomes it accounted for."""
    started = time.perf_counter()
    outcomes = download_all([("bench", url) for url in urls], dest, Config(allow_private_urls=True, workers=workers))
    return time.perf_counter() - started, len(outcomes)


def time_fastai(urls: list[str], dest: Path) -> tuple[float, int]:
    """Seconds for fastai's download_images over the URLs, and how many files appeared."""
    from fastai.vision.utils import download_images
    started = time.perf_counter()
    download_images(dest, urls=urls)
    return time.perf_counter() - started, sum(1 for p in dest.iterdir() if p.is_file())


def serve(n: int, delay: float, ports, stop) -> None:
    """Run the image server in its own process, as a real image host would be, until told to stop."""
    with ImageServer(delay=delay) as server:
        for i in range(n):
            server.good_image("bench", i, "jpg")  # encode now, so neither side pays for it
        ports.put(server.port)
        stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.download", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--urls", type=int, default=300, help="distinct image URLs")
    parser.add_argument("--delay", type=float, default=0.1, help="server latency per response, seconds")
    parser.add_argument("--workers", type=int, default=Config().workers, help="our concurrent downloads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would be timed too
    import fastai.vision.utils  # noqa: F401  (import torch before the clock starts, not inside fastai's time)

    # A separate process: an in-process server would compete with both clients for the GIL.
    ports, stop = multiprocessing.Queue(), multiprocessing.Event()
    server = multiprocessing.Process(target=serve, args=(args.urls, args.delay, ports, stop), daemon=True)
    server.start()
    try:
        port = ports.get(timeout=60)
        urls = [f"http://127.0.0.1:{port}/good/bench/{i}.jpg" for i in range(args.urls)]
        with tempfile.TemporaryDirectory() as tmp:
            ours, n_ours = time_ours(urls, Path(tmp) / "ours", args.workers)
            theirs, n_theirs = time_fastai(urls, Path(tmp) / "fastai")
    finally:
        stop.set()
        server.join(timeout=10)
    print(f"{args.urls} URLs, {args.delay * 1000:.0f} ms latency each; {machine()}")
    print(f"ours   (download_all, {args.workers} workers):     {ours:6.2f} s, {n_ours} URLs accounted for")
    print(f"fastai (download_images, 8 workers):   {theirs:6.2f} s, {n_theirs} files written")
    print(f"speed-up (fastai / ours): {theirs / ours:.1f}x")


if __name__ == "__main__":
    main()
