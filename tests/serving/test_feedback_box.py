"""The page's "Wrong?" box (serving/feedback_box.py) in headless Chromium: nothing shown before a prediction, nothing
kept before Send, one row and one photo after it, and the box gone with Clear."""
from __future__ import annotations

import json

from playwright.sync_api import expect

from serving.model import Classifier
from tests.live_app import LiveApp
from tests.test_app_browser import WATCH_CSP


def _rows(folder):
    return [json.loads(line) for f in sorted((folder / "rows").glob("*.jsonl")) for line in f.read_text().splitlines()]


def test_wrong_then_none_of_these_then_send_keeps_the_photo_and_its_row(browser, tiny_model, tmp_path):
    example = sorted((tiny_model.folder / "examples").glob("*"))[0]
    predicted = Classifier.from_folder(tiny_model.folder).judge(example).label
    folder = tmp_path / "feedback"
    with LiveApp({"MODEL_DIR": str(tiny_model.folder), "FEEDBACK_DIR": str(folder),
                  "SERVE_PRECISION": "float32"}) as app:
        page = browser.new_page()
        page.add_init_script(WATCH_CSP)
        page.goto(app.url, wait_until="networkidle")
        box = page.locator("#feedback").first  # (Gradio gives a group's id to two nested elements)
        expect(box).to_be_hidden()  # no "Wrong?" before a prediction
        page.locator("input[type=file]").first.set_input_files(str(example))
        page.get_by_role("button", name="Submit").click()
        expect(page.get_by_test_id("label-output-value")).to_have_text(predicted, timeout=30_000)
        expect(box).to_be_visible(timeout=10_000)
        expect(page.locator("#feedback-notice")).to_contain_text("The photo will be kept")
        assert _rows(folder) == [] and not any((folder / "images").iterdir())  # nothing kept before Send
        page.locator("#feedback-answer").get_by_text("none of these").click()
        page.locator("#feedback-send").click()
        expect(page.locator("#feedback-status")).to_contain_text("Thank you!", timeout=30_000)
        rows = _rows(folder)
        assert len(rows) == 1 and rows[0]["visitor_label"] is None and rows[0]["predicted"] == predicted
        assert (folder / rows[0]["image"]).is_file()
        page.get_by_role("button", name="Clear").click()
        expect(box).to_be_hidden(timeout=10_000)
        assert page.evaluate("window.cspViolations") == []
