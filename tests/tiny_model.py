"""A tiny model, trained once per test session and shared by the training, export and serving tests.

Three labels anyone can tell apart (red circles, green squares, blue triangles at random places and sizes
on random grey backgrounds), 20 JPEGs of 96x96 each, resnet18 from random weights at 64px on the CPU for
five epochs: about 15 s on 2 cores, export included. tests/conftest.py imports the `tiny_model` fixture,
so any test can ask for it by name.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from training.config import Config

SHAPES = {"circle": (220, 30, 30), "square": (30, 190, 30), "triangle": (30, 60, 220)}
PER_LABEL = 20
SIDE = 96
SUMMARY = {"source": "tests.tiny_model", "note": "synthetic shapes", "kept": 3 * PER_LABEL}


@dataclass(frozen=True)
class TinyModel:
    cfg: Config
    data: Path  # DATA folder: images/<label>/*.jpg and summary.json
    folder: Path  # the model folder train() wrote


def make_images(data: Path, per_label: int = PER_LABEL, labels=tuple(SHAPES), seed: int = 0) -> Path:
    """Write data/images/<label>/<n>.jpg for each label (and data/summary.json); return data."""
    rng = random.Random(seed)
    for label in labels:
        folder = data / "images" / label
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_label):
            draw_shape(label, rng).save(folder / f"{label}{n:03d}.jpg", quality=90)
    (data / "summary.json").write_text(json.dumps(SUMMARY))
    return data


def draw_shape(label: str, rng: random.Random, side: int = SIDE) -> Image.Image:
    """One image of `label`'s shape in its colour, somewhere on a random grey background."""
    grey = rng.randint(90, 200)
    img = Image.new("RGB", (side, side), (grey, grey + rng.randint(-20, 20), grey))
    r = rng.randint(side // 6, side // 3)
    cx, cy = rng.randint(r, side - r), rng.randint(r, side - r)
    colour, draw = SHAPES.get(label, (200, 200, 0)), ImageDraw.Draw(img)
    if label == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif label == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    return img


def draw_unrelated(index: int, side: int = SIDE) -> Image.Image:
    """An image of a family that is none of the shapes: a photo-like picture (every other one), noise, stripes,
    a checkerboard or a gradient."""
    from tests.image_corpus import photo

    rng = random.Random(index)
    family = index % 8
    if family % 2 == 0:
        return photo((side, side), index)
    if family == 1:
        return Image.effect_noise((side, side), rng.randint(40, 90)).convert("RGB")
    if family == 7:
        return Image.linear_gradient("L").resize((side, side)).rotate(rng.randint(0, 359)).convert("RGB")
    img = Image.new("RGB", (side, side), tuple(rng.randint(0, 255) for _ in range(3)))
    draw, step = ImageDraw.Draw(img), rng.randint(4, 12)
    ink = tuple(rng.randint(0, 255) for _ in range(3))
    for at in range(0, side, 2 * step):
        if family == 3:
            draw.rectangle((at, 0, at + step - 1, side), fill=ink)
        else:
            for y in range((at // step) % 2 * step, side, 2 * step):
                draw.rectangle((at, y, at + step - 1, y + step - 1), fill=ink)
    return img


def tiny_config(data: Path, out: Path, **changes) -> Config:
    """Settings small enough for a CPU test: random weights, 64px, a fixed learning rate."""
    # From random weights the batch-norm statistics need a few dozen steps before validation predictions
    # mean anything: 5 epochs of 6 batches get about 3 in 4 shapes right, in a few seconds.
    base = Config(name="tiny", data=data, out=out, arch="resnet18", pretrained=False, epochs=5, size=64,
                  batch_size=8, lr=1e-2, seed=0, valid_pct=0.2)
    return base.replace(**changes)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> TinyModel:
    """Train the tiny model once for the whole test session."""
    from training.train.stage import train  # torch and fastai load only for tests that need them

    cache = _mutation_cache()
    if cache and (cache / "complete").exists():
        return TinyModel(tiny_config(cache / "data", cache / "model"), cache / "data", cache / "model")
    if cache:
        shutil.rmtree(cache, ignore_errors=True)  # what an interrupted session left
    root = cache or tmp_path_factory.mktemp("tiny")
    data = make_images(root / "data")
    cfg = tiny_config(data, root / "model")
    model = TinyModel(cfg, data, train(cfg))
    if cache:
        (cache / "complete").touch()
    return model


def trains_its_own_model(mutant: str) -> bool:
    """Whether a mutmut session with MUTANT_UNDER_TEST `mutant` trains the tiny model rather than reuse the run's:
    a mutant of training/ changes what training makes."""
    return mutant.startswith("training.")


def _mutation_cache() -> Path | None:
    """Where a mutation run keeps one tiny model for all its mutants (docs/mutation.md); None otherwise.

    mutmut runs each mutant's tests in a fresh session, which would train the model again for every mutant.
    So under mutmut the first session that runs with no mutant active trains it into mutants/.tiny-model
    (or $TINY_MODEL_CACHE) and later sessions reuse it, except under a mutant of training/, which must train
    for itself. A serving mutant then meets the model the real code trained: it can still fail the serving
    tests, but not training's own checks, so the cache can only let mutants survive, never kill one.
    """
    if "MUTANT_UNDER_TEST" not in os.environ:  # set by mutmut in every session it runs, empty when no mutant is
        return None
    mutant = os.environ["MUTANT_UNDER_TEST"]
    if trains_its_own_model(mutant):
        return None
    # Keyed by the code that trains it, so that a run after a change never meets an old model.
    code = sorted(Path.cwd().glob("training/**/*.py")) + sorted(Path.cwd().glob("serving/**/*.py"))
    key = hashlib.sha1(b"".join(p.read_bytes() for p in [Path(__file__), *code])).hexdigest()[:12]
    cache = Path(os.environ.get("TINY_MODEL_CACHE") or Path.cwd() / ".tiny-model") / key
    if "__mutmut_" in mutant and not (cache / "complete").exists():
        return None  # never let a mutant write the model the others will read
    return cache


def half_transparent(example: Path) -> Image.Image:
    """The example as RGBA, its alpha running from fully transparent to opaque."""
    with Image.open(example) as img:
        rgba = img.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    return rgba
