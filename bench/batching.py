"""Would batching concurrent requests make serving faster? The forward pass per image, alone and in batches.

    python -m bench.batching [--runs 30] [--arch resnet18]

Batching several visitors' images into one onnxruntime run (Gradio's `batch=True` on the page, micro-batching for
/classify) can only save what a batch saves in the forward pass: decoding and preprocessing stay per image. So
this times, for model.onnx and model.int8.onnx loaded as the app loads them, in the same run:
  1. the forward pass alone, per image, for batches of 1, 2, 4 and 8 preprocessed inputs: what batching could save;
  2. whole predictions (decode, preprocess, forward) from 4 threads at once, as the app's 4 slots run them: each
     thread running its own forward pass, against a batcher that runs every forward pass waiting at that moment
     as one batch (the micro-batching /classify and Gradio's batch=True would do).
Batching is worth building only if (2) is at least 10% faster; the verdict is printed.
"""
from __future__ import annotations

import argparse
import logging
import queue
import statistics
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.common import machine, model_folder, photo_jpeg
from bench.inference import median_ms

SIZES = (1, 2, 4, 8)
WORTH_IT = 1.1  # batched predictions must come at least this much faster to be worth building
THREADS = 4  # the app's APP_CONCURRENCY


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.batching", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--runs", type=int, default=30, help="timed runs per measurement")
    p.add_argument("--arch", default="resnet18", help="resnet18/34/50")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from serving.model import Classifier

    print(machine())
    folder = model_folder(args.arch)
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "photo.jpg"
        photo.write_bytes(photo_jpeg(500, 375))
        header = " ".join(f"{'batch ' + str(n):>9}" for n in SIZES)
        print(f"{'model':8} {header}   (forward ms per image, median)")
        for precision in ("float32", "int8"):
            clf = Classifier.from_folder(folder, cache_dir=Path(tmp) / "ort", precision=precision)
            x = np.stack([clf.preprocess(photo)] * max(SIZES))
            ms = median_ms({n: (lambda n=n: clf.session.run(None, {"input": x[:n]})) for n in SIZES}, args.runs)
            per_image = {n: ms[n] / n for n in SIZES}
            print(f"{precision:8} " + " ".join(f"{per_image[n]:9.2f}" for n in SIZES))
            best = min(per_image[n] for n in SIZES[1:]) / per_image[1]
            print(f"{'':8} the best batch's forward pass costs {best:.2f}x a single image's, per image")
            whole = {"alone": lambda: clf.run(clf.preprocess(photo)[None])}
            batcher = Batcher(clf)
            whole["batched"] = lambda: batcher.run(clf.preprocess(photo)[None])
            rates = {name: [] for name in whole}
            for _ in range(3):  # alternated, so a burst of load from elsewhere lands on both
                for name, fn in whole.items():
                    rates[name].append(predictions_per_s(fn, args.runs * 10))
            alone, batched = (statistics.median(rates[name]) for name in ("alone", "batched"))
            print(f"{'':8} {THREADS} threads, whole predictions: {alone:.1f}/s each alone, {batched:.1f}/s batched: "
                  f"{batched / alone:.2f}x, " + ("worth batching" if batched / alone >= WORTH_IT else
                                                 "not worth batching"))
    return 0


class Batcher:
    """Forward passes asked for while one runs are run together next, as one batch (at most 8)."""

    def __init__(self, clf, max_batch: int = max(SIZES)):
        self.clf, self.max_batch, self.waiting = clf, max_batch, queue.Queue()
        threading.Thread(target=self._serve, daemon=True).start()

    def run(self, x):
        done = Future()
        self.waiting.put((x, done))
        return done.result()

    def _serve(self):
        while True:
            batch = [self.waiting.get()]
            while len(batch) < self.max_batch and not self.waiting.empty():
                batch.append(self.waiting.get_nowait())
            probs, features = self.clf.run(np.concatenate([x for x, _ in batch]))
            for i, (_, done) in enumerate(batch):
                done.set_result((probs[i:i + 1], features[i:i + 1]))


def predictions_per_s(fn, total: int) -> float:
    """`total` calls of fn shared by THREADS threads, per second."""
    def work(n: int) -> None:
        for _ in range(n):
            fn()

    fn()  # warm-up
    started = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(work, [total // THREADS] * THREADS))
    return total // THREADS * THREADS / (time.perf_counter() - started)


if __name__ == "__main__":
    raise SystemExit(main())
