"""The stand-in Hub, driven by the real huggingface_hub client: `python -m pytest tests/test_hub_server.py -q`."""

import hashlib
import json
import random
import re
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.hub_server import HARDWARE_REFUSAL_MESSAGE, SPACE_REFUSAL_MESSAGE, StandInHub

TOKEN = "hf_good"
MODEL = "alice/bears"
SPACE = "alice/bear-app"
BINARY = random.Random(0).randbytes(1_500_000)  # over 1 MB, and not text: the Hub stores it with LFS
NOTES = b"grizzly, black, teddy\n"


@pytest.fixture(autouse=True)
def _classic_lfs_client(monkeypatch):
    # huggingface_hub read HF_HUB_DISABLE_XET and HF_HUB_OFFLINE when it was first imported, perhaps by another
    # test module; these constants are what it consults on every call.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def hub():
    with StandInHub(tokens={TOKEN: "alice"}) as running:
        yield running


@pytest.fixture
def api(hub):
    return HfApi(endpoint=hub.endpoint, token=TOKEN)


@pytest.fixture
def model_folder(tmp_path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "notes.txt").write_bytes(NOTES)
    (folder / "model.bin").write_bytes(BINARY)
    return folder


@pytest.fixture
def published(api, model_folder) -> str:
    """Create the model repo and upload the folder; returns the commit sha."""
    api.create_repo(MODEL)
    return api.upload_folder(repo_id=MODEL, folder_path=model_folder, commit_message="Add model").oid


def _seen(hub: StandInHub) -> set[tuple[str, str, int]]:
    """(method, path, status) of each request, upload paths cut before their one-off ticket."""
    return {(r.method, re.sub(r"/lfs-upload/.*", "/lfs-upload/", r.path), r.status) for r in hub.requests}


def _sha256s(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_whoami_names_the_token_owner(api):
    assert api.whoami()["name"] == "alice"


def test_whoami_with_a_bad_token_is_401(hub):
    with pytest.raises(HfHubHTTPError) as raised:
        HfApi(endpoint=hub.endpoint, token="hf_bad").whoami()
    assert raised.value.response.status_code == 401


@pytest.mark.parametrize("private", [True, False])
def test_created_model_repo_keeps_its_visibility(hub, api, private):
    url = api.create_repo(MODEL, private=private)

    assert (url.repo_id, url.repo_type) == (MODEL, "model")
    assert api.model_info(MODEL).private is private
    assert hub.repo("model", MODEL).private is private
    anonymous = HfApi(endpoint=hub.endpoint, token=False)
    if private:
        with pytest.raises(RepositoryNotFoundError):
            anonymous.model_info(MODEL)
    else:
        assert anonymous.model_info(MODEL).sha == hub.commits("model", MODEL)[-1].oid


def test_creating_an_existing_repo_is_409_unless_exist_ok(api):
    first = api.create_repo(MODEL)

    with pytest.raises(HfHubHTTPError) as raised:
        api.create_repo(MODEL)
    assert raised.value.response.status_code == 409
    assert api.create_repo(MODEL, exist_ok=True) == first


def test_gradio_space_is_created_with_its_sdk(hub, api):
    url = api.create_repo(SPACE, repo_type="space", space_sdk="gradio")

    assert (url.repo_id, url.repo_type) == (SPACE, "space")
    assert api.space_info(SPACE).sdk == "gradio"
    assert b"sdk: gradio" in hub.files("space", SPACE)["README.md"]


def test_upload_folder_makes_one_commit_and_sends_the_binary_through_lfs(hub, api, published):
    commits = hub.commits("model", MODEL)

    assert [c.title for c in commits] == ["initial commit", "Add model"]
    assert commits[-1].oid == published
    assert commits[-1].added == ("model.bin", "notes.txt")
    assert hub.files("model", MODEL)["model.bin"] == BINARY
    assert {
        ("POST", f"/{MODEL}.git/info/lfs/objects/batch", 200),
        ("PUT", "/lfs-upload/", 200),
        ("POST", f"/{MODEL}.git/info/lfs/objects/verify", 200),
    } <= _seen(hub)
    siblings = {s.rfilename: s for s in api.model_info(MODEL, files_metadata=True).siblings}
    assert siblings["model.bin"].lfs.sha256 == hashlib.sha256(BINARY).hexdigest()
    assert siblings["notes.txt"].lfs is None


def test_uploading_unchanged_files_again_makes_no_commit(hub, api, model_folder, published):
    again = api.upload_folder(repo_id=MODEL, folder_path=model_folder, commit_message="Add model")

    assert again.oid == published
    assert len(hub.commits("model", MODEL)) == 2
    assert sum(r.method == "PUT" for r in hub.requests) == 1


def test_file_and_snapshot_downloads_at_a_commit_return_the_uploaded_bytes(hub, published, tmp_path):
    where = dict(revision=published, endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path / "cache")

    one_file = Path(hf_hub_download(MODEL, "model.bin", **where))
    snapshot = Path(snapshot_download(MODEL, **where))

    assert one_file.read_bytes() == BINARY
    assert {p.name: p.read_bytes() for p in snapshot.iterdir()} == hub.files("model", MODEL, rev=published)


def test_range_request_returns_the_tail_of_a_file(hub, published):
    url = f"{hub.endpoint}/{MODEL}/resolve/{published}/model.bin"
    request = urllib.request.Request(url, headers={"Range": "bytes=1000000-"})

    with urllib.request.urlopen(request) as response:
        assert response.status == 206
        assert response.read() == BINARY[1_000_000:]


def test_offline_snapshot_comes_from_the_cache_once_the_hub_is_gone(model_folder, tmp_path):
    hf_home = tmp_path / "hf"
    with StandInHub(tokens={TOKEN: "alice"}) as hub:
        api = HfApi(endpoint=hub.endpoint, token=TOKEN)
        api.create_repo(MODEL)
        sha = api.upload_folder(repo_id=MODEL, folder_path=model_folder).oid
        snapshot_download(MODEL, revision=sha, endpoint=hub.endpoint, token=TOKEN, cache_dir=hf_home / "hub")
        env = hub.client_env(hf_home, offline=True)
        port = int(hub.endpoint.rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)

    script = textwrap.dedent(
        """
        import hashlib, json, pathlib, sys
        from huggingface_hub import hf_hub_download, snapshot_download
        folder = pathlib.Path(snapshot_download(sys.argv[1], revision=sys.argv[2]))
        assert pathlib.Path(hf_hub_download(sys.argv[1], "model.bin", revision=sys.argv[2])).parent == folder
        print(json.dumps({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script, MODEL, sha], env=env, capture_output=True, timeout=60)

    assert done.returncode == 0, done.stderr.decode()
    offline = json.loads(done.stdout)
    assert {k: v for k, v in offline.items() if k != ".gitattributes"} == _sha256s(model_folder)


def test_space_variables_can_be_added_read_and_deleted(hub, api):
    api.create_repo(SPACE, repo_type="space", space_sdk="gradio")

    api.add_space_variable(SPACE, "MODEL_REPO", MODEL, description="model the app serves")

    variable = api.get_space_variables(SPACE)["MODEL_REPO"]
    assert (variable.value, variable.description) == (MODEL, "model the app serves")
    assert hub.variables(SPACE) == {"MODEL_REPO": MODEL}
    assert api.delete_space_variable(SPACE, "MODEL_REPO") == {}


@pytest.mark.parametrize("token", [False, "hf_bad"], ids=["no-token", "bad-token"])
def test_writing_without_a_valid_token_is_401(hub, api, token):
    api.create_repo(MODEL)
    outsider = HfApi(endpoint=hub.endpoint, token=token)

    for write in (
        lambda: outsider.create_repo("alice/other"),
        lambda: outsider.upload_file(path_or_fileobj=NOTES, path_in_repo="notes.txt", repo_id=MODEL),
    ):
        with pytest.raises(HfHubHTTPError) as raised:
            write()
        assert raised.value.response.status_code == 401
    assert len(hub.commits("model", MODEL)) == 1


def test_refused_space_creation_is_403_with_the_reason():
    with StandInHub(tokens={TOKEN: "alice"}, refuse_space_creation=True) as hub:
        api = HfApi(endpoint=hub.endpoint, token=TOKEN)

        with pytest.raises(HfHubHTTPError) as raised:
            api.create_repo(SPACE, repo_type="space", space_sdk="gradio")

        assert raised.value.response.status_code == 403
        assert SPACE_REFUSAL_MESSAGE.format(sdk="gradio") in str(raised.value)
        assert api.create_repo(MODEL).repo_id == MODEL  # only Spaces are refused


@pytest.mark.parametrize("paid", [False, True], ids=["free-account", "paying-account"])
def test_paid_space_hardware_needs_a_paying_account(paid):
    with StandInHub(tokens={TOKEN: "alice"}, paid_hardware=paid) as hub:
        api = HfApi(endpoint=hub.endpoint, token=TOKEN)
        api.create_repo(SPACE, repo_type="space", space_sdk="gradio")
        assert api.get_space_runtime(SPACE).requested_hardware == "cpu-basic"

        for ask in (lambda: api.request_space_hardware(SPACE, "t4-small"),
                    lambda: api.create_repo("alice/gpu-app", repo_type="space", space_sdk="gradio",
                                            space_hardware="t4-small")):
            if paid:
                ask()
            else:
                with pytest.raises(HfHubHTTPError, match=HARDWARE_REFUSAL_MESSAGE.format(hardware="t4-small")) as raised:
                    ask()
                assert raised.value.response.status_code == 403
        assert hub.repo("space", SPACE).hardware == ("t4-small" if paid else "cpu-basic")
        assert api.repo_exists("alice/gpu-app", repo_type="space") == paid


def test_dropped_upload_raises_and_leaves_the_repo_at_its_previous_commit(model_folder):
    with StandInHub(tokens={TOKEN: "alice"}, drop_upload_after_bytes=256 * 1024) as hub:
        api = HfApi(endpoint=hub.endpoint, token=TOKEN)
        api.create_repo(MODEL)
        before = hub.commits("model", MODEL)

        with pytest.raises(RuntimeError, match="model.bin") as raised:
            api.upload_folder(repo_id=MODEL, folder_path=model_folder)

        # The retry finds its upload URL spent: the client gives up after one backoff instead of five.
        assert raised.value.__cause__.response.status_code == 403
        assert hub.dropped_uploads == 1
        assert hub.commits("model", MODEL) == before
        assert not any(r.path.startswith("/api/models/alice/bears/commit/") for r in hub.requests)


@pytest.mark.parametrize(
    ("repo_id", "filename", "revision", "error"),
    [
        ("alice/nowhere", "notes.txt", "main", RepositoryNotFoundError),
        (MODEL, "missing.txt", "main", EntryNotFoundError),
        (MODEL, "notes.txt", "0" * 40, RevisionNotFoundError),
    ],
)
def test_missing_repo_file_or_revision_raise_the_clients_own_errors(
    hub, published, tmp_path, repo_id, filename, revision, error
):
    with pytest.raises(error):
        hf_hub_download(repo_id, filename, revision=revision, endpoint=hub.endpoint, cache_dir=tmp_path, token=TOKEN)


def test_an_upload_through_xet_is_refused_so_it_cannot_pass_unnoticed(hub, api, model_folder, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    api.create_repo(MODEL)

    with pytest.raises(Exception, match="xet-write-token"):
        api.upload_folder(repo_id=MODEL, folder_path=model_folder)

    assert ("GET", f"/api/models/{MODEL}/xet-write-token/main", 501) in _seen(hub)
    assert len(hub.commits("model", MODEL)) == 1
