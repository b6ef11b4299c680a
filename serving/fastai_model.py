"""Serve a model folder that holds only a learner (`model.pkl` or `export.pkl`), through fastai (imported only when
needed).

This is the slow path, kept so a repo pushed with fastai's own helpers still works. The fast path is
`python -m training convert export.pkl --out DIR`, then serving DIR with onnxruntime.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from serving.imaging import ImageSource, open_upright_rgb
from serving.novelty import Verdict


def fastai_available() -> bool:
    """Whether fastai can be imported here (the Space's requirements.txt leaves it out)."""
    return importlib.util.find_spec("fastai") is not None


class FastaiModel:
    """`classify(image) -> {label: probability}` with load_learner + learn.predict."""

    def __init__(self, learner_pkl: Path):
        from fastai.learner import load_learner

        self.learn = load_learner(learner_pkl, cpu=True)
        self.labels = [str(v) for v in self.learn.dls.vocab]
        self.config = {"labels": self.labels, "metrics": {}, "source": f"{learner_pkl.name} (fastai)"}
        self.precision = "float32"  # torch's CPU inference, as trained

    def classify(self, image: ImageSource) -> dict[str, float]:
        from fastai.vision.core import PILImage

        img = PILImage.create(open_upright_rgb(image))  # the same upright RGB the ONNX path sees
        with self.learn.no_bar():  # else fastprogress draws a bar into the server log on every request
            _, _, probs = self.learn.predict(img)
        return dict(zip(self.labels, map(float, probs)))

    def judge(self, image: ImageSource) -> Verdict:
        """The probabilities; a learner carries no training features, so no novelty check."""
        return Verdict(self.classify(image))
