"""How training works, shrunk to a line: mini-batch stochastic gradient descent (SGD) in numpy.

    from serving.sgd import fit_line
    run = fit_line(n_points=100, noise=0.5, learning_rate=0.1, batch_size=10, epochs=10)
    run.verdict, run.params[-1], run.loss[-1]   # "converged", about [3, 2], about 0.24

This is the second half of fastai's lesson 2, with numpy standing in for PyTorch so the app can show it
without torch. The words the lesson uses, as they appear here:

- tensor: an array of numbers with a regular shape (every row the same length). Its rank is how many
  axes it has: a single number has rank 0, the targets `y` (one number per point) have rank 1, and the
  inputs `x` (one row of two numbers per point) have rank 2.
- architecture vs parameters: the architecture is the form of the model, here a line
  y = a1·x1 + a2·x2 with x2 always 1, so a1 is the slope and a2 the intercept. The parameters are the
  numbers inside that form which training has to find: a1 and a2. Stacking (x1, 1) as the rows of `x`
  makes the predictions of all points one matrix product, `x @ a`.
- loss: one number saying how wrong the current parameters are. Here the mean squared error (MSE).
- gradient: how much the loss changes as each parameter is nudged up, so it points uphill.
- step: move every parameter a little downhill, by learning rate × gradient.
- mini-batch: a random handful of points the gradient is computed on, instead of all of them: each step
  is cheaper and a little noisier. That randomness is the "stochastic" in SGD.
- epoch: one pass over all points, one mini-batch after another, in a fresh random order each time.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

TRUE_PARAMS = (3.0, 2.0)  # the lesson's line, y = 3x + 2
START = (-1.0, 1.0)  # the lesson's first guess: a line sloping the wrong way
MAX_POINTS = 10_000
MAX_NOISE = 1_000.0  # far past anything useful, and well inside what float64 squares without overflow
MAX_STEPS = 200_000  # a few seconds of CPU: one request can't hold a worker of a 2-core Space for long
EXPLODED = 1e6  # a loss this many times the starting loss is heading for overflow: stop there

CONVERGED = "converged"
DIVERGING = "diverging"
BARELY_MOVING = "barely moving"
NOT_THERE_YET = "not there yet"
# Progress is the share of the way from the starting loss down to the best loss any line can reach on
# these points. Judging by that, rather than by the loss itself, makes the verdict independent of how
# noisy the points are (the noise sets the best loss, and no learning rate gets below it).
CONVERGED_PROGRESS = 0.98  # within 2% of the gap: mini-batch jitter near the bottom still counts
BARELY_MOVING_PROGRESS = 0.10


@dataclass(frozen=True)
class Points:
    """The training data: noisy points around a true line."""
    x: np.ndarray  # [n, 2], rank 2: each row is (x1, 1), so `x @ a` is a1·x1 + a2
    y: np.ndarray  # [n], rank 1: the targets
    true: np.ndarray  # [2]: the a1, a2 the points were drawn from


@dataclass(frozen=True)
class Run:
    """A whole training run: where the parameters went and how the loss followed them."""
    points: Points
    params: np.ndarray  # [steps + 1, 2]: a1, a2 at the start and after every step
    loss: np.ndarray  # [steps + 1]: MSE on all points, so runs with different batch sizes compare
    batch_loss: np.ndarray  # [steps]: MSE on the mini-batch each step was computed from
    best_loss: float  # the lowest MSE any line reaches on these points (least squares)
    learning_rate: float
    batch_size: int
    steps_per_epoch: int
    planned_steps: int  # fewer were taken when the loss exploded
    verdict: str

    @property
    def steps(self) -> int:
        return len(self.params) - 1

    @property
    def progress(self) -> float:
        """Share of the way from the starting loss to the best loss that the last step got to."""
        return _progress(self.loss[0], self.loss[-1], self.best_loss)


def make_points(n_points: int, noise: float, seed: int = 0, true=TRUE_PARAMS) -> Points:
    """n points with x1 uniform in [-1, 1] and y on the true line plus Gaussian noise of sd `noise`."""
    rng = np.random.default_rng(seed)
    x = np.stack([rng.uniform(-1.0, 1.0, n_points), np.ones(n_points)], axis=1)
    true = np.asarray(true, dtype=float)
    return Points(x, x @ true + rng.normal(0.0, noise, n_points), true)


def mse(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean squared error: the average of (prediction - target)²."""
    return float(np.mean((pred - y) ** 2))


def gradient(x: np.ndarray, y: np.ndarray, a: np.ndarray) -> np.ndarray:
    """d MSE / d a for the line model: 2/m · xᵀ(x·a - y) over m points."""
    # MSE = 1/m Σ_i e_i² with error e_i = x_i·a - y_i. By the chain rule each e_i² changes by 2·e_i per
    # unit of e_i, and e_i changes by x_ij per unit of a_j, so d MSE/d a_j = 2/m Σ_i e_i·x_ij: every
    # point pulls a_j in proportion to how wrong it is and how much a_j affects it. For the intercept
    # x_i2 = 1, so its gradient is simply twice the mean error. Written for all j at once: 2/m · xᵀe.
    # A prediction that is too high (e > 0) makes the gradient positive, and the step subtracts it.
    return 2.0 / len(y) * (x.T @ (x @ a - y))


def fit_line(n_points: int = 100, noise: float = 0.5, learning_rate: float = 0.1, batch_size: int | None = None,
             epochs: int = 10, seed: int = 0, start=START) -> Run:
    """Fit a1, a2 to noisy points of y = 3x + 2 by mini-batch SGD; batch_size None means all points."""
    n_points, batch_size, epochs, seed = _check(n_points, noise, learning_rate, batch_size, epochs, seed, start)
    points = make_points(n_points, noise, seed)
    batch = n_points if batch_size is None else min(batch_size, n_points)  # one batch can't exceed the data
    steps_per_epoch = math.ceil(n_points / batch)
    if epochs * steps_per_epoch > MAX_STEPS:
        raise ValueError(f"that is {epochs * steps_per_epoch:,} steps ({epochs} epochs of {steps_per_epoch} "
                         f"batches), over the limit of {MAX_STEPS:,}: use fewer epochs or a larger batch size")
    params, loss, batch_loss = _descend(points, np.asarray(start, dtype=float), learning_rate, batch, epochs,
                                        np.random.default_rng([seed, 1]))  # its own stream: the points stay put
    best = float(np.mean((points.x @ np.linalg.lstsq(points.x, points.y)[0] - points.y) ** 2))
    return Run(points, params, loss, batch_loss, best, float(learning_rate), batch, steps_per_epoch,
               epochs * steps_per_epoch, _verdict(loss, best))


def _descend(points: Points, a: np.ndarray, lr: float, batch: int, epochs: int, rng: np.random.Generator):
    """Run the epochs; stop as soon as the full-data loss explodes. Returns params, loss, batch loss."""
    params, loss, batch_loss = [a], [mse(points.x @ a, points.y)], []
    # A learning rate that only an API call could send (1e300) overflows in a single step. That is an
    # outcome the verdict reports ("diverging"), not something to warn about, so numpy stays quiet.
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(epochs):
            order = rng.permutation(len(points.y))  # a new random order each epoch: every point once
            for first in range(0, len(order), batch):
                xb, yb = points.x[order[first:first + batch]], points.y[order[first:first + batch]]
                batch_loss.append(mse(xb @ a, yb))
                a = a - lr * gradient(xb, yb, a)  # the step: downhill, by learning rate × gradient
                params.append(a)
                loss.append(mse(points.x @ a, points.y))
                if not math.isfinite(loss[-1]) or loss[-1] > EXPLODED * loss[0]:
                    return np.array(params), np.array(loss), np.array(batch_loss)
    return np.array(params), np.array(loss), np.array(batch_loss)


def _progress(start: float, end: float, best: float) -> float:
    gap = start - best
    if not math.isfinite(end):
        return -math.inf
    return 1.0 if gap <= 1e-12 * (1.0 + abs(best)) else (start - end) / gap


def _verdict(loss: np.ndarray, best: float) -> str:
    """Diverging, barely moving, converged or not there yet, from the full-data loss curve."""
    exploded = not np.all(np.isfinite(loss)) or loss.max() > EXPLODED * loss[0]
    if exploded or loss[-1] > loss[0]:  # ending worse than the guess: the steps make things worse
        return DIVERGING
    progress = _progress(loss[0], loss[-1], best)
    if progress < BARELY_MOVING_PROGRESS:
        return BARELY_MOVING
    return CONVERGED if progress >= CONVERGED_PROGRESS else NOT_THERE_YET


def _check(n_points, noise, learning_rate, batch_size, epochs, seed, start) -> tuple[int, int | None, int, int]:
    """The whole-number settings as ints; ValueError with a sentence naming the first bad setting."""
    n_points = _whole("n_points", n_points, 2, MAX_POINTS)
    _real("noise", noise)
    if not 0 <= noise <= MAX_NOISE:
        raise ValueError(f"noise must be between 0 and {MAX_NOISE:g} (it is the spread of the points), got {noise}")
    _real("learning_rate", learning_rate)
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be above 0 (a step of 0 never moves), got {learning_rate}")
    if batch_size is not None:
        batch_size = _whole("batch_size", batch_size, 1, hint=" (or None for all points)")
    epochs, seed = _whole("epochs", epochs, 1), _whole("seed", seed, 0)
    if np.shape(start) != (2,) or not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in start):
        raise ValueError(f"start must be two finite numbers (a1, a2), got {start!r}")
    return n_points, batch_size, epochs, seed


def _real(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")


def _whole(name: str, value, low: int, high: int | None = None, hint: str = "") -> int:
    _real(name, value)
    if value != int(value):
        raise ValueError(f"{name} must be a whole number, got {value}")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high:,}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {bounds}{hint}, got {value}")
    return int(value)
