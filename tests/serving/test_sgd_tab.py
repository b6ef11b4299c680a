"""The "How training works" tab: /sgd through gradio_client and plain HTTP against app.py, the page's
sentences and animation, and the tab in headless Chromium (screenshots in tests/artifacts/)."""
from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from serving import sgd_tab
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


@pytest.mark.parametrize("learning_rate,loss_is_null", [(3.0, False), (1e300, True)])
def test_sgd_endpoint_reports_an_exploding_loss(client, learning_rate, loss_is_null):
    out = client.predict(learning_rate=learning_rate, batch_size=None, epochs=30, api_name="/sgd")
    assert out["verdict"] == "diverging" and "too high" in out["message"]
    assert out["steps"] < 30 and (out["loss"] is None) == loss_is_null  # JSON has no infinity: null


@pytest.mark.parametrize("settings,message", [
    (dict(batch_size=0), "batch_size must be at least 1 (or None for all points), got 0."),
    (dict(epochs=-1), "epochs must be at least 1, got -1."),
    (dict(n_points=1), "n_points must be between 2 and 10,000, got 1."),
    (dict(learning_rate="fast"), "learning_rate must be a number, got 'fast'."),
    (dict(n_points=10_000, batch_size=1, epochs=50), "over the limit of 200,000: use fewer epochs"),
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
    call = live.url + "/gradio_api/call/sgd"
    r = httpx.post(call, content=f'{{"data": {body}}}', headers={"content-type": "application/json"}, timeout=30)
    events = httpx.get(f"{call}/{r.json()['event_id']}", timeout=30).text
    assert "event: error" in events
    error = json.loads(events.split("data: ", 1)[1].splitlines()[0])["error"]
    assert error == PREFIX + message


def test_only_sgd_and_predict_are_public_endpoints(client):
    assert set(client.view_api(return_format="dict", print_info=False)["named_endpoints"]) == {"/predict", "/sgd"}


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
    with pytest.raises(sgd_tab.gr.Error, match="epochs must be at least 1"):
        list(sgd_tab._animate(100, 0.5, 0.1, "10", 0))


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
