"""Would batching concurrent requests make serving faster? The forward pass per image, alone and in batches.

    python -m bench.batching [--runs 30] [--arch resnet18]

Batching several visitors' images into one onnxruntime run (Gradio's `batch=True` on the page, micro-batching for
/classify) can only save what a batch saves in the forward pass: decoding and preprocessing stay per image. So
this times the forward pass alone, per image, for batches of 1, 2, 4 and 8 preprocessed inputs, with model.onnx
and model.int8.onnx loaded as the app loads them, in the same run. Batching is worth building only if a batch of
4 or 8 costs clearly less per image than a batch of 1 (here: at least 10% less); the verdict is printed.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np

from bench.common import machine, model_folder, photo_jpeg
from bench.inference import median_ms

SIZES = (1, 2, 4, 8)
WORTH_IT = 0.9  # a batch must cost at most this share of a single image's forward pass, per image


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
            print(f"{'':8} best batch costs {best:.2f}x a single image's forward pass per image: "
                  + ("worth batching" if best <= WORTH_IT else "not worth batching"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
