"""`python -m training all` (training/pipeline.py) as a real command: stages run, skip when up to date, serve."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys

import httpx
import pytest

from tests.live_app import ROOT, LiveApp
from tests.tiny_model import make_images

FAST = ["--no-pretrained", "--epochs", "1", "--size", "64", "--batch-size", "16", "--lr", "3e-3",
        "--min-per-label", "5"]


def _all(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", "all", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("photos"), per_label=12) / "images"


def test_all_runs_each_stage_then_skips_what_is_up_to_date(photos, tmp_path):
    shutil.copytree(photos, tmp_path / "photos")  # a copy: this test adds a photo
    args = ["--from-folder", str(tmp_path / "photos"), "--data", str(tmp_path / "data"),
            "--out", str(tmp_path / "model"), "--no-serve", *FAST]
    first = _all(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "data: 36 of 36 inputs kept" in first.stderr and "trained resnet18" in first.stderr
    assert f"to serve it: MODEL_DIR={tmp_path / 'model'} python app.py" in first.stderr
    assert "img/s" not in first.stderr and "clean:" not in first.stderr  # no progress bars into a file
    onnx = tmp_path / "model" / "model.onnx"
    made = onnx.stat().st_mtime_ns

    again = _all(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "data: " in again.stderr and "is up to date" in again.stderr
    assert "train: " in again.stderr and "skipping" in again.stderr and "trained resnet18" not in again.stderr
    assert onnx.stat().st_mtime_ns == made

    with socket.socket() as taken:  # app.py cannot listen there: `all` must not report success
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        served = _all(*[a for a in args if a != "--no-serve"],
                      env={**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": port})
    assert served.returncode == 2 and "app.py stopped with exit code" in served.stderr, served.stderr[-3000:]

    changed = _all(*[a if a != "16" else "8" for a in args])  # --batch-size 8: another model, only training reruns
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert "data: " in changed.stderr and "up to date" in changed.stderr and "trained resnet18" in changed.stderr

    shutil.copy(next((tmp_path / "photos").glob("circle/*.jpg")), tmp_path / "photos" / "circle" / "new.jpg")
    grown = _all(*[a if a != "16" else "8" for a in args])  # the same settings, a new photo in the folder
    assert grown.returncode == 0, grown.stderr[-3000:]
    assert "data: 36 of 37 inputs kept" in grown.stderr and "trained resnet18" in grown.stderr


def test_all_serves_what_it_trained(photos, tmp_path):
    command = [sys.executable, "-m", "training", "all", "--from-folder", str(photos), "--data", str(tmp_path / "d"),
               "--out", str(tmp_path / "m"), *FAST]
    with LiveApp({}, command=command, startup_timeout=400) as app:
        example = next(photos.glob("circle/*.jpg"))
        r = httpx.post(app.url + "/classify", files={"file": example.open("rb")}, timeout=30)
        assert r.status_code == 200 and set(r.json()["confidences"]) == {"circle", "square", "triangle"}
        os.killpg(app.proc.pid, signal.SIGINT)  # Ctrl-C, the way the log says to stop serving
        assert app.proc.wait(timeout=60) == 0, app.log[-3000:]
        assert "stopped serving" in app.log and "ERROR" not in app.log


def test_all_offline_stops_at_search_with_a_clear_message(tmp_path):
    out = _all("--data", str(tmp_path / "bears"), "--no-serve", timeout=300)
    assert out.returncode == 2
    assert "image search for 'grizzly bear' failed" in out.stderr and "--urls" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "bears" / "images").exists()
