"""Visitors' corrections (serving/feedback.py, serving/feedback_box.py): the limits, what one Send keeps in a folder,
and the push to a Hub dataset repo through CommitScheduler, against a live app and the stand-in Hub."""
from __future__ import annotations

import io
import json
import random
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from serving.feedback import FeedbackLimits
from serving.model import Classifier
from tests.hub_server import StandInHub
from tests.live_app import LiveApp
from tests.tiny_model import draw_shape
from training.config import Config
from training.data.clean import Source, clean_images

REPO = "alice/shapes-feedback"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("per_minute, per_hour, sends, wait, accepted", [
    (3, 100, 5, 0, 3),  # a fourth Send within the minute is refused, and a fifth
    (3, 100, 5, 21, 5),  # one every 21 s: never more than 3 in any minute
    (3, 4, 6, 21, 4),  # the app's hourly cap, whatever the pace
    (1, 100, 3, 60, 3),  # a minute later, a session may send again
])
def test_limits_count_accepted_sends_per_session_and_per_hour(per_minute, per_hour, sends, wait, accepted):
    clock = Clock()
    limits = FeedbackLimits(per_minute, per_hour, clock)
    answers = []
    for _ in range(sends):
        answers.append(limits.take("s1"))
        clock.now += wait
    assert sum(a is None for a in answers) == accepted
    assert all(isinstance(a, str) and "nothing" in a for a in answers if a is not None)


def test_the_hourly_cap_spans_sessions_and_a_failed_send_is_given_back():
    clock = Clock()
    limits = FeedbackLimits(per_minute=2, per_hour=3, clock=clock)
    assert [limits.take(s) for s in ("a", "b", "c")] == [None, None, None]
    assert "this hour" in limits.take("d")  # a fresh session can't get round the app's cap
    limits.give_back("c")
    assert limits.take("d") is None
    clock.now += 3600
    assert limits.take("e") is None


@pytest.fixture
def example(tiny_model):
    return sorted((tiny_model.folder / "examples").glob("*"))[0]


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for f in sorted((folder / "rows").glob("*.jsonl")) for line in f.read_text().splitlines()]


def test_a_send_keeps_the_normalised_photo_and_one_row_and_nothing_before(tiny_model, example, tmp_path):
    folder = tmp_path / "feedback"
    # float32: the model the expected figures come from (auto may serve int8 on a CPU with VNNI)
    env = {"MODEL_DIR": str(tiny_model.folder), "FEEDBACK_DIR": str(folder), "FEEDBACK_PER_MINUTE": "2",
           "FEEDBACK_PER_HOUR": "3", "SERVE_PRECISION": "float32"}
    with LiveApp(env) as app:
        client = Client(app.url, verbose=False)
        client.predict(handle_file(str(example)), api_name="/check")
        assert _rows(folder) == [] and list((folder / "images").iterdir()) == []  # a prediction keeps nothing
        answers = [client.predict(handle_file(str(example)), "square", api_name="/feedback") for _ in range(3)]
        other = Client(app.url, verbose=False)  # a second page session: its own minute, the app's same hour
        answers += [other.predict(handle_file(str(example)), "none of these", api_name="/feedback")
                    for _ in range(2)]
        log = app.log
    assert answers[:2] == [answers[0]] * 2 and answers[0].startswith("Thank you! The photo")
    assert "a minute" in answers[2] and "nothing more was kept" in answers[2]
    assert answers[3].startswith("Thank you! The photo") and "this hour" in answers[4]
    rows = _rows(folder)
    assert [r["visitor_label"] for r in rows] == ["square", "square", None]
    probs = Classifier.from_folder(tiny_model.folder).judge(example)
    cleaned = clean_images([Source("circle", str(example), example)], tmp_path / "data", Config())[0].file
    expected_jpeg, digest = (tmp_path / "data" / cleaned).read_bytes(), Path(cleaned).stem  # as the data stage has it
    for row in rows:
        assert set(row) == {"time", "model", "precision", "predicted", "probabilities", "novelty",
                            "novelty_threshold", "in_domain", "visitor_label", "image"}
        assert row["model"] == str(tiny_model.folder) and row["precision"] == "float32"
        assert row["predicted"] == probs.label
        assert row["probabilities"] == pytest.approx(probs.probs, abs=1e-6)
        assert row["novelty"] == pytest.approx(probs.novelty, abs=1e-5) and row["image"] == f"images/{digest}.jpg"
    assert (folder / rows[0]["image"]).read_bytes() == expected_jpeg  # as the data stage would have stored it
    assert [p.name for p in (folder / "images").iterdir()] == [f"{digest}.jpg"]
    assert "127.0.0.1" not in json.dumps(rows)  # no address (nor cookie, nor name: the row's keys are above)
    assert "Traceback" not in log


def test_feedback_repo_without_a_token_is_said_at_start_and_the_app_serves_without_it(tiny_model, example, tmp_path):
    with StandInHub(tokens={"hf_good": "alice"}) as hub:
        env = {**hub.client_env(tmp_path / "hf"), "MODEL_DIR": str(tiny_model.folder), "FEEDBACK_REPO": REPO}
        with LiveApp(env) as app:
            client = Client(app.url, verbose=False)
            assert "/feedback" not in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
            assert client.predict(handle_file(str(example)), api_name="/predict")["label"]
            log = app.log
    assert "feedback is off: FEEDBACK_REPO=alice/shapes-feedback is set but there is no Hugging Face token" in log
    assert "HF_TOKEN" in log


def _wait_for(condition, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := condition()):
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_a_hub_down_at_start_is_retried_and_the_app_serves_meanwhile(tiny_model, example, tmp_path):
    with StandInHub(tokens={"hf_good": "alice"}) as hub:
        hub.down = True
        env = {**hub.client_env(tmp_path / "hf", token="hf_good"), "MODEL_DIR": str(tiny_model.folder),
               "FEEDBACK_REPO": REPO, "FEEDBACK_DIR": str(tmp_path / "outbox"), "FEEDBACK_EVERY": "0.02"}
        with LiveApp(env) as app:
            client = Client(app.url, verbose=False)
            assert client.predict(handle_file(str(example)), "square", api_name="/feedback").startswith("Thank")
            _wait_for(lambda: "can't reach the Hub dataset alice/shapes-feedback" in app.log)
            assert client.predict(handle_file(str(example)), api_name="/predict")["label"]
            hub.down = False
            _wait_for(lambda: len(_pushed_rows(hub)) == 1)
        assert hub.repo("dataset", REPO).private and _pushed_rows(hub)[0]["visitor_label"] == "square"


def _pushed_rows(hub: StandInHub) -> list[dict]:
    try:
        files = hub.files("dataset", REPO)
    except KeyError:  # not created yet
        return []
    return [json.loads(line) for path, data in sorted(files.items()) if path.startswith("rows/")
            for line in data.decode().splitlines()]


def test_rows_reach_a_private_dataset_and_a_push_cut_off_midway_loses_nothing(tiny_model, example, tmp_path):
    other_photo = tmp_path / "other.png"
    draw_shape("triangle", random.Random(7)).save(other_photo)  # a second picture: a second image file
    outbox = tmp_path / "outbox"
    with StandInHub(tokens={"hf_good": "alice"}, drop_upload_after_bytes=1000) as hub:
        env = {**hub.client_env(tmp_path / "hf", token="hf_good"), "MODEL_DIR": str(tiny_model.folder),
               "FEEDBACK_REPO": REPO, "FEEDBACK_DIR": str(outbox), "FEEDBACK_EVERY": "0.02"}  # every 1.2 s
        with LiveApp(env) as app:
            client = Client(app.url, verbose=False)
            assert client.predict(handle_file(str(example)), "circle", api_name="/feedback").startswith("Thank")
            _wait_for(lambda: hub.dropped_uploads >= 2)  # two pushes cut off mid-upload: the Hub "down"
            assert client.predict(handle_file(str(other_photo)), "none of these",
                                  api_name="/feedback").startswith("Thank")
            assert not any(p.startswith(("rows/", "images/")) for p in hub.files("dataset", REPO))
            hub.drop_upload_after_bytes = None  # the Hub is back
            _wait_for(lambda: len(_pushed_rows(hub)) == 2)
            log = app.log
        assert hub.repo("dataset", REPO).private
        pushed = hub.files("dataset", REPO)
    assert _pushed_rows(hub) == _rows(outbox)  # every row, as written
    images = sorted(p for p in pushed if p.startswith("images/"))
    assert images == sorted(f"images/{p.name}" for p in (outbox / "images").iterdir()) and len(images) == 2
    for path in images:
        assert pushed[path] == (outbox / path).read_bytes()
        Image.open(io.BytesIO(pushed[path])).verify()
    assert "Error while pushing to Hub" in log  # huggingface_hub's own line for the failed pushes
