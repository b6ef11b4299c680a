"""app.py in headless Chromium: upload an example or pick one, submit, read the top label off the page.

The README's screenshot comes from the first test: `UPDATE_SCREENSHOT=1 python -m pytest tests/test_app_browser.py`
rewrites docs/app.png (otherwise it goes to tests/artifacts/ only, so a test run changes no tracked file).
"""
from __future__ import annotations

import io
import os

from PIL import Image

from serving.model import Classifier
from tests.conftest import SCREENSHOTS
from tests.live_app import ROOT, LiveApp

README_SHOT = ROOT / "docs" / "app.png"
MAX_SHOT_BYTES = 150_000  # the README's picture stays small in the repository


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
        _save_readme_shot(page, SCREENSHOTS / "app.png")
        if os.environ.get("UPDATE_SCREENSHOT"):
            _save_readme_shot(page, README_SHOT)
        assert top == max(probs, key=probs.get)
        for label in probs:
            assert page.get_by_test_id(f"{label}-confidence-set").is_visible()


def test_an_example_image_can_be_picked_and_classified(browser, tiny_model):
    _, probs = _first_example(tiny_model)
    with LiveApp({"MODEL_DIR": str(tiny_model.folder)}) as app:
        # The first of the model's example images, shown in the same order.
        _, top = _submit(browser, app, lambda page: page.locator(".gallery-item").first.click())
        assert top == max(probs, key=probs.get)


def _save_readme_shot(page, path) -> None:
    """The page down to the examples, at a laptop's width, in 64 colours: a README picture of a few dozen KB."""
    box = page.locator(".gallery-item").last.bounding_box()
    png = page.screenshot(clip={"x": 0, "y": 0, "width": 1280, "height": box["y"] + box["height"] + 24})
    shot = Image.open(io.BytesIO(png)).convert("RGB")
    shot = shot.resize((shot.width * 3 // 4, shot.height * 3 // 4), Image.Resampling.LANCZOS)
    shot.quantize(64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def test_the_readme_screenshot_is_a_small_png_of_the_page():
    """docs/app.png, made by the test above, is what the README shows; it must stay a small PNG."""
    assert "](docs/app.png)" in (ROOT / "README.md").read_text()
    with Image.open(README_SHOT) as shot:
        assert shot.format == "PNG" and shot.width >= 800
    assert README_SHOT.stat().st_size < MAX_SHOT_BYTES
