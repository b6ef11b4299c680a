"""app.py in headless Chromium: upload an example, submit, read the top label off the page."""
from __future__ import annotations

from serving.model import Classifier
from tests.conftest import SCREENSHOTS
from tests.live_app import LiveApp


def test_upload_submit_and_read_the_top_label(browser, tiny_model):
    example = sorted((tiny_model.folder / "examples").glob("*"))[0]
    probs = Classifier.from_folder(tiny_model.folder).classify(example)
    with LiveApp({"MODEL_DIR": str(tiny_model.folder)}) as app:
        page = browser.new_page()
        page.goto(app.url, wait_until="networkidle")
        page.locator("input[type=file]").first.set_input_files(str(example))
        page.get_by_role("button", name="Submit").click()
        top = page.get_by_test_id("label-output-value")
        top.wait_for(timeout=30_000)
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "app_prediction.png"), full_page=True)
        assert top.inner_text().strip() == max(probs, key=probs.get)
        for label in probs:
            assert page.get_by_test_id(f"{label}-confidence-set").is_visible()


def test_an_example_image_can_be_picked_and_classified(browser, tiny_model):
    example = sorted((tiny_model.folder / "examples").glob("*"))[0]
    probs = Classifier.from_folder(tiny_model.folder).classify(example)
    with LiveApp({"MODEL_DIR": str(tiny_model.folder)}) as app:
        page = browser.new_page()
        page.goto(app.url, wait_until="networkidle")
        page.locator(".gallery-item").first.click()  # the first of the model's example images
        page.get_by_role("button", name="Submit").click()
        top = page.get_by_test_id("label-output-value")
        top.wait_for(timeout=30_000)
        assert top.inner_text().strip() == max(probs, key=probs.get)
