"""The "How training works" tab: /sgd through gradio_client and plain HTTP against app.py, the page's
sentences and animation, and the tab in headless Chromium (screenshots in tests/artifacts/)."""
from __future__ import annotations

import json
import uuid

import httpx
import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from serving import sgd, sgd_tab
from serving.sgd import fit_line
from tests.conftest import SCREENSHOTS
from tests.live_app import LiveApp

PREFIX = "Can't train with these settings: "


@pytest.fixture(scope="module")
def live(tiny_model):
    with LiveApp({"MODEL_DIR": str(tiny_model.folder)}) as app:
        yield app


@pytest.fixture(scope="module")
def client(live):
    return Client(live.url, verbose=False)


def test_sgd_endpoint_returns_the_fitted_line(client):
    out = client.predict(n_points=100, noise=0.5, learning_rate=0.1, batch_size=10, epochs=10, api_name="/sgd")
    assert out["verdict"] == "converged" and out["message"].startswith("Converged.")
    assert abs(out["a1"] - 3) < 0.25 and abs(out["a2"] - 2) < 0.25
    assert out["best_loss"] <= out["loss"] < 1.05 * out["best_loss"]  # noise sd 0.5: loss near 0.25
    assert (out["true_a1"], out["true_a2"], out["steps"]) == (3.0, 2.0, 100)
    same = fit_line(n_points=100, noise=0.5, learning_rate=0.1, batch_size=10, epochs=10)
    assert np.allclose([out["a1"], out["a2"], out["loss"]], [*same.params[-1], same.loss[-1]], rtol=1e-12)


def test_sgd_endpoint_defaults_and_full_batch(client):
    assert client.predict(api_name="/sgd")["verdict"] == "converged"
    full = client.predict(batch_size=None, learning_rate=0.5, epochs=10, api_name="/sgd")
    assert full["verdict"] == "converged" and full["steps"] == 10  # all points: one step an epoch


@pytest.mark.parametrize("learning_rate,loss_is_null", [(3.0, False), (1e300, True), (1e308, True)])
def test_sgd_endpoint_reports_an_exploding_loss(client, learning_rate, loss_is_null):
    out = client.predict(learning_rate=learning_rate, batch_size=None, epochs=30, api_name="/sgd")
    assert out["verdict"] == "diverging" and "too high" in out["message"]
    assert out["steps"] < 30 and (out["loss"] is None) == loss_is_null  # JSON has no infinity: null


@pytest.mark.parametrize("settings,message", [
    (dict(batch_size=0), "batch_size must be at least 1 (or None for all points), got 0."),
    (dict(epochs=-1), "epochs must be between 1 and 25,000, got -1."),
    (dict(n_points=1), "n_points must be between 2 and 10,000, got 1."),
    (dict(learning_rate="fast"), "learning_rate must be a number, got 'fast'."),
    (dict(n_points=10_000, batch_size=1, epochs=50), "over the limit of 25,000: use fewer epochs"),
])
def test_bad_settings_through_the_api_get_a_sentence(client, settings, message):
    with pytest.raises(AppError) as caught:
        client.predict(**settings, api_name="/sgd")
    text = str(caught.value).strip('"')
    assert text.startswith(PREFIX) and message in text
    assert "Traceback" not in text and "serving/" not in text
    assert client.predict(api_name="/sgd")["verdict"] == "converged"  # and the app keeps serving


@pytest.mark.parametrize("body,message", [
    ('[100, NaN, 0.1, 10, 10, 0]', "noise must be a finite number, got nan."),
    ('[100, 0.5, Infinity, 10, 10, 0]', "learning_rate must be a finite number, got inf."),
])
def test_nan_and_infinity_over_plain_http_get_a_sentence(live, body, message):
    # gradio_client refuses to send NaN, but Gradio's HTTP API parses it: curl users can send one.
    assert _call(live, "sgd", body) == ("error", PREFIX + message)


def _call(live, api: str, data: str) -> tuple[str, str | None]:
    """One call through Gradio's plain HTTP API with `data` as raw JSON (NaN, 1e400, 400-digit ints and all):
    the last event's kind and, for an error, its text."""
    call = f"{live.url}/gradio_api/call/{api}"
    r = httpx.post(call, content=f'{{"data": {data}}}', headers={"content-type": "application/json"}, timeout=30)
    events = httpx.get(f"{call}/{r.json()['event_id']}", timeout=60).text.strip().split("\n\n")
    kind, payload = (line.split(": ", 1)[1] for line in events[-1].splitlines())
    return kind, json.loads(payload)["error"] if kind == "error" else None


HUGE = "1" + "0" * 400  # 10**400 as JSON: Python parses it as an int that math.isfinite can't take
SHOWN = '{"n_points": 100, "noise": 0.5, "learning_rate": 0.1, "batch_size": 10, "epochs": 10}'
OVER_BUDGET = '{"n_points": 10000, "noise": 0.5, "learning_rate": 0.1, "batch_size": null, "epochs": 751}'
OVER = "that is 15,020,000 point-steps of work (751 steps, each on a batch of 10,000 and the loss on all 10,000 " \
       "points), over the limit of 15,000,000: use fewer epochs or fewer points."
KEYS = "they must be an object of n_points, noise, learning_rate, batch_size and epochs, and nothing else, got "


# Every handler of the tab that takes settings, by the name Gradio's API knows it by: /sgd, and the page's
# own Train button (_animate: points, noise, learning rate, batch menu, epochs) and step slider (_show_step:
# the run's settings, the step), which are left out of the API docs but answer anyone who calls them.
@pytest.mark.parametrize("api,data,error", [
    ("sgd", f"[100, 0.5, 0.1, 10, 10, {HUGE}]", "seed must be between 0 and 4,294,967,295, got a number of 401 "
                                                "digits."),
    ("sgd", "[10000, 0.5, 0.1, null, 200000, 0]", "epochs must be between 1 and 25,000, got 200000."),
    ("sgd", "[10000, 0.5, 0.1, null, 751, 0]", OVER),
    ("sgd", "[100, 0.5, 1e400, 10, 10, 0]", "learning_rate must be a finite number, got inf."),
    ("sgd", f"[-{HUGE}, 0.5, 0.1, 10, 10, 0]", "n_points must be between 2 and 10,000, got a negative number of 401 "
                                               "digits."),
    ("sgd", f"[100, {HUGE}, 0.1, 10, 10, 0]", "noise must be a number below 1e308, got a number of 401 digits."),
    ("sgd", '[100, 0.5, 0.1, "ten", 10, 0]', "batch_size must be a number, got 'ten'."),
    ("sgd", "[100, [1, 2], 0.1, 10, 10, 0]", "noise must be a number, got [1, 2]."),
    ("sgd", '[{"n": 1}, 0.5, 0.1, 10, 10, 0]', "n_points must be a number, got {'n': 1}."),
    ("sgd", "[100, 0.5, 0.1, 10, NaN, 0]", "epochs must be a finite number, got nan."),
    ("sgd", "[100, 0.5, 0.1, 10, 10, null]", "seed must be a number, got None."),
    ("sgd", "[100, 0.5, 0.1, 10, 10, -1e308]", "seed must be between 0 and 4,294,967,295, got -1e+308."),
    ("sgd", f'[100, "{"x" * 100_000}", 0.1, 10, 10, 0]',
     "noise must be a number, got 'xxxxxxxxxxxxxxxxx...xxxxxxxxxxxxxxxxxx'."),
    ("_animate", '[100, "x", 0.1, "10", 10]', "noise must be a number, got 'x'."),
    ("_animate", '[10000, 0.5, 0.1, "all points", 751]', OVER),
    ("_animate", '[10000, 0.5, 0.1, "all points", 200000]', "epochs must be between 1 and 25,000, got 200000."),
    ("_animate", f'[100, 0.5, 0.1, "10", {HUGE}]', "epochs must be between 1 and 25,000, got a number of 401 digits."),
    ("_animate", '[100, 0.5, 0.1, "banana", 10]',
     "batch_size must be one of all points, 1, 5, 10, 25, 50, got 'banana'."),
    ("_animate", '[100, 0.5, 0.1, 0, 10]', "batch_size must be at least 1 (or None for all points), got 0."),
    ("_animate", '[null, 0.5, 0.1, "10", 10]', "n_points must be a number, got None."),
    ("_animate", '[100, 0.5, Infinity, "10", 10]', "learning_rate must be a finite number, got inf."),
    ("_show_step", '["hello", 5]', KEYS + "'hello'."),
    ("_show_step", "[null, 5]", KEYS + "None."),
    ("_show_step", f"[{OVER_BUDGET}, 5]", OVER),
    ("_show_step", f'[{SHOWN[:-1]}, "seed": {HUGE}}}, 5]',
     KEYS + "{'batch_size': 10, 'epochs': 10, 'learning_rate': 0.1, 'n_points': 100, ...}."),
    ("_show_step", f'[{SHOWN.replace("0.5", "NaN")}, 5]', "noise must be a finite number, got nan."),
    ("_show_step", f"[{SHOWN}, NaN]", "Can't show step nan: this run has whole steps from 0 to 100."),
    ("_show_step", f"[{SHOWN}, 101]", "Can't show step 101: this run has whole steps from 0 to 100."),
    ("_show_step", f"[{SHOWN}, -1]", "Can't show step -1: this run has whole steps from 0 to 100."),
    ("_show_step", f'[{SHOWN}, "7"]', "Can't show step '7': this run has whole steps from 0 to 100."),
    ("_show_step", f"[{SHOWN}, {HUGE}]",
     "Can't show step a number of 401 digits: this run has whole steps from 0 to 100."),
], ids=lambda value: value[:60])
def test_hostile_settings_through_every_handler_get_a_sentence_and_no_traceback(live, api, data, error):
    logged = len(live.log)
    assert _call(live, api, data) == ("error", error if error.startswith("Can't show") else PREFIX + error)
    assert "Traceback" not in live.log[logged:]


def test_the_train_button_by_fn_index_checks_the_same_limits(live):
    """The page itself calls its handlers by number, through the queue: the same check answers there."""
    dependencies = httpx.get(live.url + "/config", timeout=30).json()["dependencies"]
    fn_index = next(d["id"] for d in dependencies if d["api_name"] == "_animate")
    session = uuid.uuid4().hex
    join = {"data": [10000, 0.5, 0.1, "all points", 751], "fn_index": fn_index, "session_hash": session,
            "event_data": None, "trigger_id": None}
    assert httpx.post(live.url + "/gradio_api/queue/join", json=join, timeout=30).status_code == 200
    with httpx.stream("GET", live.url + "/gradio_api/queue/data", params={"session_hash": session}, timeout=60) as r:
        messages = (json.loads(line[len("data: "):]) for line in r.iter_lines() if line.startswith("data: "))
        done = next(m for m in messages if m["msg"] == "process_completed")
    assert not done["success"] and done["output"]["error"] == PREFIX + OVER


def test_only_sgd_predict_and_check_are_public_endpoints(client):
    assert set(client.view_api(return_format="dict", print_info=False)["named_endpoints"]) == {"/predict", "/check",
                                                                                               "/sgd"}


@pytest.mark.parametrize("settings,phrase", [
    (dict(learning_rate=0.1, batch_size=10), "Converged."),
    (dict(learning_rate=3.0, batch_size=None), "The loss exploded: this learning rate is too high."),
    (dict(learning_rate=1e-4, batch_size=None), "The line barely moves: this learning rate is too low."),
    (dict(learning_rate=0.01, batch_size=None), "The loss is still falling: train more epochs"),
    (dict(learning_rate=0.3, batch_size=1, noise=3), "The loss has stopped falling and jumps about"),
])
def test_each_outcome_gets_its_own_sentence(settings, phrase):
    assert phrase in sgd_tab._markdown(fit_line(**settings))


def test_train_animates_from_the_guess_to_the_verdict():
    frames = list(sgd_tab._animate(100, 0.5, 0.1, "10", 10))
    steps = [frame[1]["value"] for frame in frames]
    assert steps[0] == 0 and steps[-1] == 100 and steps == sorted(set(steps))
    assert len(frames) <= sgd_tab.FRAMES
    assert frames[0][2].startswith("Training: step 0 of 100") and frames[-1][2].startswith("**Converged.**")
    assert len(frames[-1][0].axes) == 2  # points and line, next to the loss curve
    assert frames[-1][3] == dict(n_points=100, noise=0.5, learning_rate=0.1, batch_size=10, epochs=10)
    assert list(sgd_tab._animate(50, 0.5, 0.1, "all points", 3))[-1][3]["batch_size"] is None


def test_the_step_slider_shows_that_step_of_the_run_on_screen():
    settings = dict(n_points=50, noise=0.5, learning_rate=0.1, batch_size=5, epochs=2)
    points, loss = sgd_tab._show_step(settings, 7).axes
    line = points.get_lines()[1].get_ydata()  # [true line, current line], at x = -1 and 1
    assert np.allclose(line, fit_line(**settings).params[7] @ [[-1, 1], [1, 1]])
    assert points.get_title() == "Step 7 of 20 (epoch 0.7)"


def test_page_settings_that_cannot_train_become_a_visitor_message():
    with pytest.raises(sgd_tab.gr.Error, match="epochs must be between 1 and 25,000, got 0"):
        list(sgd_tab._animate(100, 0.5, 0.1, "10", 0))


def test_every_handler_refuses_settings_over_the_budget_with_the_same_sentence():
    over = dict(n_points=10_000, noise=0.5, learning_rate=0.1, batch_size=None, epochs=751)
    handlers = {"sgd": lambda: sgd_tab.sgd(**over),
                "train": lambda: list(sgd_tab._animate(10_000, 0.5, 0.1, sgd_tab.ALL_POINTS, 751)),
                "step slider": lambda: sgd_tab._show_step(over, 0)}
    for name, handler in handlers.items():
        with pytest.raises(sgd_tab.gr.Error) as caught:
            handler()
        assert caught.value.message == PREFIX + OVER, name
        assert caught.value.print_exception is False  # a visitor's mistake, not the server's: no traceback


def test_the_step_slider_refuses_a_step_the_run_does_not_have():
    diverged = dict(n_points=100, noise=0.5, learning_rate=3.0, batch_size=None, epochs=30)  # stops early
    steps = fit_line(**diverged).steps
    assert sgd_tab._show_step(diverged, steps).axes[0].get_title().startswith(f"Step {steps} of {steps}")
    with pytest.raises(sgd_tab.gr.Error, match=f"Can't show step {steps + 1}: this run has whole steps from 0 to "):
        sgd_tab._show_step(diverged, steps + 1)  # not quietly the last step: the page never sends one past it


def test_the_page_longest_run_is_within_the_limits():
    points, noise, learning_rates, batches, epochs = sgd_tab._controls()
    smallest_batch = min(int(value) for _, value in batches.choices if value != sgd_tab.ALL_POINTS)
    checked = sgd.check_settings(points.maximum, noise.maximum, max(sgd_tab.LEARNING_RATES), smallest_batch,
                                 epochs.maximum)
    assert checked.steps == sgd.MAX_STEPS  # the page's longest run is what the step limit was set by


@pytest.fixture(scope="module")
def page(live, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(live.url, wait_until="networkidle")
    page.get_by_role("tab", name="How training works").click()
    yield page
    page.close()


def test_tab_opens_on_a_finished_run_with_its_explanation(page):
    assert page.get_by_text("Converged.", exact=True).is_visible()
    assert page.get_by_text("Architecture and parameters.").is_visible()
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "sgd_tab.png"), full_page=True)


def test_too_high_a_learning_rate_says_the_loss_exploded(page):
    page.get_by_label("Learning rate").click()
    page.get_by_role("option", name="3.0", exact=True).click()
    page.get_by_role("button", name="Train").click()
    page.get_by_text("The loss exploded: this learning rate is too high.").wait_for(timeout=60_000)
    page.screenshot(path=str(SCREENSHOTS / "sgd_tab_exploded.png"), full_page=True)
