"""`python -m training deploy` (training/hub/deploy.py) and `all --repo-id --space` against the stand-in Hub."""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys

import httpx
import pytest
import yaml
from gradio_client import Client, handle_file

from serving.model import Classifier
from tests.hub_server import HARDWARE_REFUSAL_MESSAGE, SPACE_REFUSAL_MESSAGE, StandInHub
from tests.live_app import ROOT, LiveApp, free_port
from tests.tiny_model import make_images

TOKEN = "hf_deployTestToken41c07e"
MODEL = "alice/tiny-shapes"
SPACE = "alice/tiny-shapes-demo"
GRADIO_PIN = re.search(r"^gradio==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M).group(1)
FAST = ["--no-pretrained", "--epochs", "1", "--size", "64", "--lr", "3e-3", "--min-per-label", "5", "--no-serve"]


def training(*args: str, env: dict, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def deploy_args(revision: str, *extra: str) -> list[str]:
    return ["deploy", "--space", SPACE, "--model-repo", MODEL, "--revision", revision, *extra]


def model_files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def front_matter(readme: bytes) -> dict:
    return yaml.safe_load(re.match(rb"^---\n(.*?)\n---\n", readme, re.S).group(1))


def logged_in(hf_home, token: str = TOKEN):
    """An HF_HOME holding a saved login, as `hf auth login` leaves it."""
    hf_home.mkdir(parents=True, exist_ok=True)
    (hf_home / "token").write_text(token)
    return hf_home


@pytest.fixture(scope="module")
def hub(tiny_model):
    """A Hub where alice has published the tiny model; `.published` is its commit."""
    with StandInHub(tokens={TOKEN: "alice"}) as running:
        running.create("model", MODEL)
        running.published = running.commit("model", MODEL, model_files(tiny_model.folder), "the model")
        yield running


@pytest.fixture(scope="module")
def deployed(hub, tmp_path_factory):
    """Deploy once, with the token from a saved login rather than HF_TOKEN."""
    done = training(*deploy_args(hub.published), env=hub.client_env(logged_in(tmp_path_factory.mktemp("hf"))))
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_deploy_uploads_the_app_serving_code_and_examples_in_one_commit(tiny_model, hub, deployed):
    assert deployed.stdout == f"{hub.endpoint}/spaces/{SPACE}\n"
    assert "token from your saved login" in deployed.stderr
    assert hub.repo("space", SPACE).sdk == "gradio"
    assert [c.title for c in hub.commits("space", SPACE)][:-1] == ["initial commit"]
    files = hub.files("space", SPACE)
    serving = {f"serving/{p.name}": p.read_bytes() for p in (ROOT / "serving").glob("*.py")}
    examples = {f"examples/{p.name}": p.read_bytes() for p in (tiny_model.folder / "examples").iterdir()}
    app = {name: (ROOT / name).read_bytes() for name in ("app.py", "requirements.txt")}
    assert {k: v for k, v in files.items() if k not in {"README.md", ".gitattributes"}} == app | serving | examples
    assert not any(name.startswith("training/") for name in files)


def test_space_front_matter_and_variables_pin_the_published_commit(hub, deployed):
    meta = front_matter(hub.files("space", SPACE)["README.md"])
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == GRADIO_PIN
    assert meta["python_version"] == "3.11" and meta["app_file"] == "app.py"
    assert meta["models"] == [MODEL] and meta["license"] == "apache-2.0"
    assert meta["title"] and meta["emoji"] and meta["colorFrom"] and meta["colorTo"]
    assert 0 < len(meta["short_description"]) <= 60 and "circle" in meta["short_description"]
    assert hub.variables(SPACE) == {"MODEL_REPO": MODEL, "MODEL_REVISION": hub.published}
    # The files the app reads from the model repo, at that commit, downloaded when the Space is built.
    read = {"config.json", "model.onnx", "model.int8.onnx", "novelty_features.npy"} & set(hub.files("model", MODEL))
    assert {"config.json", "model.onnx", "novelty_features.npy"} <= read
    assert meta["preload_from_hub"] == [f"{MODEL} {','.join(sorted(read))} {hub.published}"]


def test_a_restarted_space_starts_from_its_preloaded_files_without_the_hub(tiny_model, hub, deployed, tmp_path):
    space = _space_folder(hub, tmp_path / "space")
    [line] = front_matter(hub.files("space", SPACE)["README.md"])["preload_from_hub"]
    repo, files, sha = line.split(" ")
    # What the Space's build does with the line: each file into the Hub cache, at that commit.
    preload = ("import sys; from huggingface_hub import hf_hub_download; "
               "[hf_hub_download(sys.argv[1], f, revision=sys.argv[3]) for f in sys.argv[2].split(',')]")
    done = subprocess.run([sys.executable, "-c", preload, repo, files, sha], env=hub.client_env(tmp_path / "hf"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    # Then the Hub is unreachable (a port nothing listens on, not HF_HUB_OFFLINE): the app still starts and serves.
    env = {**hub.client_env(tmp_path / "hf"), **hub.variables(SPACE), "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    photo = sorted((tiny_model.folder / "examples").glob("*"))[0]
    with LiveApp(env, command=[sys.executable, str(space / "app.py")], cwd=space) as app:
        r = httpx.post(app.url + "/classify", files={"file": photo.open("rb")}, timeout=30)
    assert r.status_code == 200 and r.json()["label"] == max(Classifier.from_folder(tiny_model.folder).classify(
        photo).items(), key=lambda kv: kv[1])[0]


def _space_folder(hub, space):
    for name, data in hub.files("space", SPACE).items():
        (space / name).parent.mkdir(parents=True, exist_ok=True)
        (space / name).write_bytes(data)
    return space


def test_deploying_again_changes_nothing(hub, deployed, tmp_path):
    before, seen = len(hub.commits("space", SPACE)), len(hub.requests)
    again = training(*deploy_args(hub.published), env=hub.client_env(tmp_path, token=TOKEN))
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(hub.commits("space", SPACE)) == before
    # No commit and no variable rewritten: on the Hub each of those restarts the Space.
    writes = [r for r in hub.requests[seen:] if r.method == "POST" and r.path.endswith(("/variables", "/commit/main"))]
    assert writes == []


def test_serving_code_never_imports_training():
    sources = [ROOT / "app.py", *sorted((ROOT / "serving").glob("*.py"))]
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "training" or n.startswith("training.") for n in names), f"{path} imports {names}"


def test_the_space_runs_from_its_own_files_alone(tiny_model, hub, deployed, tmp_path):
    space = _space_folder(hub, tmp_path / "space")
    # The page shows the Space's examples/ (next to app.py), where deploy put the model's: an image added there shows.
    shutil.copy(sorted((tiny_model.folder / "examples").glob("*"))[0], space / "examples" / "only-in-the-space.jpg")
    # As the Space runs it: its own folder first on sys.path, its variables in the environment, and `training`
    # unimportable, so any import of it, however lazy, fails.
    launch = (f"import runpy, sys; sys.path[0] = {str(space)!r}; sys.modules['training'] = None; "
              f"import serving; assert serving.__file__.startswith({str(space)!r}), serving.__file__; "
              f"runpy.run_path({str(space / 'app.py')!r}, run_name='__main__')")
    env = {**hub.client_env(tmp_path / "hf"), **hub.variables(SPACE)}
    photo = sorted((tiny_model.folder / "examples").glob("*"))[0]
    with LiveApp(env, command=[sys.executable, "-c", launch]) as app:
        answer = httpx.post(app.url + "/classify", files={"file": photo.open("rb")}, timeout=30).json()
        snippet = re.search(r"```python\n(.*?)```", hub.files("space", SPACE)["README.md"].decode(), re.S).group(1)
        assert f'Client("{SPACE}")' in snippet and 'api_name="/predict"' in snippet
        label = Client(app.url, verbose=False).predict(handle_file(str(photo)), api_name="/predict")
        page = httpx.get(app.url + "/config", timeout=10).text
    assert f"{MODEL}@{hub.published[:7]}" in page  # it serves the pinned commit
    assert "only-in-the-space.jpg" in page
    want = Classifier.from_folder(tiny_model.folder).classify(photo)
    assert answer["confidences"] == pytest.approx(want, abs=1e-6)
    assert label["label"] == max(want, key=want.get)


def test_dry_run_writes_exactly_the_space_files_and_contacts_nobody(tiny_model, hub, deployed, tmp_path):
    seen, out = len(hub.requests), tmp_path / "space"
    done = training(*deploy_args(hub.published, "--dry-run", "--out", str(out), "--model-dir", str(tiny_model.folder)),
                    env=hub.client_env(tmp_path / "hf"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert model_files(out) == {k: v for k, v in hub.files("space", SPACE).items() if k != ".gitattributes"}
    assert len(hub.requests) == seen


def test_a_branch_is_refused_unless_allowed(tiny_model, tmp_path):
    with StandInHub(tokens={TOKEN: "alice"}) as hub:
        hub.create("model", MODEL)
        hub.commit("model", MODEL, model_files(tiny_model.folder))
        env = hub.client_env(tmp_path / "hf", token=TOKEN)
        refused = training(*deploy_args("main"), env=env)
        assert refused.returncode == 2 and "not a full 40-character commit sha" in refused.stderr
        assert hub.requests == []
        allowed = training(*deploy_args("main", "--allow-branch"), env=env)
        assert allowed.returncode == 0, allowed.stderr[-3000:]
        assert hub.variables(SPACE)["MODEL_REVISION"] == "main"
        missing = training(*deploy_args("0" * 40), env=env)
        assert missing.returncode == 2 and f"has no revision {'0' * 40}" in missing.stderr


def test_feedback_repo_becomes_a_space_variable_and_the_token_it_needs_is_named(tiny_model, tmp_path):
    with StandInHub(tokens={TOKEN: "alice"}) as hub:
        hub.create("model", MODEL)
        published = hub.commit("model", MODEL, model_files(tiny_model.folder))
        env = hub.client_env(tmp_path / "hf", token=TOKEN)
        done = training(*deploy_args(published, "--feedback-repo", "alice/shapes-feedback"), env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert hub.variables(SPACE) == {"MODEL_REPO": MODEL, "MODEL_REVISION": published,
                                        "FEEDBACK_REPO": "alice/shapes-feedback"}
        assert "token with write access" in done.stderr and "Space secret HF_TOKEN" in done.stderr
        assert hub.repo("space", SPACE).secrets == {}  # never the deployer's own token
        bad = training(*deploy_args(published, "--feedback-repo", "no-slash"), env=env)
        assert bad.returncode == 2 and "--feedback-repo" in bad.stderr


@pytest.mark.parametrize("refusal, extra, message", [
    ({"refuse_space_creation": True}, [], SPACE_REFUSAL_MESSAGE.format(sdk="gradio")),
    ({}, ["--hardware", "t4-small"], HARDWARE_REFUSAL_MESSAGE.format(hardware="t4-small")),
], ids=["space-creation", "paid-hardware"])
def test_a_refusal_says_why_and_what_the_options_are(tiny_model, tmp_path, refusal, extra, message):
    with StandInHub(tokens={TOKEN: "alice"}, **refusal) as hub:
        hub.create("model", MODEL)
        sha = hub.commit("model", MODEL, model_files(tiny_model.folder))
        done = training(*deploy_args(sha, *extra), env=hub.client_env(tmp_path / "hf", token=TOKEN))
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert message in done.stderr and "cpu-basic" in done.stderr and "payment method" in done.stderr
        with pytest.raises(KeyError):
            hub.repo("space", SPACE)  # nothing half-made


def test_the_token_is_never_printed_nor_written(tiny_model, tmp_path):
    with StandInHub(tokens={TOKEN: "alice"}) as hub:
        env = hub.client_env(tmp_path / "hf", token=TOKEN)
        runs = [training("-v", "publish", tiny_model.folder, "--repo-id", MODEL, env=env)]
        sha = runs[0].stdout.strip()
        runs += [training("-v", *deploy_args(sha), env=env),
                 training("-v", "publish", tiny_model.folder, "--repo-id", MODEL, "--dry-run", "--out",
                          tmp_path / "dry-model", env=env),
                 training("-v", *deploy_args(sha, "--dry-run", "--out", str(tmp_path / "dry-space"), "--model-dir",
                                             str(tiny_model.folder)), env=env)]
        assert [r.returncode for r in runs] == [0, 0, 0, 0], runs[-1].stderr[-2000:]
        stored = [f.content for kind, repo in (("model", MODEL), ("space", SPACE))
                  for c in hub.commits(kind, repo) for f in c.tree.values()]
        stored += [repr(hub.repo("space", SPACE).variables).encode(), repr(hub.repo("space", SPACE).secrets).encode()]
    secret = TOKEN.encode()
    assert all(secret not in (r.stdout + r.stderr).encode() for r in runs)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 20  # the two dry runs at least: there is something to search
    assert [p for p in written if secret in p.read_bytes()] == []
    assert all(secret not in blob for blob in stored)


def test_all_trains_publishes_and_deploys_the_published_commit(tmp_path):
    photos = make_images(tmp_path / "photos", per_label=8) / "images"
    with StandInHub(tokens={TOKEN: "alice"}) as hub:
        done = training("all", "--from-folder", photos, "--data", tmp_path / "data", "--out", tmp_path / "model",
                        *FAST, "--repo-id", MODEL, "--space", SPACE, "--private",
                        env=hub.client_env(tmp_path / "hf", token=TOKEN), timeout=400)
        assert done.returncode == 0, done.stderr[-3000:]
        assert hub.repo("model", MODEL).private and hub.repo("space", SPACE).private
        assert "is private: the Space can download it only with a token" in done.stderr
        head = hub.commits("model", MODEL)[-1]
        assert len(hub.commits("model", MODEL)) == 2
        assert hub.files("model", MODEL)["model.onnx"] == (tmp_path / "model" / "model.onnx").read_bytes()
        assert hub.variables(SPACE) == {"MODEL_REPO": MODEL, "MODEL_REVISION": head.oid}
        assert front_matter(hub.files("space", SPACE)["README.md"])["models"] == [MODEL]
        card = hub.files("model", MODEL)["README.md"].decode()
    assert f'Client("{SPACE}")' in card  # the card names the demo
    assert "- Data: folder images." in card and str(tmp_path) not in card  # not the author's directories
