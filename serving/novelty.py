"""Whether a photo shows any of the model's labels: "deep nearest neighbours" (Sun et al., ICML 2022).

    check = NoveltyCheck.from_folder(folder, config)     # None when the folder has no features
    check.score(features)                                 # cosine distance to the k-th nearest training image

The model's second output, `features`, is what its last linear layer reads. Training stores those of its
training images, L2-normalised, in float16 (FEATURES_FILE), and calibrates a threshold on the validation split
so that a set share of in-domain images (95% by default) pass; config.json's `novelty` section records how.
An image far from every training image is "none of these". Training computes the same scores with the same
functions, through the served model, so the threshold belongs to the model that serves.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

METHOD = "knn_cosine"
FEATURES_FILE = "novelty_features.npy"
# Bounds on what the app holds in memory and scans per image (D=512: 20,000 images are 40 MB and a few ms).
MAX_FEATURES, MAX_DIM = 20_000, 4_096
FEW = 8


class NoveltyError(ValueError):
    """A model folder's novelty section or features that can't be used; the message says what to do."""


@dataclass(frozen=True)
class Verdict:
    """What the app says about one image: the probabilities, and how far the image is from the training ones."""

    probs: dict[str, float]
    novelty: float | None = None  # None: the model folder has no novelty check
    threshold: float | None = None

    @property
    def in_domain(self) -> bool | None:
        return None if self.novelty is None else self.novelty <= self.threshold

    @property
    def label(self) -> str:
        return max(self.probs, key=self.probs.get)


def normalised(features: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (float32); a row of zeros stays zeros."""
    x = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)


def knn_distances(bank: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """For each row of `queries`, 1 - its cosine similarity to its k-th nearest row of `bank` (both normalised)."""
    queries = normalised(queries)
    # A few queries (the app's one image): numpy's own loop, 0.4 ms for 2,000 x 512 on a loaded 2-core machine,
    # where BLAS's threads took 6-15 ms fighting onnxruntime's and the server's for the cores. Many (training): BLAS.
    similarity = np.einsum("qd,nd->qn", queries, bank) if len(queries) <= FEW else queries @ bank.T  # [Q, N]
    k = min(k, similarity.shape[1])
    kth = -np.partition(-similarity, k - 1, axis=1)[:, k - 1]
    return (1.0 - kth).astype(np.float64)


@dataclass(frozen=True)
class NoveltyCheck:
    """The stored training features, k and the threshold: `score` and `verdict` for one image's features."""

    bank: np.ndarray  # float32 [N, D] (stored as float16), rows of length 1
    k: int
    threshold: float

    @classmethod
    def from_folder(cls, folder: Path, config: dict, precision: str = "float32") -> "NoveltyCheck | None":
        """The folder's check for the model of `precision` (each has its own threshold), None when config.json has no
        `novelty` section; NoveltyError if it is unusable."""
        section = config.get("novelty")
        if not section:
            return None
        path = folder / FEATURES_FILE
        try:
            # The int8 model's features differ a little from the float one's: its threshold was calibrated on its own.
            k, threshold = int(section["k"]), float(section["threshold"] if precision == "float32"
                                                     else section[precision]["threshold"])
            if section.get("method") != METHOD:
                raise ValueError(f"method {section.get('method')!r} is not {METHOD!r}")
            # Never a pickle (the folder may come from anyone's repo), and its shape read before its data.
            bank = np.load(path, mmap_mode="r", allow_pickle=False)
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise NoveltyError(f"{folder}: config.json's `novelty` section or {FEATURES_FILE} can't be used ({exc}); "
                               "retrain, or delete the `novelty` section to serve without the check") from exc
        if (bank.ndim != 2 or bank.dtype not in (np.float16, np.float32) or not 0 < bank.shape[0] <= MAX_FEATURES
                or not 0 < bank.shape[1] <= MAX_DIM or k < 1 or not np.isfinite(threshold)):
            raise NoveltyError(f"{path}: {bank.dtype} features of shape {bank.shape}, k={k}, threshold={threshold}: "
                               f"expected float16, at most {MAX_FEATURES:,} rows of at most {MAX_DIM:,}, and k >= 1; "
                               "retrain to write them again")
        return cls(np.array(bank, dtype=np.float32), k, threshold)  # float32 once, not per image

    @property
    def dim(self) -> int:
        return self.bank.shape[1]

    def scores(self, features: np.ndarray) -> np.ndarray:
        """The novelty of each row of `features` (raw, as the model outputs them)."""
        return knn_distances(self.bank, features, self.k)

    def verdicts(self, probs: list[dict[str, float]], features: np.ndarray) -> list[Verdict]:
        return [Verdict(p, float(s), self.threshold) for p, s in zip(probs, self.scores(features))]


def threshold_for(scores: np.ndarray, pass_rate: float) -> float:
    """The smallest threshold under which at least `pass_rate` of `scores` fall (scores <= threshold pass)."""
    ranked = np.sort(np.asarray(scores, dtype=np.float64))
    index = min(len(ranked) - 1, max(0, int(np.ceil(pass_rate * len(ranked))) - 1))
    return float(ranked[index])


def auroc(in_domain: np.ndarray, others: np.ndarray) -> float:
    """The chance that an image showing none of the labels scores higher than an in-domain one (ties count half):
    1.0 separates them perfectly, 0.5 is a coin."""
    a, b = np.asarray(in_domain, dtype=np.float64), np.asarray(others, dtype=np.float64)
    greater = (b[:, None] > a[None, :]).sum()
    ties = (b[:, None] == a[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(a) * len(b)))
