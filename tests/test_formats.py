"""Every photo people have, read the same way by the data stage and by the app.

The corpus of tests/image_corpus.py (every supported format and pixel mode, and files to refuse) goes through
`python -m training data --from-folder` and, file by file, through the live app's POST /classify. The two
must agree on every file: kept and classified, or refused for the same reason. Neither may print a decoder's
own message or a traceback.
"""
from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from tests.image_corpus import write_corpus
from tests.live_app import LiveApp
from training.config import Config
from training.data.manifest import read_manifest
from training.data.stage import build_dataset


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def data_stage(written, tmp_path_factory):
    """{file name: (status, reason)} from the data stage, and what it logged at INFO and above."""
    folder = next(iter(written)).parent.parent
    data = tmp_path_factory.mktemp("data")
    handler, training = _Collect(), logging.getLogger("training")
    level = training.level
    logging.getLogger().addHandler(handler)
    training.setLevel(logging.INFO)  # as the CLI sets it
    try:
        build_dataset(Config(from_folder=folder, data=data, min_per_label=0))
    finally:
        logging.getLogger().removeHandler(handler)
        training.setLevel(level)
    rows = {Path(r.url).name: (r.status, r.reason) for r in read_manifest(data / "manifest.csv")}
    return rows, handler.records


@pytest.fixture(scope="module")
def app_answers(written, tiny_model):
    """{file name: reason, or None when classified} from POST /classify, and the app's log."""
    answers = {}
    with LiveApp({"MODEL_DIR": str(tiny_model.folder)}) as app, httpx.Client(timeout=60) as client:
        for path in written:
            reply = client.post(app.url + "/classify", files={"file": (path.name, path.read_bytes())})
            answers[path.name] = None if reply.status_code == 200 else reply.json()["reason"]
        log = app.log
    return answers, log


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_the_data_stage_gives_every_file_its_expected_answer(written, data_stage):
    rows, _ = data_stage
    expected = {path.name: ("kept", "") if case.reason is None else ("rejected", case.reason)
                for path, case in written.items()}
    assert rows == expected


def test_the_app_and_the_data_stage_agree_on_every_file(data_stage, app_answers):
    rows, _ = data_stage
    answers, _ = app_answers
    data_says = {name: None if status == "kept" else reason for name, (status, reason) in rows.items()}
    assert answers == data_says


def test_the_data_stage_counts_the_files_that_are_no_image(data_stage, written):
    _, records = data_stage
    refused = sum(case.reason == "not_image" for case in written.values())
    lines = [r.getMessage() for r in records if "no image we read" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(f"data: refused {refused} files that are no image we read")


def test_no_decoder_speaks_for_itself(data_stage, app_answers):
    """Pillow's and libtiff's messages become DEBUG lines naming the file: nothing at INFO or above from them,
    and no ERROR or traceback in the app's log for uploads it rightly refused."""
    _, records = data_stage
    said = [r.getMessage() for r in records]
    assert [m for m in said if "JPEGLib" in m or "Truncated File Read" in m or "samples per pixel" in m] == []
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []
    _, log = app_answers
    assert "Traceback" not in log and "ERROR" not in log and "JPEGLib" not in log
