"""Shared fixtures. Every server here listens on 127.0.0.1 only: tests never reach the network."""
import atexit
import os
import shutil
import tempfile

# Before anything imports gradio: a test run must not phone home.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
# The models onnxruntime optimizes (serving/model.py) go to a folder of this run's own, not the machine's.
os.environ["ORT_CACHE_DIR"] = tempfile.mkdtemp(prefix="ort-cache-")
atexit.register(shutil.rmtree, os.environ["ORT_CACHE_DIR"], ignore_errors=True)

import pytest  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from tests.image_server import ImageServer  # noqa: E402
from tests.live_app import ROOT  # noqa: E402
from tests.tiny_model import tiny_model  # noqa: E402,F401  (the session's one trained tiny model)

# Debian's Chromium, driven by Playwright (never `playwright install`: it downloads a browser).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = ROOT / "tests" / "artifacts"  # kept after the run (git-ignored) so a person can look


@pytest.fixture(scope="session")
def image_server():
    """One loopback image server for the whole run; tests that count hits call reset() first."""
    with ImageServer() as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium for one test module. Not per session: Playwright's sync API keeps an event loop
    running in the main thread while it is open, which would break tests that call asyncio.run()."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-background-networking"])
        yield browser
        browser.close()
