"""`python -m training publish` (training/hub/publish.py) against the stand-in Hub, run as the real command."""
from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from huggingface_hub import ModelCard, constants, snapshot_download

from serving.model import Classifier
from tests.hub_server import StandInHub
from tests.live_app import ROOT
from tests.tiny_model import half_transparent, make_images
from training.config import Config
from training.hub.publish import TORCHVISION_BASE_MODELS, _limitations, base_model, model_card

TOKEN = "hf_publishTestToken7f3a9c"
REPO = "alice/tiny-shapes"
SHA = re.compile(r"[0-9a-f]{40}")


def publish(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", "publish", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)


def expected_files(folder) -> dict[str, str]:
    """What publish must upload from a model folder made by `train`, besides README.md and pyproject.toml: repo path
    -> the local file's path in the folder (the learner, export.pkl, goes up as model.pkl)."""
    wanted = ["model.onnx", "model.int8.onnx", "config.json", "novelty_features.npy", "report/*.png",
              "report/metrics.json", "report/report.md", "report/history.csv", "examples/*"]
    files = {p.relative_to(folder).as_posix(): p.relative_to(folder).as_posix()
             for pattern in wanted for p in folder.glob(pattern)}
    return {**files, "model.pkl": "export.pkl"}


@pytest.fixture(autouse=True)
def _classic_client(monkeypatch):
    # In-process downloads: huggingface_hub read these when first imported, perhaps by another test module.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="module")
def hub():
    with StandInHub(tokens={TOKEN: "alice"}) as running:
        yield running


@pytest.fixture(scope="module")
def published(tiny_model, hub, tmp_path_factory):
    """Publish the tiny model once: (completed process, commit sha)."""
    done = publish(tiny_model.folder, "--repo-id", REPO, env=hub.client_env(tmp_path_factory.mktemp("hf"), token=TOKEN))
    assert done.returncode == 0, done.stderr[-3000:]
    return done, done.stdout.strip()


@pytest.fixture(scope="module")
def card(hub, published, tmp_path_factory) -> ModelCard:
    path = tmp_path_factory.mktemp("card") / "README.md"
    path.write_bytes(hub.files("model", REPO)["README.md"])
    return ModelCard.load(path)


def test_publish_uploads_the_model_folder_and_its_card_in_one_commit(tiny_model, hub, published):
    done, sha = published
    assert SHA.fullmatch(sha) and done.stdout == sha + "\n"  # the sha alone on stdout, for scripts
    commits = hub.commits("model", REPO)
    assert [c.title for c in commits[:-1]] == ["initial commit"] and commits[-1].oid == sha
    files = hub.files("model", REPO)
    assert set(files) == set(expected_files(tiny_model.folder)) | {"README.md", "pyproject.toml", ".gitattributes"}
    for name, local in expected_files(tiny_model.folder).items():
        assert files[name] == (tiny_model.folder / local).read_bytes(), name
    assert hub.repo("model", REPO).commits[-1].tree["model.onnx"].lfs  # binaries went through LFS
    assert f"/{REPO}/tree/{sha}" in done.stderr  # the URL is logged


def test_publishing_again_with_nothing_new_makes_no_commit(tiny_model, hub, published, tmp_path):
    again = publish(tiny_model.folder, "--repo-id", REPO, env=hub.client_env(tmp_path, token=TOKEN))
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.strip() == published[1] == hub.commits("model", REPO)[-1].oid
    assert len(hub.commits("model", REPO)) == 2


def test_card_metadata_has_what_the_hub_indexes(tiny_model, card):
    accuracy = json.loads((tiny_model.folder / "config.json").read_text())["metrics"]["accuracy"]
    data = card.data
    assert data.library_name == "fastai" and data.pipeline_tag == "image-classification"
    assert {"fastai", "image-classification", "onnx"} <= set(data.tags)
    assert data.license == "apache-2.0"
    results = {r.metric_type: r for r in data.eval_results}
    assert set(results) == {"accuracy"}  # error_rate is no Hub metric id, and accuracy says it
    assert results["accuracy"].metric_value == pytest.approx(accuracy, abs=1e-4)
    assert data.base_model is None  # the tiny model is trained from random weights
    assert results["accuracy"].dataset_split == "validation" and results["accuracy"].task_type == "image-classification"


def test_card_body_documents_the_model(tiny_model, card):
    config = Classifier.from_folder(tiny_model.folder).config
    text = card.text
    for label, m in config["metrics"]["per_class"].items():
        cells = ["–" if m[k] is None else f"{m[k]:.2f}" for k in ("precision", "recall", "f1")]
        assert f"| {label} | {' | '.join(cells)} | {m['support']} |" in text
    assert "](report/confusion_matrix.png)" in text
    assert f"fine_tune({config['training']['epochs']})" in text and "learning rate 0.01" in text
    assert f"seed {config['seed']}" in text and config["arch"] in text
    assert "| circle | 20 |" in text  # images per label
    assert "Intended use and limitations" in text and "1 image more or less" not in text
    # the tiny model's images are generated, not searched: the card does not speak of an image search
    assert not config["dataset"]["summary"]["source"].startswith("image search")
    assert "It knows only its training images" in text and "search" not in text.lower()
    assert "A " + config["arch"] + " trained from random weights" in text
    assert f"| fastai | {config['versions']['fastai']} |" in text
    for snippet in ("load_learner(hf_hub_download", "from_pretrained_fastai(", "ort.InferenceSession",
                    "Classifier.from_folder"):
        assert snippet in text
    # No Space was named: no placeholder client that fails when pasted; where to find the Spaces instead.
    assert "Client(" not in text and "YOUR-" not in text and f'"Spaces using {REPO}"' in text
    assert "pickles" in text and "only from repos you trust" in text and "`model.onnx` runs no code" in text
    # Which model serves, and why: the int8 check's figures as config.json has them.
    assert "## Int8 model" in text and config["int8"]["reason"] in text and "**It may serve**" in text


def test_limitations_speak_of_the_search_when_the_images_were_searched():
    config = {"labels": ["grizzly", "black"], "metrics": {"valid_images": 40},
              "dataset": {"summary": {"source": "image search (ddgs): '{label} bear'"}}}
    text = _limitations(config)
    assert "Biases of web-scraped data" in text and "the search query" in text and "same search" in text
    assert "2.5 percentage points" in text


def test_the_pushed_model_classifies_like_the_local_folder(tiny_model, hub, published, tmp_path):
    folder = snapshot_download(REPO, revision=published[1], endpoint=hub.endpoint, cache_dir=tmp_path, token=False)
    remote, local = Classifier.from_folder(folder), Classifier.from_folder(tiny_model.folder)
    images = sorted((tiny_model.folder / "examples").glob("*")) + sorted((tiny_model.data / "images").glob("*/*"))[:6]
    got, want = remote.classify_batch(images), local.classify_batch(images)
    assert remote.labels == local.labels
    np.testing.assert_allclose([list(p.values()) for p in got], [list(p.values()) for p in want], atol=1e-6)


@pytest.mark.parametrize("heading, transparent", [("### onnxruntime", False), ("### onnxruntime", True),
                                                 ("### fastai", False)])
def test_the_cards_snippets_run_and_agree_with_the_app(tiny_model, hub, card, tmp_path, heading, transparent):
    code = re.search(re.escape(heading) + r".*?```python\n(.*?)```", card.text, re.S).group(1)
    photo = sorted((tiny_model.folder / "examples").glob("*"))[0]
    if transparent:  # the app puts transparency on white, as training did; the snippet must too
        half_transparent(photo).save(tmp_path / "clear.png")
        photo = tmp_path / "clear.png"
    if heading == "### fastai":
        code += "print(dict(zip(learn.dls.vocab, probs.tolist())))\n"
    done = subprocess.run([sys.executable, "-c", code.replace("photo.jpg", str(photo))], cwd=tmp_path,
                          env=hub.client_env(tmp_path / "hf"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    want = Classifier.from_folder(tiny_model.folder).classify(photo)
    assert printed.keys() == want.keys()
    assert np.allclose(list(printed.values()), list(want.values()), atol=1e-3)


def test_dry_run_writes_exactly_the_upload_and_contacts_nobody(tiny_model, hub, published, tmp_path):
    seen = len(hub.requests)
    out = tmp_path / "upload"
    # No token at all: a dry run needs none.
    done = publish(tiny_model.folder, "--repo-id", REPO, "--dry-run", "--out", out, env=hub.client_env(tmp_path / "hf"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == ""
    written = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    pushed = {k: v for k, v in hub.files("model", REPO).items() if k != ".gitattributes"}
    assert written == pushed
    assert len(hub.requests) == seen

    again = publish(tiny_model.folder, "--repo-id", REPO, "--dry-run", "--out", out,
                    env=hub.client_env(tmp_path / "hf"))
    assert again.returncode == 2 and "not an empty folder" in again.stderr  # never clears a folder


def test_without_a_token_it_stops_before_contacting_the_hub(tiny_model, tmp_path):
    with StandInHub(tokens={TOKEN: "alice"}) as hub:
        done = publish(tiny_model.folder, "--repo-id", REPO, env=hub.client_env(tmp_path / "hf"))
        assert hub.requests == []
    assert done.returncode == 2
    assert "no Hugging Face token" in done.stderr and "hf auth login" in done.stderr and "HF_TOKEN" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_refused_token_is_reported_and_not_echoed(tiny_model, tmp_path):
    wrong = "hf_wrongTokenDoNotPrint123"
    with StandInHub(tokens={TOKEN: "alice"}) as hub:
        done = publish(tiny_model.folder, "--repo-id", REPO, env=hub.client_env(tmp_path / "hf", token=wrong))
        assert [(r.method, r.path, r.status) for r in hub.requests] == [("GET", "/api/whoami-v2", 401)]
    assert done.returncode == 2
    assert "refused the token from HF_TOKEN (401" in done.stderr and "settings/tokens" in done.stderr
    assert wrong not in done.stderr + done.stdout and "Traceback" not in done.stderr


def test_a_namespace_that_is_not_yours_is_refused_before_uploading(tiny_model, hub, tmp_path):
    done = publish(tiny_model.folder, "--repo-id", "bob/shapes", env=hub.client_env(tmp_path / "hf", token=TOKEN))
    assert done.returncode == 2 and "alice cannot write to bob/shapes" in done.stderr
    assert "alice/shapes" in done.stderr  # the fix


def test_private_is_not_silently_ignored_for_an_existing_public_repo(tiny_model, hub, published, tmp_path):
    env = hub.client_env(tmp_path / "hf", token=TOKEN)
    done = publish(tiny_model.folder, "--repo-id", REPO, "--private", env=env)
    assert done.returncode == 2 and f"{REPO} already exists and is public" in done.stderr
    assert hub.commits("model", REPO)[-1].oid == published[1]


def test_all_with_a_bad_token_stops_before_building_the_dataset(tmp_path):
    photos = make_images(tmp_path / "photos", per_label=3) / "images"
    with StandInHub(tokens={TOKEN: "alice"}) as hub:
        done = subprocess.run(
            [sys.executable, "-m", "training", "all", "--from-folder", str(photos), "--data", str(tmp_path / "data"),
             "--out", str(tmp_path / "model"), "--no-serve", "--repo-id", REPO],
            cwd=ROOT, env=hub.client_env(tmp_path / "hf", token="hf_nope"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "401" in done.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "model").exists()


def test_an_interrupted_upload_leaves_the_previous_commit_and_a_rerun_finishes(tiny_model, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model.folder, folder)
    with StandInHub(tokens={TOKEN: "alice"}) as hub:
        env = hub.client_env(tmp_path / "hf", token=TOKEN)
        first = publish(folder, "--repo-id", REPO, env=env)
        assert first.returncode == 0, first.stderr[-3000:]
        before = first.stdout.strip()
        (folder / "export.pkl").write_bytes((folder / "export.pkl").read_bytes() + b"retrained")  # a new model

        hub.drop_upload_after_bytes = 64 * 1024
        broken = publish(folder, "--repo-id", REPO, env=env)
        assert broken.returncode == 2 and hub.dropped_uploads >= 1
        assert f"unchanged at its previous commit {before[:7]}" in broken.stderr and "rerun" in broken.stderr
        assert "Traceback" not in broken.stderr
        assert hub.commits("model", REPO)[-1].oid == before and len(hub.commits("model", REPO)) == 2

        hub.drop_upload_after_bytes = None
        rerun = publish(folder, "--repo-id", REPO, env=env)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        commits = hub.commits("model", REPO)
        assert [c.oid for c in commits[1:]] == [before, rerun.stdout.strip()]
        assert commits[-1].added == ("model.pkl",)  # only what changed
        assert hub.files("model", REPO)["model.pkl"] == (folder / "export.pkl").read_bytes()


def test_the_hubs_fastai_snippet_loads_the_published_learner(tiny_model, hub, published, card, tmp_path):
    """The model page's "Use this model" for library_name: fastai, run as a user would, against the stand-in Hub."""
    code = re.search(r"```python\n(from huggingface_hub import from_pretrained_fastai\n.*?)```", card.text, re.S)[1]
    photo = sorted((tiny_model.folder / "examples").glob("*"))[0]
    code += f"print(dict(zip(learn.dls.vocab, learn.predict({str(photo)!r})[2].tolist())))\n"
    seen = len(hub.requests)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=hub.client_env(tmp_path / "hf"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    want = Classifier.from_folder(tiny_model.folder).classify(photo)
    assert np.allclose([printed[k] for k in want], list(want.values()), atol=1e-3)
    # It downloads the whole repo, each file once; the card says how much that is.
    fetched = [r.path.split("/resolve/")[1].split("/", 1)[1] for r in hub.requests[seen:]
               if r.method == "GET" and "/resolve/" in r.path and r.status == 200]
    files = hub.files("model", REPO)
    assert sorted(fetched) == sorted(files)
    whole = sum(len(files[name]) for name in expected_files(tiny_model.folder))
    assert f"downloads every file in the repo, {whole / 1e6:.1f} MB" in card.text


def test_pyproject_names_the_versions_that_trained_the_model(tiny_model, hub, published):
    import toml  # what from_pretrained_fastai parses it with (huggingface_hub[fastai])

    versions = json.loads((tiny_model.folder / "config.json").read_text())["versions"]
    requires = toml.loads(hub.files("model", REPO)["pyproject.toml"].decode())["build-system"]["requires"]
    assert {f"python={versions['python']}", f"fastai={versions['fastai']}", f"fastcore={versions['fastcore']}"} <= \
        set(requires)


@pytest.mark.parametrize("config, want", [
    ({"arch": "resnet18", "pretrained": True}, "timm/resnet18.tv_in1k"),
    ({"arch": "resnet34", "pretrained": True}, "timm/resnet34.tv_in1k"),
    ({"arch": "resnet50", "pretrained": True}, "timm/resnet50.tv2_in1k"),
    ({"arch": "resnet10t", "pretrained": True}, "timm/resnet10t.c3_in1k"),  # timm's default tag for the name
    ({"arch": "convnext_tiny.fb_in1k", "pretrained": True}, "timm/convnext_tiny.fb_in1k"),
    ({"arch": "resnet50", "pretrained": False}, None),
    ({"arch": "resnet18"}, None),
])
def test_base_model_names_the_weights_training_started_from(config, want):
    assert base_model(config) == want


@pytest.mark.parametrize("arch", sorted(TORCHVISION_BASE_MODELS))
def test_torchvision_base_models_are_the_weights_fastai_loads(arch):
    """fastai's resnets load torchvision's weights='DEFAULT' (fastai/vision/learner.py _resnet_meta); the timm repo
    named must hold those very weights: its pretrained_cfg downloads the same torchvision file."""
    import torchvision
    from timm.models import get_pretrained_cfg

    default = torchvision.models.get_model_weights(arch).DEFAULT
    assert get_pretrained_cfg(TORCHVISION_BASE_MODELS[arch].removeprefix("timm/")).url == default.url


def test_the_card_offers_the_named_spaces_client():
    cfg = Config(repo_id=REPO, space="alice/shapes-demo")
    text = model_card({"labels": ["a", "b"], "arch": "resnet18"}, cfg, ["model.onnx", "config.json"])
    assert 'Client("alice/shapes-demo")' in text and "Spaces using" not in text
