"""Training throughput on a GPU: resnet18, mixed precision, the training stage's own data pipeline.

    python -m bench.train_gpu                # on a CUDA machine: ~900 generated images, 2 epochs
    python -m bench.train_gpu --cpu-smoke    # anywhere: tiny settings, only checks that the script runs

Generates a synthetic dataset (coloured shapes, JPEGs), builds the same DataLoaders and Learner as
`python -m training train` (GPU and `to_fp16()` when CUDA is there), fine-tunes from random weights
(no download needed) and prints the device, each epoch's training time and images/s.
"""
from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time
from pathlib import Path

import torch
from fastai.callback.core import Callback

from bench.common import machine
from tests.tiny_model import SHAPES, draw_shape
from training.config import Config
from training.train.stage import build_dataloaders, build_learner

SMOKE = {"per_label": 8, "side": 96, "size": 64, "epochs": 1, "batch_size": 8}


class EpochTimer(Callback):
    """Training-phase seconds and images of each epoch (validation excluded)."""

    order = 100  # after the other callbacks: time what the whole step costs

    def before_fit(self):
        self.epochs = getattr(self, "epochs", [])

    def before_train(self):
        self.seen, self.start = 0, time.perf_counter()

    def after_batch(self):
        if self.training:
            self.seen += len(self.yb[0])

    def after_train(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # kernels run asynchronously; count the time they really took
        self.epochs.append((self.seen, time.perf_counter() - self.start))


def make_dataset(root: Path, per_label: int, side: int) -> Path:
    """root/images/<shape>/<n>.jpg: per_label images of side x side pixels for each shape."""
    rng = random.Random(0)
    for label in SHAPES:
        folder = root / "images" / label
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_label):
            draw_shape(label, rng, side=side).save(folder / f"{n:05d}.jpg", quality=90)
    return root


def run(per_label: int, side: int, size: int, epochs: int, batch_size: int) -> list[tuple[int, float]]:
    """Fine-tune resnet18 on generated images; return (images, seconds) per training epoch."""
    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp), per_label, side)
        cfg = Config(name="bench", data=data, out=Path(tmp) / "model", arch="resnet18", pretrained=False,
                     epochs=epochs, size=size, batch_size=batch_size, lr=1e-3, seed=0)
        dls = build_dataloaders(cfg, data / "images")
        learn = build_learner(dls, cfg)
        timer = EpochTimer()
        with learn.no_bar(), learn.no_logging():  # the per-epoch lines below say it all
            learn.fine_tune(epochs, cfg.lr, cbs=[timer])
        print(f"{len(dls.train_ds)} training images, batch {dls.bs}, {dls.train.fake_l.num_workers} loader workers, "
              f"mixed precision {'on' if hasattr(learn, 'mixed_precision') else 'off'}")
        return timer.epochs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_gpu", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help=f"tiny settings that run anywhere: {SMOKE}")
    p.add_argument("--per-label", type=int, default=300, help="generated images per label (3 labels)")
    p.add_argument("--side", type=int, default=320, help="generated image side, in pixels")
    p.add_argument("--size", type=int, default=224, help="training input size")
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (after one frozen epoch)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    settings = SMOKE if args.cpu_smoke else {k: getattr(args, k) for k in SMOKE}
    cuda = torch.cuda.is_available()
    print(f"device: {torch.cuda.get_device_name(0) if cuda else 'CPU'}; {machine()}; torch {torch.__version__}, "
          f"CUDA {torch.version.cuda if cuda else '-'}; settings {settings}")
    if not cuda and not args.cpu_smoke:
        print("no CUDA device: this is the GPU benchmark; use --cpu-smoke to just check it runs")
        return 1
    epochs = run(**settings)
    for i, (images, seconds) in enumerate(epochs):
        phase = "frozen body" if i == 0 else "unfrozen"
        print(f"epoch {i} ({phase}): {seconds:6.2f} s, {images / seconds:8.1f} images/s")
    images, seconds = epochs[-1]
    print(f"steady state (last epoch): {images / seconds:.1f} images/s at {settings['size']}px, "
          f"{seconds:.2f} s for {images} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
