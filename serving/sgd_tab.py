"""The app's "How training works" tab: watch SGD fit a line, and the /sgd API endpoint behind it.

    app.py:   with gr.Tab("How training works"): build_sgd_tab(demo)
    client:   Client(url).predict(n_points=100, noise=0.5, learning_rate=0.1, batch_size=10, epochs=10,
                                  api_name="/sgd")   # {"a1": 2.97, "a2": 2.0, "loss": 0.237, ...}

The numbers come from serving/sgd.py (numpy only); this module turns them into a page: controls, an
animated plot of the points with the current line next to the loss curve, and a verdict in words.
"""
from __future__ import annotations

import functools
import math
import numbers
import typing
from typing import Literal, TypedDict

import gradio as gr
import numpy as np

from serving.sgd import BARELY_MOVING, CONVERGED, DIVERGING, TRUE_PARAMS, Run, describe, fit_line

# Spaced roughly ×3 apart, as learning rates are tried in practice, from too low to explode.
LEARNING_RATES = [0.0001, 0.001, 0.01, 0.03, 0.1, 0.3, 0.5, 1.0, 1.5, 3.0]
ALL_POINTS = "all points"
BATCH_SIZES = [ALL_POINTS, "1", "5", "10", "25", "50"]
DEFAULTS = dict(n_points=100, noise=0.5, learning_rate=0.1, batch_size=10, epochs=10)
REFUSED = "Can't train with these settings: "
FRAMES = 20  # frames per animation: enough to see the line swing, few enough to render in a few seconds
LINE_COLOUR, POINT_COLOUR, TRUE_COLOUR = "#d9480f", "#1c7ed6", "#868e96"

INTRO = """### Watch a model learn
Training a neural network and fitting this line work the same way: guess some parameters, measure how
wrong they are, work out which way to nudge each one, nudge it a little, repeat. Here the model is a straight
line and the data are noisy points scattered around y = 3x + 2. Press **Train** and watch the line swing
from its first guess (y = −x + 1) towards the points while the loss falls. Then try a learning rate of
0.0001 or 1.5."""

WORDS = """#### The words, on this example
- **Architecture and parameters.** The model's form, y = a1·x + a2, is its *architecture*. a1 (the slope)
  and a2 (the intercept) are its *parameters*: the numbers training adjusts. A neural network is the same
  idea with millions of parameters and a more elaborate form.
- **Tensors and rank.** The inputs form a table with one row (x, 1) per point: a *tensor* of *rank* 2 (rank
  counts the axes; the list of targets has rank 1). The constant 1 in each row lets a single matrix product
  compute every prediction at once.
- **Loss.** The *mean squared error*: the average, over the points, of (prediction − actual)². Lower is
  better, but the noise in the points sets a floor no line gets under (the dashed line on the right).
- **Gradient and step.** The *gradient* tells, for each parameter, how fast the loss rises when that
  parameter grows. A *step* moves every parameter the other way by *learning rate* × gradient. Too small a
  learning rate and the line crawls; too large and each step overshoots the bottom further than the last,
  so the loss explodes.
- **Mini-batches and epochs.** Each step computes the gradient on a random *mini-batch* of points instead
  of all of them: cheaper steps that point roughly, not exactly, downhill (the faint dots on the right are
  each batch's own loss). One *epoch* is one pass through all the points, batch after batch."""



class Fit(TypedDict):
    """What /sgd returns. gr.api shows these keys and types on the API page (a plain `dict` showed as Any)."""
    a1: float | None  # the fitted slope; null when the run blew up (JSON has no infinity)
    a2: float | None  # the fitted intercept; null likewise
    loss: float | None  # the mean squared error of the fitted line on the points; null likewise
    best_loss: float  # the lowest any line reaches on these points (least squares): the floor the noise sets
    true_a1: float  # the line the points scatter around: y = 3x + 2
    true_a2: float
    steps: int  # SGD steps taken: epochs × batches per epoch
    verdict: Literal["converged", "not there yet", "barely moving", "diverging"]  # serving/sgd.py's _verdict
    message: str  # the verdict in words, as the page shows it


SGD_API = ("Fit y = a1·x + a2 to n_points noisy points of y = 3x + 2 by mini-batch SGD (batch_size null: all "
           "points). Returns a1 and a2 (the fitted line; null if the run blew up), loss (its mean squared error), "
           "best_loss (the lowest any line reaches on these points), true_a1 and true_a2 (3 and 2), steps, verdict "
           "(converged, not there yet, barely moving or diverging) and message (the verdict in words).")

HEADLINES = {
    CONVERGED: "Converged.",
    DIVERGING: "The loss exploded: this learning rate is too high.",
    BARELY_MOVING: "The line barely moves: this learning rate is too low.",
}


def build_sgd_tab(page: gr.Blocks) -> None:
    """The tab's controls, plot and explanation, plus the /sgd API endpoint, built inside `with gr.Tab(...)`.

    Built into the page rather than as a Blocks of its own: every gr.Blocks builds its own FastAPI app when
    it closes, so each extra one adds to the app's start-up.
    """
    start = fit_line(**DEFAULTS)  # shown before the first click, so the tab never opens empty
    gr.Markdown(INTRO)
    with gr.Row():
        with gr.Column(scale=1, min_width=240):
            inputs = _controls()
            train = gr.Button("Train", variant="primary")
        with gr.Column(scale=3):
            plot = gr.Plot(label="Points and line · loss", show_label=False, format="png")
            step = gr.Slider(0, start.steps, value=start.steps, step=1, label="Step",
                             info="Drag to go back and forth through training.")
            verdict = gr.Markdown(_markdown(start))
    gr.Markdown(WORDS)
    # The settings of the run on screen, not the run: a run is cheap to recompute (seeded), and a
    # gr.State would make the page stateful, so each visitor's browser would hold a
    # heartbeat connection to one server process and replicas could no longer share the load.
    shown = gr.JSON(DEFAULTS, visible=False)
    # Private, but anyone can still call these through Gradio's API. preprocess=False hands them what was
    # sent as it came, so they answer anything with a sentence: a slider's own preprocess meets a string
    # with a traceback in the server log, and knows nothing of the work a run costs.
    train.click(_animate, inputs, [plot, step, verdict, shown], api_visibility="private", preprocess=False)
    step.input(_show_step, [shown, step], plot, trigger_mode="always_last", api_visibility="private",
               preprocess=False)
    gr.api(sgd, api_name="sgd", api_description=SGD_API)
    page.load(functools.partial(_first_plot, plot), None, plot, api_visibility="private", queue=False)


@functools.cache
def _first_plot(plot: gr.Plot):
    """The default run's last frame, drawn and encoded once, on the first page view.

    Not at start-up: matplotlib and one PNG encode cost about a second on 2 cores, which every start of the
    app (and every visitor who only wants a prediction) would otherwise wait for.
    """
    run = fit_line(**DEFAULTS)
    return plot.postprocess(_figure(run, run.steps))


def sgd(n_points: int = 100, noise: float = 0.5, learning_rate: float = 0.1, batch_size: int | None = 10,
        epochs: int = 10, seed: int = 0) -> Fit:
    """Fit y = a1·x + a2 to noisy points of y = 3x + 2 by mini-batch SGD (batch_size null: all points)."""
    run = _fit(n_points, noise, learning_rate, batch_size, epochs, seed)
    a1, a2 = run.params[-1]
    return {"a1": _finite(a1), "a2": _finite(a2), "loss": _finite(run.loss[-1]), "best_loss": run.best_loss,
            "true_a1": TRUE_PARAMS[0], "true_a2": TRUE_PARAMS[1], "steps": run.steps, "verdict": run.verdict,
            "message": f"{_headline(run)} {_explain(run)}"}


# gr.api reads the annotations as written: strings, under `from __future__ import annotations`; resolved, so that the
# API page shows the parameters' and the result's types.
sgd.__annotations__ = typing.get_type_hints(sgd)


def _controls() -> list[gr.components.Component]:
    return [
        gr.Slider(10, 500, value=DEFAULTS["n_points"], step=10, label="Number of points"),
        gr.Slider(0, 3, value=DEFAULTS["noise"], step=0.1, label="Noise",
                  info="How far the points scatter around the true line."),
        gr.Dropdown(LEARNING_RATES, value=DEFAULTS["learning_rate"], label="Learning rate",
                    info="Each step moves the parameters by learning rate × gradient."),
        gr.Dropdown(BATCH_SIZES, value=str(DEFAULTS["batch_size"]), label="Batch size",
                    info="Points per step; \"all points\" is plain gradient descent."),
        gr.Slider(1, 50, value=DEFAULTS["epochs"], step=1, label="Epochs",
                  info="Passes through all the points."),
    ]


def _animate(n_points, noise, learning_rate, batch, epochs):
    """Train, then yield frames through the run: (plot, step slider, verdict, the run's settings)."""
    settings = dict(n_points=n_points, noise=noise, learning_rate=learning_rate, epochs=epochs,
                    batch_size=_batch_size(batch))
    run = _fit(**settings)
    # Spaced geometrically, not evenly: the line moves most in the first steps, and with small batches
    # those are a small share of the run, so even spacing would show a line that is already done.
    frames = np.unique(np.geomspace(1, run.steps + 1, FRAMES).round().astype(int) - 1)
    for k in frames[:-1]:
        yield _figure(run, k), gr.update(maximum=run.steps, value=k), f"Training: step {k} of {run.steps}…", settings
    yield _figure(run, run.steps), gr.update(maximum=run.steps, value=run.steps), _markdown(run), settings


def _show_step(settings: dict, step: float):
    """The frame at `step` of the run on screen, retrained from its settings."""
    if not isinstance(settings, dict) or set(settings) != set(DEFAULTS):
        names = ", ".join(list(DEFAULTS)[:-1]) + f" and {list(DEFAULTS)[-1]}"
        raise gr.Error(f"{REFUSED}they must be an object of {names}, and nothing else, got {describe(settings)}.",
                       print_exception=False)
    run = _fit(**settings)
    if isinstance(step, bool) or not isinstance(step, numbers.Real) or not 0 <= step <= run.steps or step != int(step):
        raise gr.Error(f"Can't show step {describe(step)}: this run has whole steps from 0 to {run.steps}.",
                       print_exception=False)
    return _figure(run, int(step))


def _batch_size(batch):
    """The batch size menu's choice as fit_line takes it: "all points" is None, "10" is 10.

    Anything else the page could not have sent is refused, except a number (or None), which goes to fit_line
    as /sgd would send it, to be checked there."""
    if batch == ALL_POINTS:
        return None
    if isinstance(batch, str):
        if batch in BATCH_SIZES:
            return int(batch)
        raise gr.Error(f"{REFUSED}batch_size must be one of {', '.join(BATCH_SIZES)}, got {describe(batch)}.",
                       print_exception=False)
    return batch


def _fit(n_points, noise, learning_rate, batch_size, epochs, seed=0) -> Run:
    """fit_line, with bad settings turned into a sentence for the visitor.

    Every handler of the tab that takes settings trains through here, so all are checked the same way,
    by fit_line's check_settings, before any work: the same types, bounds and limits on the work."""
    try:
        return fit_line(n_points, noise, learning_rate, batch_size, epochs, seed)
    except ValueError as exc:
        raise gr.Error(f"{REFUSED}{exc}.", print_exception=False) from None


def _finite(value: float) -> float | None:
    """JSON has no infinity or NaN: a run that blew up reports null."""
    return float(value) if math.isfinite(value) else None


def _markdown(run: Run) -> str:
    return f"**{_headline(run)}** {_explain(run)}"


def _headline(run: Run) -> str:
    return HEADLINES.get(run.verdict, "Not there yet.")


def _explain(run: Run) -> str:
    """A few sentences on what this run did and what to try next."""
    a1, a2 = run.params[-1]
    if run.verdict == CONVERGED:
        return (f"After {run.steps} steps the line is {_equation(a1, a2)}; the points were drawn from "
                f"y = {TRUE_PARAMS[0]:g}x + {TRUE_PARAMS[1]:g}. Its loss is {_loss(run.loss[-1])}, next to "
                f"{_loss(run.best_loss)} for the best straight line through these points: the rest is noise.")
    if run.verdict == DIVERGING:
        how = (f"training was stopped after {run.steps} of {run.planned_steps} steps, once the loss passed a "
               f"million times its starting value" if run.steps < run.planned_steps else
               f"after {run.steps} steps the loss is {run.loss[-1]:.3g}, up from {run.loss[0]:.3g}")
        return (f"Each step overshoots the bottom of the loss valley and lands higher up the other side, so "
                f"every step makes things worse: {how}. Try a smaller learning rate"
                + (" or a larger batch." if run.batch_size < len(run.points.y) else "."))
    if run.verdict == BARELY_MOVING:
        moved = np.abs(np.diff(run.params, axis=0)).mean()
        return (f"Each step moves a1 and a2 by learning rate × gradient, here about {moved:.2g} a step, so "
                f"after {run.steps} steps the loss has come only {run.progress:.1%} of the way down to its "
                f"best. Try a larger learning rate, or many more epochs.")
    if _still_falling(run):
        advice = "The loss is still falling: train more epochs or raise the learning rate."
    elif run.batch_size < len(run.points.y):
        advice = ("The loss has stopped falling and jumps about: steps this big, each from a small batch, keep "
                  "knocking the line off the best fit. Lower the learning rate or use larger batches.")
    else:
        advice = ("The loss has stopped falling: each step overshoots the bottom and lands about as high on the "
                  "other side. Lower the learning rate.")
    return f"The loss has come {run.progress:.0%} of the way down to its best. {advice}"


def _still_falling(run: Run) -> bool:
    """Whether the loss is still going down over the last quarter of the run (at least an epoch)."""
    changes = np.diff(run.loss[-max(run.steps_per_epoch, run.steps // 4) - 1:])
    if run.batch_size < len(run.points.y):
        # On the way down a mini-batch step raises the loss on all points now and then; once a third of
        # them do, the batches' noise is steering, not the slope (about half do at the bottom).
        return np.mean(changes > 0) < 1 / 3
    return changes.sum() < -0.01 * run.loss[-1]  # all points: each step is exact, so any steady drop counts


def _loss(value: float) -> str:
    return "0" if value < 1e-9 else f"{value:.3g}"  # noiseless points: rounding error, not a loss


def _equation(a1: float, a2: float) -> str:
    """'y = 2.97x + 2.00', and 'y = -292x − 1.94e+03' once a run has blown up."""
    def number(v: float) -> str:
        return f"{v:.2f}" if abs(v) < 1000 else f"{v:.3g}"
    return f"y = {number(a1)}x {'−' if a2 < 0 else '+'} {number(abs(a2))}"


def _figure(run: Run, step: int):
    """The points with the line at `step`, next to the loss curve up to it (a matplotlib Figure)."""
    from matplotlib.figure import Figure  # imported on first use: it would slow the app's start

    fig = Figure(figsize=(10, 3.8))
    # Fixed margins, not layout="constrained": that measures every tick label first, slowing every frame.
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.13, top=0.92, wspace=0.18)
    left, right = fig.subplots(1, 2)
    _draw_points(left, run, step)
    _draw_loss(right, run, step)
    return fig


def _draw_points(ax, run: Run, step: int) -> None:
    x, y = run.points.x[:, 0], run.points.y
    pad = 0.15 * (y.max() - y.min() + 1e-9)
    ax.scatter(x, y, s=12, color=POINT_COLOUR, alpha=0.6, label="points")
    grid = np.array([-1.0, 1.0])
    ax.plot(grid, TRUE_PARAMS[0] * grid + TRUE_PARAMS[1], "--", color=TRUE_COLOUR, label="true line")
    a1, a2 = run.params[step]
    low, high = y.min() - pad, y.max() + pad
    if _crosses(a1, a2, low, high):
        ax.plot(grid, a1 * grid + a2, color=LINE_COLOUR, lw=2.5, label=_equation(a1, a2))
    else:  # a diverging run: say where the line went rather than leave the reader looking for it
        ax.text(0.97, 0.05, f"the line, {_equation(a1, a2)},\nhas left the chart", transform=ax.transAxes,
                ha="right", va="bottom", color=LINE_COLOUR, bbox=dict(facecolor="white", edgecolor=LINE_COLOUR))
    ax.set(xlim=(-1.05, 1.05), ylim=(low, high), xlabel="x", ylabel="y",
           title=f"Step {step} of {run.steps} (epoch {step / run.steps_per_epoch:.1f})")
    ax.legend(loc="upper left", fontsize="small")


def _draw_loss(ax, run: Run, step: int) -> None:
    epochs = np.arange(run.steps + 1) / run.steps_per_epoch
    if run.batch_size < len(run.points.y):
        ax.plot(epochs[1:step + 1], run.batch_loss[:step], ".", ms=2, color=TRUE_COLOUR, alpha=0.5,
                label="loss on each mini-batch")
    shown = np.isfinite(run.loss[:step + 1])
    ax.plot(epochs[:step + 1][shown], run.loss[:step + 1][shown], color=LINE_COLOUR, lw=2, label="loss on all points")
    ax.axhline(run.best_loss, ls="--", color=TRUE_COLOUR, label="best any line can do")
    finite = run.loss[np.isfinite(run.loss)]
    # Floor the axis at a millionth of the starting loss: noiseless points have a best loss near 1e-30, and
    # an axis reaching down there would squash the part of the curve worth looking at.
    bottom = max(min(run.best_loss, finite.min()) * 0.5, run.loss[0] * 1e-6)
    ax.set(yscale="log", xlim=(0, max(epochs[-1], 1e-9)), ylim=(bottom, finite.max() * 2), xlabel="epoch",
           ylabel="mean squared error", title="Loss")
    ax.legend(loc="upper left" if run.verdict == DIVERGING else "upper right", fontsize="small")  # off the curve


def _crosses(a1: float, a2: float, low: float, high: float) -> bool:
    """Whether y = a1·x + a2 passes through the chart's band low..high somewhere in x = -1..1."""
    if not (math.isfinite(a1) and math.isfinite(a2)) or abs(a1) > 1e9:  # too steep to draw as a line
        return False
    ends = (a2 - a1, a2 + a1)
    return not (min(ends) > high or max(ends) < low)
