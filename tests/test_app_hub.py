"""app.py pulling its model from a (stand-in) Hub at a pinned revision, then starting offline from the cache."""
from __future__ import annotations

import json

import httpx
import pytest

from serving.model import MODEL_FILES
from tests.hub_server import StandInHub
from tests.live_app import LiveApp
from tests.test_app import served_precision

REPO = "alice/tiny-shapes"


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
