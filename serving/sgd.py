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

Settings can come from anyone (the app's /sgd API), so every run is bounded before any work is done:
`check_settings`, which fit_line calls first, refuses with a sentence anything that is not a usable number
and any run that would take more than MAX_STEPS steps or cost more than MAX_WORK (see `work`).
"""
from __future__ import annotations

import math
import numbers
import reprlib
from dataclasses import dataclass

import numpy as np

TRUE_PARAMS = (3.0, 2.0)  # the lesson's line, y = 3x + 2
START = (-1.0, 1.0)  # the lesson's first guess: a line sloping the wrong way
MAX_POINTS = 10_000
MAX_NOISE = 1_000.0  # far past anything useful, and well inside what float64 squares without overflow
# What one run may cost, checked before any work so that no call holds a worker of a 2-core Space for long
# (measured, with the worst settings both allow); the page's longest run, 500 points in batches of 1 for 50
# epochs, fits both.
MAX_STEPS = 25_000  # every step costs Python the same, however few its points: this caps that part
MAX_WORK = 15_000_000  # point-steps (see work()): caps the numpy part, which grows with the points per step
MAX_SEED = 2**32 - 1  # plenty of different runs; a bound gives a sentence, not an overflow, for 10**400
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


@dataclass(frozen=True)
class Plan:
    """A run's settings once checked: numbers numpy can use, and what the run will cost."""
    n_points: int
    noise: float
    learning_rate: float
    batch: int  # points per step: the batch size, or all points for None or a batch larger than the data
    epochs: int
    seed: int
    steps_per_epoch: int
    steps: int  # planned; fewer are taken when the loss explodes
    work: int  # work(n_points, batch, steps): at most MAX_WORK


def work(n_points: int, batch: int, steps: int) -> int:
    """A run's cost in point-steps: each step computes the gradient on its batch and the loss on all points."""
    return steps * (n_points + batch)


def check_settings(n_points=100, noise=0.5, learning_rate=0.1, batch_size=None, epochs=10, seed=0) -> Plan:
    """The settings of fit_line, checked before any work: ValueError with a sentence naming the first bad
    setting, or the limit the run would pass (MAX_STEPS, MAX_WORK). Any value at all may come in: each
    setting is checked to be a number, finite, whole where it has to be and within its bounds."""
    n_points = _whole("n_points", n_points, 2, MAX_POINTS)
    if not 0 <= _real("noise", noise) <= MAX_NOISE:
        raise ValueError(f"noise must be between 0 and {MAX_NOISE:g} (it is the spread of the points), "
                         f"got {describe(noise)}")
    if _real("learning_rate", learning_rate) <= 0:
        raise ValueError(f"learning_rate must be above 0 (a step of 0 never moves), got {describe(learning_rate)}")
    noise, learning_rate = float(noise), float(learning_rate)
    if batch_size is not None:
        batch_size = _whole("batch_size", batch_size, 1, hint=" (or None for all points)")
    epochs = _whole("epochs", epochs, 1, MAX_STEPS)  # every epoch is a step at least
    seed = _whole("seed", seed, 0, MAX_SEED)
    batch = n_points if batch_size is None else min(batch_size, n_points)  # one batch can't exceed the data
    steps_per_epoch = math.ceil(n_points / batch)
    steps = epochs * steps_per_epoch
    if steps > MAX_STEPS:
        raise ValueError(f"that is {steps:,} steps ({epochs:,} epochs of {steps_per_epoch:,} batches), over the "
                         f"limit of {MAX_STEPS:,}: use fewer epochs or a larger batch size")
    cost = work(n_points, batch, steps)
    if cost > MAX_WORK:
        raise ValueError(f"that is {cost:,} point-steps of work ({steps:,} steps, each on a batch of {batch:,} and "
                         f"the loss on all {n_points:,} points), over the limit of {MAX_WORK:,}: use fewer epochs "
                         f"or fewer points")
    return Plan(n_points, noise, learning_rate, batch, epochs, seed, steps_per_epoch, steps, cost)


def fit_line(n_points: int = 100, noise: float = 0.5, learning_rate: float = 0.1, batch_size: int | None = None,
             epochs: int = 10, seed: int = 0, start=START) -> Run:
    """Fit a1, a2 to noisy points of y = 3x + 2 by mini-batch SGD; batch_size None means all points.

    ValueError with a sentence, before any work, for settings check_settings refuses or a bad start."""
    plan = check_settings(n_points, noise, learning_rate, batch_size, epochs, seed)
    if np.shape(start) != (2,) or not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in start):
        raise ValueError(f"start must be two finite numbers (a1, a2), got {describe(start)}")
    points = make_points(plan.n_points, plan.noise, plan.seed)
    order = np.random.default_rng([plan.seed, 1])  # the batches' own stream: the points stay put
    params, loss, batch_loss = _descend(points, np.asarray(start, dtype=float), plan.learning_rate, plan.batch,
                                        plan.epochs, order)
    best = float(np.mean((points.x @ np.linalg.lstsq(points.x, points.y)[0] - points.y) ** 2))
    return Run(points, params, loss, batch_loss, best, plan.learning_rate, plan.batch, plan.steps_per_epoch,
               plan.steps, _verdict(loss, best))


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


def _real(name: str, value) -> float:
    """value as a finite float, or ValueError naming the setting."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {describe(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int past float64's range, such as 10**400
        raise ValueError(f"{name} must be a number below 1e308, got {describe(value)}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {describe(value)}")
    return number


def _whole(name: str, value, low: int, high: int | None = None, hint: str = "") -> int:
    """value as an int within low..high, or ValueError naming the setting. 40.0 counts: JSON clients send it."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        whole = int(value)  # exact however large: float() would overflow past 10**308
    else:
        number = _real(name, value)
        if number != int(number):
            raise ValueError(f"{name} must be a whole number, got {describe(value)}")
        whole = int(number)
    if whole < low or (high is not None and whole > high):
        bounds = f"between {low} and {high:,}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {bounds}{hint}, got {describe(value)}")
    return whole


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 40
_SHORT.maxlist = _SHORT.maxdict = _SHORT.maxtuple = 4
_SHORT.maxlevel = 2


def describe(value) -> str:
    """A setting as it came, for a sentence: numbers as written, anything else as a short repr.

    A hostile value can be a 400-digit number or a megabyte of text, neither of which belongs in a message,
    and Python refuses to turn an int of more than 4,300 digits into text at all.
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and abs(value) >= 10**15:
        return f"a {'negative ' if value < 0 else ''}number of {int(math.log10(abs(value))) + 1:,} digits"
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return str(value)
    try:
        return _SHORT.repr(value)
    except (ValueError, RecursionError):  # an int of over 4,300 digits inside a list, or nesting too deep
        return f"a {type(value).__name__}"
