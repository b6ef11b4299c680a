"""app.py in headless Chromium: upload an example or pick one, submit, read the top label off the page."""
from __future__ import annotations

from serving.model import Classifier
from tests.conftest import SCREENSHOTS
from tests.live_app import LiveApp


def _submit(browser, app, choose_photo):
    """Open the page, choose a photo with choose_photo(page), submit; the page and its top label once shown."""
    page = browser.new_page()
    page.goto(app.url, wait_until="networkidle")
    choose_photo(page)
    page.get_by_role("button", name="Submit").click()
    top = page.get_by_test_id("label-output-value")
    top.wait_for(timeout=30_000)
    return page, top.inner_text().strip()


def _first_example(tiny_model):
    """The model's first example image and the label the model gives it."""
    example = sorted((tiny_model.folder / "examples").glob("*"))[0]
    probs = Classifier.from_folder(tiny_model.folder).classify(example)
    return example, probs


def test_upload_submit_and_read_the_top_label(browser, tiny_model):
    example, probs = _first_example(tiny_model)
    with LiveApp({"MODEL_DIR": str(tiny_model.folder)}) as app:
        page, top = _submit(browser, app, lambda page: page.locator("input[type=file]").first.set_input_files(
            str(example)))
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "app_prediction.png"), full_page=True)
        assert top == max(probs, key=probs.get)
        for label in probs:
            assert page.get_by_test_id(f"{label}-confidence-set").is_visible()


def test_an_example_image_can_be_picked_and_classified(browser, tiny_model):
    _, probs = _first_example(tiny_model)
    with LiveApp({"MODEL_DIR": str(tiny_model.folder)}) as app:
        # The first of the model's example images, shown in the same order.
        _, top = _submit(browser, app, lambda page: page.locator(".gallery-item").first.click())
        assert top == max(probs, key=probs.get)
