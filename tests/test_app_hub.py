"""app.py pulling its model from a (stand-in) Hub at a pinned revision, then starting offline from the cache."""
from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from serving.model import MODEL_FILES
from tests.hub_server import StandInHub
from tests.live_app import ROOT, LiveApp
from tests.test_app import served_precision

REPO = "alice/tiny-shapes"
TOKEN = "hf_appHubTestToken51c0"


def _model_files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _resolves(hub: StandInHub, name: str) -> int:
    return sum(1 for r in hub.requests if r.method == "GET" and "/resolve/" in r.path
               and r.path.split("?")[0].endswith(f"/{name}") and 0 < r.status < 400)


@pytest.mark.parametrize("setting", ["auto", "float32"])
def test_app_downloads_the_pinned_revision_once_then_starts_offline(tiny_model, tmp_path, setting):
    example = sorted((tiny_model.folder / "examples").glob("*"))[0]
    served = served_precision(json.loads((tiny_model.folder / "config.json").read_text())) \
        if setting == "auto" else setting
    with StandInHub() as hub:
        hub.create("model", REPO)
        pinned = hub.commit("model", REPO, _model_files(tiny_model.folder), "the model we want")
        # a later commit on main must not be what the app serves
        hub.commit("model", REPO, {"config.json": b"{}"}, "a broken later commit")
        env = {**hub.client_env(tmp_path / "hf"), "MODEL_REPO": REPO, "MODEL_REVISION": pinned,
               "SERVE_PRECISION": setting}
        with LiveApp(env) as app:
            r = httpx.post(app.url + "/classify", files={"file": example.open("rb")}, timeout=30)
            assert r.status_code == 200, r.text
            page = httpx.get(app.url + "/config", timeout=10).text
            assert f"{REPO}@{pinned[:7]}" in page
        # Only the model that serves is downloaded: a Space with an int8 model fetches a quarter of the bytes.
        assert r.json()["precision"] == served
        assert _resolves(hub, MODEL_FILES[served]) == 1
        assert _resolves(hub, MODEL_FILES["int8" if served == "float32" else "float32"]) == 0
        assert _resolves(hub, "export.pkl") == 0  # the ONNX path never fetches the pickle
        online_answer = r.json()

    # The Hub is gone: the cached snapshot must be enough.
    env = {**hub.client_env(tmp_path / "hf", offline=True), "MODEL_REPO": REPO, "MODEL_REVISION": pinned,
           "SERVE_PRECISION": setting}
    with LiveApp(env) as app:
        r = httpx.post(app.url + "/classify", files={"file": example.open("rb")}, timeout=30)
        assert r.json() == online_answer


def test_unknown_repo_exits_with_a_message(tmp_path):
    with StandInHub() as hub:
        env = {**hub.client_env(tmp_path / "hf"), "MODEL_REPO": "alice/nope", "MODEL_REVISION": "main"}
        with pytest.raises(RuntimeError, match="was not found on the Hub"):
            with LiveApp(env, startup_timeout=60):
                pass


def test_a_repo_pushed_with_push_to_hub_fastai_is_served_through_fastai(tiny_model, tmp_path):
    """push_to_hub_fastai writes model.pkl, pyproject.toml and a README: no export.pkl, no model.onnx."""
    example = sorted((tiny_model.folder / "examples").glob("*"))[0]
    push = ("import sys; from fastai.learner import load_learner; from huggingface_hub import push_to_hub_fastai; "
            "print(push_to_hub_fastai(load_learner(sys.argv[1]), repo_id=sys.argv[2]).oid)")
    with StandInHub(tokens={TOKEN: "alice"}) as hub:
        done = subprocess.run([sys.executable, "-c", push, str(tiny_model.folder / "export.pkl"), REPO], cwd=ROOT,
                              env=hub.client_env(tmp_path / "push", token=TOKEN), capture_output=True, text=True,
                              timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        assert set(hub.files("model", REPO)) == {"model.pkl", "pyproject.toml", "README.md", ".gitattributes"}
        env = {**hub.client_env(tmp_path / "hf"), "MODEL_REPO": REPO, "MODEL_REVISION": done.stdout.strip()}
        with LiveApp(env) as app:
            r = httpx.post(app.url + "/classify", files={"file": example.open("rb")}, timeout=60)
            assert r.status_code == 200, r.text
            assert set(r.json()["confidences"]) == {"circle", "square", "triangle"}
        assert _resolves(hub, "model.pkl") == 1 and _resolves(hub, "README.md") == 0  # only what it serves


def test_a_repo_without_a_model_names_the_files_it_found(tmp_path):
    with StandInHub() as hub:
        hub.create("model", REPO)
        sha = hub.commit("model", REPO, {"notes.txt": b"nothing to serve", "weights.bin": b"\0" * 10})
        env = {**hub.client_env(tmp_path / "hf"), "MODEL_REPO": REPO, "MODEL_REVISION": sha}
        with pytest.raises(RuntimeError) as err:
            with LiveApp(env, startup_timeout=60):
                pass
    message = str(err.value)
    assert "holds no model to serve" in message and "notes.txt" in message and "weights.bin" in message
    assert "python -m training train" not in message and "python -m training publish" in message
