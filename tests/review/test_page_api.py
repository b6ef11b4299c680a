"""`python -m training review`'s HTTP API driven the way a hostile visitor would (issue #15).

One real review page on a free loopback port serves every test of this module. The attacks go through
Gradio's own endpoints: /gradio_api/call/<api_name> for buttons and undo, /gradio_api/queue/join for a
"Move to" menu (its chosen value is event data, which only that endpoint takes), after a render through the
queue to learn the cards' endpoints, just as the page's JavaScript does. Raw requests with a foreign Host or
Origin stand for a DNS-rebinding page and for another site's page. A refused attack must change nothing, so
the data folder, and the folders around it, are compared whole before and after.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.live_app import LiveApp, free_port
from tests.review.conftest import tree
from training.review.state import open_review

FOREIGN = "evil.example"


class PageApi:
    """One visitor session on the review page, talking to it over HTTP only."""

    def __init__(self, url: str):
        self.url, self.http, self.session = url, httpx.Client(timeout=60), uuid.uuid4().hex
        config = self.http.get(f"{url}/config").json()
        by_target = {d["targets"][0][0]: d for d in config["dependencies"] if d["targets"]}
        ids = {c["props"].get("elem_id"): c["id"] for c in config["components"]}
        self.undo_api = by_target[ids["undo"]]["api_name"]
        self.render_fn = next(d["id"] for d in config["dependencies"] if d.get("render_id") is not None)

    def render(self, label: str = "circle", split: str = "valid") -> dict[str, dict[str, dict]]:
        """Draw the cards; {original: {"Keep" / "Delete" / "Move": the dependency it triggers}}."""
        output = self.join(self.render_fn, [label, split, 0])
        assert output["success"], output
        rc = output["output"]["render_config"]
        components = {c["id"]: c for c in rc["components"]}
        by_target = {d["targets"][0][0]: d for d in rc["dependencies"]}
        cards = {}
        for node in _nodes(rc["layout"]):
            if components[node["id"]]["props"].get("elem_id", "").startswith("card-"):
                inside = [components[n["id"]] for n in _nodes(node)]
                menu = next(c for c in inside if c["type"] == "dropdown")
                original = re.fullmatch(r"move-(.+)-\d+", menu["props"]["key"])[1]
                cards[original] = {"Move" if c["type"] == "dropdown" else c["props"]["value"]: by_target[c["id"]]
                                   for c in inside if c["id"] in by_target}
        return cards

    def call(self, api_name: str, data: list) -> tuple[str, object]:
        """POST /gradio_api/call/<api_name>, then read the result: ("complete", data) or ("error", message)."""
        posted = self.http.post(f"{self.url}/gradio_api/call/{api_name}",
                                json={"data": data, "session_hash": self.session})
        assert posted.status_code == 200, posted.text
        text = self.http.get(f"{self.url}/gradio_api/call/{api_name}/{posted.json()['event_id']}").text
        event = re.findall(r"^event: (\w+)$", text, re.MULTILINE)[-1]
        return event, json.loads(re.findall(r"^data: (.*)$", text, re.MULTILINE)[-1])

    def join(self, fn_index: int, data: list, event_data: dict | None = None) -> dict:
        """POST /gradio_api/queue/join and read the session's stream up to this event's process_completed."""
        joined = self.http.post(f"{self.url}/gradio_api/queue/join",
                                json={"data": data, "fn_index": fn_index, "session_hash": self.session,
                                      "event_data": event_data})
        assert joined.status_code == 200, joined.text
        event_id = joined.json()["event_id"]
        with self.http.stream("GET", f"{self.url}/gradio_api/queue/data",
                              params={"session_hash": self.session}) as stream:
            for line in stream.iter_lines():
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("msg") == "process_completed" and message.get("event_id") == event_id:
                    return message
        raise AssertionError(f"no answer to event {event_id}")

    def move(self, dependency: dict, label: object) -> dict:
        """Pick `label` in a card's "Move to" menu, as its select event reports it."""
        return self.join(dependency["id"], [0], {"index": 0, "value": label})


def _nodes(node: dict):
    yield node
    for child in node.get("children", []):
        yield from _nodes(child)


@pytest.fixture(scope="module")
def page(tiny_model, tmp_path_factory):
    """The review page on a copy of the tiny model's data, with folders beside it that a label could name."""
    root = tmp_path_factory.mktemp("hostile")
    data = Path(shutil.copytree(tiny_model.data, root / "data"))
    for name in ("outside", "abs"):
        (root / name).mkdir()
    open_review(tiny_model.folder, data).close()  # draws and saves the split here, so the page starts quickly
    app = LiveApp({})
    app.command = [sys.executable, "-m", "training", "review", str(tiny_model.folder), "--data", str(data),
                   "--port", str(app.port)]
    with app:
        app.root, app.data = root, data
        yield app


@pytest.mark.parametrize("label", ["../../outside", "ABS", ".", "..", "", "circle/../square", None, ["square"]])
def test_move_to_anything_but_a_label_is_refused_and_changes_nothing(page, label):
    label = str(page.root / "abs") if label == "ABS" else label  # an absolute path to a folder that exists
    api = PageApi(page.url)
    original, actions = next(iter(api.render("circle").items()))
    before = tree(page.root)
    answer = api.move(actions["Move"], label)
    assert not answer["success"] and "Traceback" not in json.dumps(answer)
    assert answer["output"]["error"] == (f"{label!r:.80} is not one of this dataset's labels, so nothing was "
                                         "changed: move images to circle, square, triangle")
    assert tree(page.root) == before and (page.data / original).is_file()


def test_a_move_to_a_label_and_its_undo_leave_the_data_folder_as_it_was(page):
    api = PageApi(page.url)
    before = tree(page.data)
    original, actions = next(iter(api.render("circle").items()))
    answer = api.move(actions["Move"], "square")
    assert answer["success"], answer
    assert (page.data / "images" / "square" / Path(original).name).is_file()
    assert api.call(api.undo_api, [])[0] == "complete"
    assert {p: v for p, v in tree(page.data).items() if p not in ("review.csv", "manifest.csv")} == \
        {p: v for p, v in before.items() if p not in ("review.csv", "manifest.csv")}


def test_undo_of_a_delete_leaves_no_folder_it_made(page):
    api = PageApi(page.url)
    before = {p: v for p, v in tree(page.data).items() if p not in ("review.csv", "manifest.csv")}
    original, actions = next(iter(api.render("square").items()))
    event, _ = api.call(actions["Delete"]["api_name"], [])
    assert event == "complete" and (page.data / "trash" / original).is_file()
    assert api.call(api.undo_api, [])[0] == "complete"
    assert {p: v for p, v in tree(page.data).items() if p not in ("review.csv", "manifest.csv")} == before
    assert not (page.data / "trash").exists()


def test_the_page_serves_no_file_of_the_data_folder_but_its_images(page):
    image = next((page.data / "images" / "circle").glob("*.jpg"))
    with httpx.Client(base_url=page.url, timeout=30) as http:
        assert http.get(f"/gradio_api/file={image}").content == image.read_bytes()
        for name in ("summary.json", "review_split.json", "images/../summary.json"):
            assert http.get(f"/gradio_api/file={page.data}/{name}").status_code == 403


@pytest.mark.parametrize("host", [FOREIGN, f"{FOREIGN}:PORT", "127.0.0.1.nip.io:PORT", "localhost.evil.example",
                                  "user@127.0.0.1:PORT", "127.0.0.2:PORT", "0.0.0.0:PORT", ""])
def test_a_foreign_host_gets_no_page_and_no_api(page, host):
    host = host.replace("PORT", str(page.port))
    origin = f"http://{host or FOREIGN}"
    api = PageApi(page.url)
    api.render("circle")
    before = tree(page.root)
    with httpx.Client(base_url=page.url, headers={"Host": host, "Origin": origin}, timeout=30) as http:
        answers = [http.get("/"), http.get("/config"), http.get("/gradio_api/info"),
                   http.post(f"/gradio_api/call/{api.undo_api}", json={"data": [], "session_hash": api.session}),
                   http.options("/gradio_api/queue/join", headers={"Access-Control-Request-Method": "POST"})]
    for answer in answers:
        assert 400 <= answer.status_code < 500, (answer.request.url, answer.status_code)
        assert "access-control-allow-origin" not in answer.headers
        assert "This page answers only at http://127.0.0.1" in answer.text and "gradio" not in answer.text.lower()
    assert tree(page.root) == before


@pytest.mark.parametrize("host", ["127.0.0.1:PORT", "localhost:PORT", "[::1]:PORT", "localhost"])
@pytest.mark.parametrize("origin", [f"http://{FOREIGN}", f"http://{FOREIGN}:PORT", "null", "http://127.0.0.1:OTHER",
                                    "https://HOST", "http://HOST.evil.example"])
def test_a_foreign_origin_is_refused_and_never_reflected(page, host, origin):
    host = host.replace("PORT", str(page.port))
    origin = origin.replace("PORT", str(page.port)).replace("OTHER", str(free_port())).replace("HOST", host)
    with httpx.Client(base_url=page.url, headers={"Host": host, "Origin": origin}, timeout=30) as http:
        answers = [http.get("/config"), http.post("/gradio_api/call/partial", json={"data": []}),
                   http.options("/gradio_api/queue/join", headers={"Access-Control-Request-Method": "POST"})]
    for answer in answers:
        assert answer.status_code == 403, (answer.request.url, answer.status_code)
        assert "access-control-allow-origin" not in answer.headers
        assert "takes requests only from its own pages" in answer.text


@pytest.mark.parametrize("host", ["127.0.0.1:PORT", "localhost:PORT", "[::1]:PORT", "LocalHost:PORT", "127.0.0.1"])
def test_the_local_names_are_served_to_their_own_pages(page, host):
    host = host.replace("PORT", str(page.port))
    with httpx.Client(base_url=page.url, headers={"Host": host}, timeout=30) as http:
        assert http.get("/").status_code == 200
        own = http.get("/config", headers={"Origin": f"http://{host.lower()}"})
    assert own.status_code == 200 and own.headers["access-control-allow-origin"] == f"http://{host.lower()}"
