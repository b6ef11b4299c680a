"""serving/settings.py: every setting the app reads from the environment, its default, and the refusals."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from serving.settings import Settings, SettingsError

HOME = Path.home()


def test_defaults_are_what_the_readme_documents():
    s = Settings.from_env({})
    assert (s.model_repo, s.model_revision, s.model_dir) == (None, "main", Path("models/bears"))
    assert (s.max_upload_mb, s.max_upload_bytes, s.max_body_bytes) == (10, 10_000_000, 10_000_000 * 4 // 3 + 65_536)
    assert (s.concurrency, s.queue_size, s.busy_timeout) == (4, 64, 10)
    assert (s.header_timeout, s.max_connections) == (5, 512)
    assert (s.upload_grace, s.upload_min_rate, s.upload_min_bytes_per_s) == (10, 1, 1000)
    assert (s.space_id, s.frame_ancestors) == (None, "'self'")
    assert (s.host, s.port) == ("0.0.0.0", 7860)
    assert s.ort_cache_dir == HOME / ".cache" / "serving-ort"
    assert (s.feedback_repo, s.feedback_dir) == (None, None)  # feedback is off unless the owner turns it on
    assert (s.feedback_per_minute, s.feedback_per_hour, s.feedback_every) == (3, 100, 5)
    assert Settings() == s


@pytest.mark.parametrize("env, field, value", [
    ({"MODEL_REPO": "you/bears"}, "model_repo", "you/bears"),
    ({"MODEL_REVISION": "1a2b3c4"}, "model_revision", "1a2b3c4"),
    ({"MODEL_DIR": "models/pets"}, "model_dir", Path("models/pets")),
    ({"MAX_UPLOAD_MB": "1"}, "max_upload_bytes", 1_000_000),
    ({"MAX_UPLOAD_MB": "0.5"}, "max_upload_bytes", 500_000),
    ({"MAX_UPLOAD_MB": "1"}, "max_body_bytes", 1_000_000 * 4 // 3 + 65_536),
    ({"APP_CONCURRENCY": "2"}, "concurrency", 2),
    ({"APP_QUEUE_SIZE": "8"}, "queue_size", 8),
    ({"APP_BUSY_TIMEOUT": "2.5"}, "busy_timeout", 2.5),
    ({"APP_HEADER_TIMEOUT": "1.5"}, "header_timeout", 1.5),
    ({"APP_MAX_CONNECTIONS": "100"}, "max_connections", 100),
    ({"APP_UPLOAD_GRACE": "2.5"}, "upload_grace", 2.5),
    ({"APP_UPLOAD_MIN_RATE": "0.5"}, "upload_min_rate", 0.5),
    ({"APP_UPLOAD_MIN_RATE": "0.5"}, "upload_min_bytes_per_s", 500),  # KB are 1,000 bytes, like MAX_UPLOAD_MB's MB
    ({"SPACE_ID": "you/bears-demo"}, "space_id", "you/bears-demo"),
    # On a Space, whose page on huggingface.co shows the app in a frame, that site may frame it too.
    ({"SPACE_ID": "you/bears-demo"}, "frame_ancestors", "'self' https://huggingface.co"),
    ({"SPACE_ID": ""}, "frame_ancestors", "'self'"),
    ({"GRADIO_SERVER_NAME": "127.0.0.1"}, "host", "127.0.0.1"),
    ({"GRADIO_SERVER_PORT": "8080"}, "port", 8080),
    ({"ORT_CACHE_DIR": "/srv/ort"}, "ort_cache_dir", Path("/srv/ort")),
    ({"FEEDBACK_DIR": "/data/feedback"}, "feedback_dir", Path("/data/feedback")),
    ({"FEEDBACK_REPO": "you/bears-feedback"}, "feedback_repo", "you/bears-feedback"),
    ({"FEEDBACK_REPO": "you/f", "FEEDBACK_DIR": "/data/f"}, "feedback_outbox", Path("/data/f")),
    ({"FEEDBACK_REPO": "you/f"}, "feedback_outbox", HOME / ".cache" / "bearcub-feedback" / "you--f"),
    ({"FEEDBACK_PER_MINUTE": "5"}, "feedback_per_minute", 5),
    ({"FEEDBACK_PER_HOUR": "20"}, "feedback_per_hour", 20),
    ({"FEEDBACK_EVERY": "0.5"}, "feedback_every", 0.5),
    ({"XDG_CACHE_HOME": "/xdg"}, "ort_cache_dir", Path("/xdg/serving-ort")),
    ({"XDG_CACHE_HOME": "/xdg", "ORT_CACHE_DIR": "/srv/ort"}, "ort_cache_dir", Path("/srv/ort")),
    # Empty means unset, as a Space's blank variable or `MODEL_REPO= python app.py` gives.
    ({"MODEL_REPO": ""}, "model_repo", None),
    ({"MODEL_REVISION": ""}, "model_revision", "main"),
    ({"MODEL_DIR": ""}, "model_dir", Path("models/bears")),
    ({"GRADIO_SERVER_PORT": ""}, "port", 7860),
    ({"ORT_CACHE_DIR": "", "XDG_CACHE_HOME": ""}, "ort_cache_dir", HOME / ".cache" / "serving-ort"),
])
def test_each_variable_sets_its_field(env, field, value):
    assert getattr(Settings.from_env(env), field) == value


@pytest.mark.parametrize("name, value, allowed", [
    ("MAX_UPLOAD_MB", "abc", "a number of megabytes above 0"),
    ("MAX_UPLOAD_MB", "0", "a number of megabytes above 0"),
    ("MAX_UPLOAD_MB", "-5", "a number of megabytes above 0"),
    ("MAX_UPLOAD_MB", "nan", "a number of megabytes above 0"),
    ("MAX_UPLOAD_MB", "inf", "a number of megabytes above 0"),
    ("APP_CONCURRENCY", "0", "a whole number of predictions at a time, 1 or more"),
    ("APP_CONCURRENCY", "2.5", "a whole number of predictions at a time, 1 or more"),
    ("APP_QUEUE_SIZE", "0", "a whole number of waiting visitors, 1 or more"),
    ("APP_QUEUE_SIZE", "many", "a whole number of waiting visitors, 1 or more"),
    ("APP_BUSY_TIMEOUT", "0", "a number of seconds above 0"),
    ("APP_HEADER_TIMEOUT", "0", "a number of seconds above 0"),
    ("APP_HEADER_TIMEOUT", "soon", "a number of seconds above 0"),
    ("APP_MAX_CONNECTIONS", "0", "a whole number of connections, 1 or more"),
    ("APP_MAX_CONNECTIONS", "1e3", "a whole number of connections, 1 or more"),
    ("APP_UPLOAD_GRACE", "0", "a number of seconds above 0, such as 10"),
    ("APP_UPLOAD_GRACE", "-1", "a number of seconds above 0, such as 10"),
    ("APP_UPLOAD_MIN_RATE", "0", "a number of kilobytes a second above 0, such as 1"),
    ("APP_UPLOAD_MIN_RATE", "fast", "a number of kilobytes a second above 0, such as 1"),
    ("GRADIO_SERVER_PORT", "0", "a whole number from 1 to 65535"),
    ("GRADIO_SERVER_PORT", "70000", "a whole number from 1 to 65535"),
    ("GRADIO_SERVER_PORT", "http", "a whole number from 1 to 65535"),
    ("FEEDBACK_PER_MINUTE", "0", "a whole number of corrections, 1 or more"),
    ("FEEDBACK_PER_HOUR", "lots", "a whole number of corrections, 1 or more"),
    ("FEEDBACK_EVERY", "0", "a number of minutes above 0, such as 5"),
])
def test_a_bad_value_names_the_variable_the_value_and_what_it_takes(name, value, allowed):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({name: value})
    assert str(err.value) == f"{name}={value!r} is not usable: it takes {allowed}" + \
        (", such as 10" if name in ("MAX_UPLOAD_MB", "APP_BUSY_TIMEOUT") else "") + \
        (", such as 5" if name == "APP_HEADER_TIMEOUT" else "")
    assert isinstance(err.value, ValueError)


def test_settings_made_in_code_are_checked_the_same_way():
    with pytest.raises(SettingsError, match="GRADIO_SERVER_PORT='0'"):
        Settings(port=0)


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        Settings().port = 1  # type: ignore[misc]


def test_every_variable_is_in_the_apps_settings_table():
    """docs/app.md lists every variable Settings reads, so that a new setting can't go undocumented."""
    table = (Path(__file__).resolve().parents[2] / "docs" / "app.md").read_text()
    missing = [f.metadata["env"] for f in fields(Settings) if f"| `{f.metadata['env']}` |" not in table]
    assert not missing, missing


def test_the_default_model_folder_is_where_train_writes_by_default():
    from training.config import Config

    assert Settings().model_dir == Config().model_dir
