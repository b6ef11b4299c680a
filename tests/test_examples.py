"""examples/: each way of using a deployed model, run as its docstring says, against a live app or the stand-in Hub."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from serving.model import Classifier
from tests.hub_server import StandInHub
from tests.live_app import ROOT, LiveApp

TOKEN = "hf_examplesTestToken9b2e"
REPO = "alice/tiny-shapes"


@pytest.fixture(scope="module")
def photo(tiny_model):
    return sorted((tiny_model.folder / "examples").glob("*"))[0]


@pytest.fixture(scope="module")
def want(tiny_model, photo) -> dict[str, float]:
    return Classifier.from_folder(tiny_model.folder).classify(photo)


@pytest.fixture(scope="module")
def live(tiny_model):
    # float32, the model `want` runs: these examples are about the APIs, not about which model serves.
    with LiveApp({"MODEL_DIR": str(tiny_model.folder), "SERVE_PRECISION": "float32"}) as app:
        yield app


@pytest.fixture(scope="module")
def published(tiny_model, tmp_path_factory):
    """The tiny model published with `python -m training publish`: (hub, commit sha)."""
    with StandInHub(tokens={TOKEN: "alice"}) as hub:
        env = hub.client_env(tmp_path_factory.mktemp("hf"), token=TOKEN)
        done = subprocess.run([sys.executable, "-m", "training", "publish", str(tiny_model.folder), "--repo-id", REPO],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        yield hub, done.stdout.strip()


def run(*command: str, env: dict | None = None) -> dict[str, float]:
    done = subprocess.run(list(command), cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_gradio_client_example(live, photo, want):
    got = run(sys.executable, "examples/gradio_client_predict.py", live.url, str(photo))
    assert list(got) == sorted(want, key=want.get, reverse=True)[:3]
    assert got == pytest.approx({k: want[k] for k in got}, abs=1e-6)


def test_curl_example(live, photo, want):
    got = run("sh", "examples/classify.sh", live.url + "/", str(photo))
    assert got["label"] == max(want, key=want.get) and got["confidences"] == pytest.approx(want, abs=1e-6)


def test_curl_example_fails_on_a_refused_image(live, tmp_path):
    (tmp_path / "notes.txt").write_text("not a photo")
    done = subprocess.run(["sh", "examples/classify.sh", live.url, str(tmp_path / "notes.txt")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 22 and json.loads(done.stdout)["reason"] == "not_image"


def test_onnx_example_downloads_only_the_onnx_model(published, photo, want, tmp_path):
    hub, sha = published
    seen = len(hub.requests)
    got = run(sys.executable, "examples/onnx_from_hub.py", REPO, str(photo), "--revision", sha,
              env=hub.client_env(tmp_path / "hf"))
    assert got == pytest.approx(want, abs=1e-5)
    fetched = {r.path.rsplit("/", 1)[-1] for r in hub.requests[seen:] if r.method == "GET" and "/resolve/" in r.path}
    assert fetched == {"config.json", "model.onnx"}


@pytest.mark.parametrize("whole", [False, True], ids=["load_learner", "from_pretrained_fastai"])
def test_fastai_example(published, photo, want, tmp_path, whole):
    hub, sha = published
    got = run(sys.executable, "examples/fastai_from_hub.py", REPO, str(photo), "--revision", sha,
              *(["--whole-repo"] if whole else []), env=hub.client_env(tmp_path / "hf"))
    assert got == pytest.approx(want, abs=1e-3)
