"""serving/settings.py: every setting the app reads from the environment, its default, and the refusals."""
from __future__ import annotations

from pathlib import Path

import pytest

from serving.settings import Settings, SettingsError

HOME = Path.home()


def test_defaults_are_what_the_readme_documents():
    s = Settings.from_env({})
    assert (s.model_repo, s.model_revision, s.model_dir) == (None, "main", Path("models/bears"))
    assert (s.max_upload_mb, s.max_upload_bytes, s.max_body_bytes) == (10, 10_000_000, 10_000_000 * 4 // 3 + 65_536)
    assert (s.concurrency, s.queue_size, s.busy_timeout) == (4, 64, 10)
    assert (s.host, s.port) == ("0.0.0.0", 7860)
    assert s.ort_cache_dir == HOME / ".cache" / "serving-ort"
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
    ({"GRADIO_SERVER_NAME": "127.0.0.1"}, "host", "127.0.0.1"),
    ({"GRADIO_SERVER_PORT": "8080"}, "port", 8080),
    ({"ORT_CACHE_DIR": "/srv/ort"}, "ort_cache_dir", Path("/srv/ort")),
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
    ("GRADIO_SERVER_PORT", "0", "a whole number from 1 to 65535"),
    ("GRADIO_SERVER_PORT", "70000", "a whole number from 1 to 65535"),
    ("GRADIO_SERVER_PORT", "http", "a whole number from 1 to 65535"),
])
def test_a_bad_value_names_the_variable_the_value_and_what_it_takes(name, value, allowed):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({name: value})
    assert str(err.value) == f"{name}={value!r} is not usable: it takes {allowed}" + \
        (", such as 10" if name in ("MAX_UPLOAD_MB", "APP_BUSY_TIMEOUT") else "")
    assert isinstance(err.value, ValueError)


def test_settings_made_in_code_are_checked_the_same_way():
    with pytest.raises(SettingsError, match="GRADIO_SERVER_PORT='0'"):
        Settings(port=0)


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        Settings().port = 1  # type: ignore[misc]


def test_the_default_model_folder_is_where_train_writes_by_default():
    from training.config import Config

    assert Settings().model_dir == Config().model_dir
