"""`python -m training review` in headless Chromium: delete one image, relabel another, undo the relabel."""
from __future__ import annotations

import random
import shutil
import subprocess
import sys
from dataclasses import astuple
from pathlib import Path

from tests.conftest import SCREENSHOTS
from tests.live_app import ROOT, LiveApp
from training.data.manifest import read_manifest


def _review_command(model: Path, data: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "training", "review", str(model), "--data", str(data), "--port", str(port)]


def _row(data: Path, url: str) -> tuple[str, ...]:
    """(label, url, status, reason, file) of the manifest row for url (its source aside: the data stage's own)."""
    return astuple(next(r for r in read_manifest(data / "manifest.csv") if r.url == url))[:5]


def test_delete_relabel_and_undo_on_the_page(browser, tiny_model, tmp_path):
    data = Path(shutil.copytree(tiny_model.data, tmp_path / "data"))
    app = LiveApp({})
    app.command = _review_command(tiny_model.folder, data, app.port)
    with app:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(app.url)  # not "networkidle": the queue keeps a stream open while the cards load
        cards = page.locator(".review-card")
        cards.first.wait_for(timeout=30_000)
        assert "No image has changed since the model was trained" in page.locator("#changed").inner_text()
        assert f"open http://127.0.0.1:{app.port}" in app.log and "share=True" not in app.log

        first, second = [cards.nth(i).get_attribute("id").removeprefix("card-") + ".jpg" for i in (0, 1)]
        cards.first.get_by_role("button", name="Delete").click()
        page.locator("#status").get_by_text("Deleted").wait_for(timeout=30_000)
        page.locator(f"#card-{Path(first).stem}").wait_for(state="detached", timeout=30_000)

        page.locator(f"#card-{Path(second).stem} .move input").click()
        page.get_by_role("option", name="square").click()
        page.locator("#status").get_by_text("Moved").wait_for(timeout=30_000)
        page.locator(f"#card-{Path(second).stem}").wait_for(state="detached", timeout=30_000)
        assert "2 images changed since the model was trained" in page.locator("#changed").inner_text()
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "review_page.png"), full_page=True)

        deleted, moved = f"images/circle/{first}", f"images/circle/{second}"
        assert not (data / deleted).exists() and (data / "trash" / deleted).is_file()
        assert not (data / moved).exists() and (data / "images/square" / second).is_file()
        assert _row(data, deleted)[2:] == ("rejected", "removed_by_review", f"trash/{deleted}")
        assert _row(data, moved) == ("square", moved, "kept", "relabelled", f"images/square/{second}")

        second_page = subprocess.run(_review_command(tiny_model.folder, data, app.port + 1), cwd=ROOT,
                                     capture_output=True, text=True, timeout=120)
        assert second_page.returncode == 2 and "Traceback" not in second_page.stderr
        assert f"in use by the review page on http://127.0.0.1:{app.port}" in second_page.stderr

        page.locator("#undo").click()
        page.locator("#status").get_by_text("Undone").wait_for(timeout=30_000)
        page.locator(f"#card-{Path(second).stem}").wait_for(timeout=30_000)  # back among the circles
        assert "1 image changed since the model was trained" in page.locator("#changed").inner_text()
        assert (data / moved).is_file() and not (data / "images/square" / second).exists()
        assert _row(data, moved) == ("circle", moved, "kept", "", moved)
        assert (data / "trash" / deleted).is_file() and _row(data, deleted)[3] == "removed_by_review"
        page.screenshot(path=str(SCREENSHOTS / "review_page_after_undo.png"), full_page=True)


def test_visitors_photos_come_first_and_keep_puts_one_under_the_visitors_label(browser, tiny_model, tmp_path):
    from serving.feedback import FeedbackStore
    from serving.model import Classifier
    from tests.tiny_model import draw_shape
    from training.cli import main

    data = Path(shutil.copytree(tiny_model.data, tmp_path / "data"))
    store, clf = FeedbackStore(tmp_path / "sent", "alice/shapes@abc1234"), Classifier.from_folder(tiny_model.folder)
    photo = tmp_path / "upload.png"
    draw_shape("square", random.Random(1)).save(photo)
    row = store.add(photo, clf.judge(photo), "square")
    assert main(["data", "--from-feedback", str(tmp_path / "sent"), "--data", str(data)]) == 0
    pending = next(r.file for r in read_manifest(data / "manifest.csv") if r.status == "pending_review")
    app = LiveApp({})
    app.command = _review_command(tiny_model.folder, data, app.port)
    with app:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(app.url)
        card = page.locator(f"#card-{Path(pending).stem}")
        card.wait_for(timeout=30_000)  # the pending filter is the one shown first
        assert page.get_by_label("pending feedback").is_checked()
        assert "the visitor says square" in card.inner_text()
        assert f"the app's model said {row['predicted']}" in card.inner_text()
        card.get_by_role("button", name="Keep").click()
        page.locator("#status").get_by_text("Kept").wait_for(timeout=30_000)
        card.wait_for(state="detached", timeout=30_000)
        page.locator("#no-cards").get_by_text("No visitors' photos are waiting").wait_for(timeout=30_000)
    name = Path(pending).name
    assert (data / "images" / "square" / name).is_file() and not (data / pending).exists()
    assert _row(data, next(r.url for r in read_manifest(data / "manifest.csv") if r.source == "feedback"))[2:] == (
        "kept", "kept_by_review", f"images/square/{name}")
