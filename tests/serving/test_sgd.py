"""serving/sgd.py: mini-batch SGD on a line converges, diverges, crawls, and refuses bad settings."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from serving.sgd import (BARELY_MOVING, CONVERGED, DIVERGING, MAX_STEPS, NOT_THERE_YET, TRUE_PARAMS, fit_line,
                         gradient, make_points, mse)

TRUE = np.array(TRUE_PARAMS)


def _quiet_fit(**settings):
    """fit_line with any warning (numpy's overflow or invalid value among them) turned into a failure."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fit_line(**settings)


def _least_squares(run) -> np.ndarray:
    return np.linalg.lstsq(run.points.x, run.points.y)[0]


# (noise, batch size, learning rate, epochs, how far from the true a1, a2 the fit may end)
# The tolerance is set by the noise: 100 points of sd 0.5 pin the slope down to about ±0.1.
@pytest.mark.parametrize("noise,batch,lr,epochs,tol", [
    (0.0, 10, 0.1, 10, 0.01),
    (0.5, 10, 0.1, 10, 0.25),
    (0.5, None, 0.5, 10, 0.25),
    (1.0, 5, 0.03, 20, 0.5),
    (0.2, 1, 0.03, 5, 0.15),
])
def test_sensible_settings_converge_to_the_true_line(noise, batch, lr, epochs, tol):
    run = _quiet_fit(n_points=100, noise=noise, learning_rate=lr, batch_size=batch, epochs=epochs)
    assert run.verdict == CONVERGED
    assert np.allclose(run.params[-1], TRUE, atol=tol), run.params[-1]
    assert run.loss[-1] < 0.2 * run.loss[0]  # the guess's loss is 7 or more; the noise's about noise²


@pytest.mark.parametrize("batch,lr", [(None, 0.5), (100, 0.5), (50, 0.3), (10, 0.1), (3, 0.03), (1, 0.01)])
def test_full_batch_and_mini_batches_both_reach_the_least_squares_line(batch, lr):
    run = _quiet_fit(n_points=100, noise=0.5, learning_rate=lr, batch_size=batch, epochs=15)
    assert run.verdict == CONVERGED
    assert np.allclose(run.params[-1], _least_squares(run), atol=0.1)
    steps_per_epoch = math.ceil(100 / (batch or 100))
    assert run.steps_per_epoch == steps_per_epoch and run.steps == 15 * steps_per_epoch


def test_trajectory_records_every_step_with_the_loss_on_all_points():
    run = fit_line(n_points=30, noise=0.3, learning_rate=0.1, batch_size=7, epochs=4)
    assert run.params.shape == (run.steps + 1, 2) and run.loss.shape == (run.steps + 1,)
    assert run.batch_loss.shape == (run.steps,) and run.steps == 4 * 5  # 30 points in batches of 7: 5 a epoch
    assert np.array_equal(run.params[0], [-1.0, 1.0])  # the lesson's first guess
    for k in (0, 7, run.steps):
        assert run.loss[k] == pytest.approx(mse(run.points.x @ run.params[k], run.points.y))


def test_full_batch_is_plain_gradient_descent():
    run = fit_line(n_points=50, noise=0.5, learning_rate=0.2, batch_size=None, epochs=5)
    a = np.array([-1.0, 1.0])
    for _ in range(5):
        a = a - 0.2 * 2 / 50 * run.points.x.T @ (run.points.x @ a - run.points.y)
    assert np.allclose(run.params[-1], a)
    assert np.array_equal(fit_line(n_points=50, noise=0.5, learning_rate=0.2, batch_size=500, epochs=5).params,
                          run.params)  # a batch bigger than the data is all points


@pytest.mark.parametrize("batch,lr", [(None, 1.5), (None, 3.0), (None, 1e300), (10, 1.5), (1, 1.0)])
def test_a_learning_rate_too_high_is_diverging_without_overflow_warnings(batch, lr):
    run = _quiet_fit(n_points=100, noise=0.5, learning_rate=lr, batch_size=batch, epochs=30)
    assert run.verdict == DIVERGING
    assert run.steps < run.planned_steps  # stopped as soon as the loss exploded, not after 30 epochs
    assert np.isfinite(run.loss[:-1]).all() and run.loss[-2] < 1e12 * run.loss[0]


def test_a_slow_climb_is_diverging_too():
    run = _quiet_fit(n_points=100, noise=0.5, learning_rate=1.1, batch_size=None, epochs=10)
    assert run.steps == run.planned_steps  # never exploded...
    assert run.loss[-1] > run.loss[0] and run.verdict == DIVERGING  # ...but ends worse than the guess


@pytest.mark.parametrize("batch,lr,epochs", [(None, 1e-3, 10), (None, 1e-4, 50), (25, 1e-4, 20)])
def test_a_tiny_learning_rate_barely_moves(batch, lr, epochs):
    run = _quiet_fit(n_points=100, noise=0.5, learning_rate=lr, batch_size=batch, epochs=epochs)
    assert run.verdict == BARELY_MOVING
    assert np.abs(run.params[-1] - run.params[0]).max() < 0.2
    assert 0 <= run.progress < 0.1


def test_in_between_is_not_there_yet():
    run = fit_line(n_points=100, noise=0.5, learning_rate=0.01, batch_size=None, epochs=10)
    assert run.verdict == NOT_THERE_YET and 0.1 < run.progress < 0.98


@pytest.mark.parametrize("a", [[-1.0, 1.0], [3.0, 2.0], [10.0, -4.0]])
def test_gradient_matches_finite_differences(a):
    points = make_points(20, 0.5, seed=3)
    a, h = np.array(a), 1e-6
    numeric = [(mse(points.x @ (a + h * e), points.y) - mse(points.x @ (a - h * e), points.y)) / (2 * h)
               for e in np.eye(2)]
    assert np.allclose(gradient(points.x, points.y, a), numeric, rtol=1e-5, atol=1e-6)


def test_points_are_seeded_and_the_same_for_every_batch_size():
    assert np.array_equal(make_points(40, 1.0, seed=7).y, make_points(40, 1.0, seed=7).y)
    assert not np.array_equal(make_points(40, 1.0, seed=7).y, make_points(40, 1.0, seed=8).y)
    small, full = fit_line(n_points=40, batch_size=4), fit_line(n_points=40, batch_size=None)
    assert np.array_equal(small.points.y, full.points.y) and small.best_loss == full.best_loss
    x = make_points(40, 0.0).x
    assert x.shape == (40, 2) and np.all(x[:, 1] == 1) and np.all(np.abs(x[:, 0]) <= 1)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("settings,message", [
    (dict(batch_size=0), "batch_size must be at least 1 (or None for all points), got 0"),
    (dict(batch_size=-5), "batch_size must be at least 1"),
    (dict(batch_size=2.5), "batch_size must be a whole number, got 2.5"),
    (dict(batch_size=NAN), "batch_size must be a finite number, got nan"),
    (dict(epochs=-1), "epochs must be at least 1, got -1"),
    (dict(epochs=0), "epochs must be at least 1, got 0"),
    (dict(epochs=NAN), "epochs must be a finite number"),
    (dict(n_points=1), "n_points must be between 2 and 10,000, got 1"),
    (dict(n_points=10_001), "n_points must be between 2 and 10,000"),
    (dict(n_points="100"), "n_points must be a number, got '100'"),
    (dict(n_points=True), "n_points must be a number, got True"),
    (dict(noise=NAN), "noise must be a finite number, got nan"),
    (dict(noise=-0.1), "noise must be between 0 and 1000"),
    (dict(learning_rate=0), "learning_rate must be above 0"),
    (dict(learning_rate=-0.1), "learning_rate must be above 0"),
    (dict(learning_rate=INF), "learning_rate must be a finite number, got inf"),
    (dict(learning_rate=None), "learning_rate must be a number, got None"),
    (dict(seed=-1), "seed must be at least 0"),
    (dict(start=(NAN, 1.0)), "start must be two finite numbers"),
    (dict(start=(1.0,)), "start must be two finite numbers"),
    (dict(n_points=10_000, batch_size=1, epochs=50), f"over the limit of {MAX_STEPS:,}: use fewer epochs"),
])
def test_bad_settings_are_refused_with_a_sentence(settings, message):
    with pytest.raises(ValueError) as caught:
        fit_line(**settings)
    assert message in str(caught.value)


def test_whole_numbers_may_arrive_as_floats():
    assert fit_line(n_points=40.0, batch_size=8.0, epochs=2.0).steps == 10  # JSON clients send 40.0 for 40
