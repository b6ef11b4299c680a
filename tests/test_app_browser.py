"""app.py in headless Chromium: upload an example or pick one, submit, read the top label off the page, all under
the app's Content-Security-Policy without a single violation; and the page in a frame, where a Space's is allowed.

The README's screenshot comes from the first test: `UPDATE_SCREENSHOT=1 python -m pytest tests/test_app_browser.py`
rewrites docs/app.png (otherwise it goes to tests/artifacts/ only, so a test run changes no tracked file).
"""
from __future__ import annotations

import io
import json
import os
import shutil

from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from serving.model import Classifier
from tests.conftest import SCREENSHOTS
from tests.live_app import ROOT, LiveApp

README_SHOT = ROOT / "docs" / "app.png"
MAX_SHOT_BYTES = 150_000  # the README's picture stays small in the repository


# Every Content-Security-Policy violation on the page, as the browser reports it to the page.
WATCH_CSP = ("window.cspViolations = []; document.addEventListener('securitypolicyviolation', "
             "e => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sample}`))")


def _submit(browser, app, choose_photo):
    """Open the page, choose a photo with choose_photo(page), submit; the page and its top label once shown. Fails
    on any Content-Security-Policy violation meanwhile (the app's headers are on: see test_app_hostile.py)."""
    page = browser.new_page()
    console = []
    page.on("console", lambda message: console.append(message.text))
    page.add_init_script(WATCH_CSP)
    page.goto(app.url, wait_until="networkidle")
    assert "script-src" in page.evaluate("fetch('/').then(r => r.headers.get('content-security-policy') || '')")
    choose_photo(page)
    page.get_by_role("button", name="Submit").click()
    top = page.get_by_test_id("label-output-value")
    top.wait_for(timeout=30_000)
    violations = page.evaluate("window.cspViolations") + [m for m in console if "Content Security Policy" in m]
    assert violations == [], violations
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


def test_a_photo_of_none_of_the_labels_gets_the_sentence_and_an_example_does_not(browser, tiny_model, tmp_path):
    """The page's part: the sentence shows when the check says "none of these", and goes for an example. The
    threshold is set here between the two images' scores (a copy of the folder): how training calibrates it is
    tests/train/test_novelty.py's."""
    example, _ = _first_example(tiny_model)
    noise = tmp_path / "noise.png"
    Image.effect_noise((96, 96), 90).convert("RGB").save(noise)
    clf = Classifier.from_folder(tiny_model.folder)
    near, far = clf.judge(example).novelty, clf.judge(noise).novelty
    assert far > near, (near, far)  # the premise: noise is further from the shapes than one of them
    folder = tmp_path / "model"
    shutil.copytree(tiny_model.folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["novelty"]["threshold"] = (near + far) / 2
    (folder / "config.json").write_text(json.dumps(config))
    # The float model, whose threshold this sets (auto serves int8 on a CPU with VNNI, with a threshold of its own).
    with LiveApp({"MODEL_DIR": str(folder), "SERVE_PRECISION": "float32"}) as app:
        page, _ = _submit(browser, app, lambda page: page.locator("input[type=file]").first.set_input_files(str(noise)))
        note = page.locator("#none-of-these")
        expect(note).to_contain_text("This doesn't look like the circle, square or triangle photos", timeout=15_000)
        # The example in its place (no Clear, which would empty the sentence by itself): the sentence goes.
        page.locator("input[type=file]").first.set_input_files(str(example))
        page.get_by_role("button", name="Submit").click()
        expect(note).not_to_contain_text("doesn't look like", timeout=30_000)
        expect(page.get_by_test_id("label-output-value")).to_have_text(max(clf.classify(example),
                                                                           key=clf.classify(example).get))


def test_on_a_space_huggingface_co_may_show_the_page_in_a_frame_and_no_other_site(browser, tiny_model):
    """A Space's page on huggingface.co shows the app in a frame, so there (SPACE_ID set) it may; any other site is
    refused by the page's frame-ancestors. Both sites are pages this test serves in the browser itself."""
    with LiveApp({"MODEL_DIR": str(tiny_model.folder), "SPACE_ID": "you/demo"}) as app:
        shown = {}
        for site in ("https://huggingface.co/spaces/you/demo", "https://elsewhere.example/"):
            # Chromium asks before a public site's frame opens a loopback address (Local Network Access): granted.
            page = browser.new_context(permissions=["local-network-access"]).new_page()
            console = []
            page.on("console", lambda message, console=console: console.append(message.text))
            page.route(site, lambda route: route.fulfill(
                content_type="text/html", body=f'<iframe src="{app.url}/" width="1000" height="800"></iframe>'))
            page.goto(site)
            frame = page.frames[1]
            try:
                frame.get_by_text("What is in this photo?").first.wait_for(timeout=15_000)
                shown[site] = True
            except PlaywrightTimeout:
                shown[site] = False
                assert any("frame-ancestors" in m for m in console), console
            page.context.close()
    assert shown == {"https://huggingface.co/spaces/you/demo": True, "https://elsewhere.example/": False}


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
