"""serving/sgd.py: mini-batch SGD on a line converges, diverges, crawls, and refuses bad settings."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from serving import sgd
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


@pytest.mark.parametrize("batch,lr", [(None, 1.5), (None, 3.0), (None, 1e300), (None, 1e308), (10, 1.5), (1, 1.0),
                                      (1, 1e308)])
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
    (dict(epochs=-1), "epochs must be between 1 and 25,000, got -1"),
    (dict(epochs=0), "epochs must be between 1 and 25,000, got 0"),
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
    (dict(seed=-1), "seed must be between 0 and 4,294,967,295, got -1"),
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


# --- hostile settings: /sgd passes whatever a stranger sends straight to fit_line ---------------------------

HUGE = 10**400  # past float64: math.isfinite(HUGE) raises OverflowError


@pytest.mark.parametrize("settings,message", [
    (dict(seed=HUGE), "seed must be between 0 and 4,294,967,295, got a number of 401 digits"),
    (dict(seed=10**5000), "seed must be between 0 and 4,294,967,295, got a number of 5,001 digits"),  # str() refuses it
    (dict(seed=2**32), "seed must be between 0 and 4,294,967,295, got 4294967296"),
    (dict(n_points=HUGE), "n_points must be between 2 and 10,000, got a number of 401 digits"),
    (dict(n_points=-HUGE), "n_points must be between 2 and 10,000, got a negative number of 401 digits"),
    (dict(epochs=HUGE), "epochs must be between 1 and 25,000, got a number of 401 digits"),
    (dict(epochs=1e308), "epochs must be between 1 and 25,000, got 1e+308"),
    (dict(batch_size=-HUGE), "batch_size must be at least 1 (or None for all points), got a negative number of 401 "
                             "digits"),
    (dict(noise=HUGE), "noise must be a number below 1e308, got a number of 401 digits"),
    (dict(noise=1e308), "noise must be between 0 and 1000 (it is the spread of the points), got 1e+308"),
    (dict(learning_rate=HUGE), "learning_rate must be a number below 1e308, got a number of 401 digits"),
    (dict(learning_rate=-math.inf), "learning_rate must be a finite number, got -inf"),
    (dict(epochs=math.nan), "epochs must be a finite number, got nan"),
    (dict(seed=None), "seed must be a number, got None"),
    (dict(epochs="10"), "epochs must be a number, got '10'"),
    (dict(noise="x" * 1_000_000), "noise must be a number, got 'xxxxxxxxxxxxxxxxx...xxxxxxxxxxxxxxxxxx'"),
    (dict(n_points=[1, 2]), "n_points must be a number, got [1, 2]"),
    (dict(n_points=[10**5000]), "n_points must be a number, got a list"),
    (dict(batch_size={"size": 10}), "batch_size must be a number, got {'size': 10}"),
    (dict(learning_rate=True), "learning_rate must be a number, got True"),
    (dict(learning_rate=1j), "learning_rate must be a number, got 1j"),
])
def test_hostile_settings_get_a_short_sentence(settings, message):
    with pytest.raises(ValueError) as caught:
        fit_line(**settings)
    assert str(caught.value) == message
    with pytest.raises(ValueError) as checked:
        sgd.check_settings(**settings)  # what fit_line checks with, first
    assert str(checked.value) == message


@pytest.mark.parametrize("learning_rate", [1e308, 5e-324])
def test_extreme_but_usable_learning_rates_give_a_verdict(learning_rate):
    run = _quiet_fit(n_points=100, learning_rate=learning_rate, batch_size=None, epochs=5)
    assert run.verdict == (DIVERGING if learning_rate > 1 else BARELY_MOVING)


# --- the work budget: a step costs more the more points it touches ---------------------------------------------

def test_work_counts_the_loss_on_all_points_and_the_batch_every_step():
    # 10 epochs of 100 points in batches of 10: 100 steps, each a gradient on 10 points and the loss on all 100
    checked = sgd.check_settings(n_points=100, batch_size=10, epochs=10)
    assert (checked.steps, checked.batch, checked.work) == (100, 10, 100 * (100 + 10))
    full = sgd.check_settings(n_points=10_000, batch_size=None, epochs=10)  # all points: one step an epoch...
    assert (full.steps, full.work) == (10, 10 * 2 * 10_000)  # ...but every step touches every point twice
    assert sgd.check_settings(n_points=50, batch_size=500).batch == 50  # a batch can't be larger than the data


# The corners of what is allowed: the most points, the most steps, both at once (the costliest run of all,
# timed for the report of the change that set the budget), and the page's longest run. Each row's steps and work,
# worked out by hand: steps = epochs × ceil(points / batch), work = steps × (points + batch); one more epoch passes
# 25,000 steps or 15,000,000 point-steps.
@pytest.mark.parametrize("n_points,batch_size,epochs,steps,work", [
    (10_000, None, 750, 750 * 1, 750 * (10_000 + 10_000)),  # = 15,000,000: the work limit
    (10_000, 5_000, 500, 500 * 2, 1_000 * (10_000 + 5_000)),  # = 15,000,000: the work limit
    (2, None, 25_000, 25_000 * 1, 25_000 * (2 + 2)),  # 25,000 steps: the step limit
    (300, None, 25_000, 25_000 * 1, 25_000 * (300 + 300)),  # = 15,000,000 in 25,000 steps: both limits at once
    (250, 126, 12_500, 12_500 * 2, 25_000 * (250 + 126)),  # 25,000 steps, 9,400,000 point-steps: the step limit
    (500, 1, 50, 50 * 500, 25_000 * (500 + 1)),  # the page's longest run: 25,000 steps, 12,525,000 point-steps
])
def test_settings_up_to_the_budget_are_allowed(n_points, batch_size, epochs, steps, work):
    checked = sgd.check_settings(n_points=n_points, batch_size=batch_size, epochs=epochs)
    assert (checked.steps, checked.work) == (steps, work)
    assert steps == MAX_STEPS or work == sgd.MAX_WORK  # at one limit at least...
    with pytest.raises(ValueError):  # ...so one more epoch is over it
        sgd.check_settings(n_points=n_points, batch_size=batch_size, epochs=epochs + 1)


# The review's call, then settings just over each limit. Before the work budget, every one of them trained
# (the first for about a minute): the timeout turns that into a failure rather than a wait.
@pytest.mark.timeout(20)
@pytest.mark.parametrize("settings,message", [
    (dict(n_points=10_000, batch_size=None, epochs=200_000), "epochs must be between 1 and 25,000, got 200000"),
    (dict(n_points=10_000, batch_size=None, epochs=751),
     "that is 15,020,000 point-steps of work (751 steps, each on a batch of 10,000 and the loss on all 10,000 "
     "points), over the limit of 15,000,000: use fewer epochs or fewer points"),
    (dict(n_points=301, batch_size=None, epochs=25_000), "that is 15,050,000 point-steps of work"),
    (dict(n_points=2, batch_size=1, epochs=12_501), "that is 25,002 steps (12,501 epochs of 2 batches), over"),
    (dict(n_points=10_000, batch_size=1, epochs=1), "that is 100,010,000 point-steps of work (10,000 steps"),
])
def test_settings_over_the_budget_are_refused_before_any_work(settings, message, monkeypatch):
    def work(*args, **kwargs):
        raise AssertionError("training began before the settings were refused")

    for step in ("make_points", "_descend"):  # a run's two pieces of work: drawing the points, then the steps
        monkeypatch.setattr(sgd, step, work)
    with pytest.raises(ValueError) as caught:
        fit_line(learning_rate=0.01, **settings)
    assert message in str(caught.value)
