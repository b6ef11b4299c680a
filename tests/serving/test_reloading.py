"""`gradio app.py` (serving/reloading.py): an edit is served without a restart, and the rest of the app stays."""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import httpx
from gradio_client import Client, handle_file

from tests.live_app import ROOT, LiveApp, gradio_call

GRADIO = [sys.executable, "-c", "from gradio.cli import cli; cli()"]  # the `gradio` command, of this Python


def _title(url: str) -> str:
    return httpx.get(url + "/config", timeout=10).json()["title"]


def test_gradio_app_py_reloads_an_edit_and_keeps_classify_and_the_limits(tiny_model, tmp_path):
    # A copy of what a Space holds, so the edit touches no file of the repo.
    shutil.copy(ROOT / "app.py", tmp_path / "app.py")
    shutil.copytree(ROOT / "serving", tmp_path / "serving", ignore=shutil.ignore_patterns("__pycache__", "*.pyi"))
    example = sorted((tiny_model.folder / "examples").glob("*"))[0]
    env = {"MODEL_DIR": str(tiny_model.folder), "MAX_UPLOAD_MB": "1"}
    with LiveApp(env, command=[*GRADIO, "app.py"], cwd=tmp_path) as app:
        assert _title(app.url) == "What is in this photo?"
        time.sleep(1.1)  # the watcher compares modification times, which may have a 1 s resolution
        source = Path(tmp_path / "app.py")
        source.write_text(source.read_text().replace('TITLE = "What is in this photo?"', 'TITLE = "Edited title"'))
        deadline = time.monotonic() + 30
        while _title(app.url) != "Edited title" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _title(app.url) == "Edited title", app.log[-3000:]
        assert "Edited title" in httpx.get(app.url + "/", timeout=10).text

        # The same server: /classify, the body cap, the headers, and the new page's API all answer as before.
        r = httpx.post(app.url + "/classify", files={"file": example.open("rb")}, timeout=30)
        assert r.status_code == 200 and r.json()["label"] in {"circle", "square", "triangle"}
        big = httpx.post(app.url + "/classify", files={"file": ("big.jpg", b"\0" * 1_500_000)}, timeout=30)
        assert big.status_code == 413 and big.json()["reason"] == "too_large"
        assert "frame-ancestors" in httpx.get(app.url + "/", timeout=10).headers["content-security-policy"]
        client = Client(app.url, verbose=False)
        assert client.predict(handle_file(str(example)), api_name="/predict")["label"] == r.json()["label"]
        with httpx.Client(timeout=30) as http:  # an image on the server named instead of an upload: still refused
            stream = gradio_call(http, app.url, {"path": str(example.resolve()), "meta": {"_type": "gradio.FileData"}})
        assert "event: error" in stream and "confidences" not in stream, stream
        assert app.log.count("INFO:serving.model:loaded ") == 1  # the model was not loaded again
