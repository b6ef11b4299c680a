"""The app's settings: read from the environment once, by `Settings.from_env()`, then passed down.

    MODEL_DIR=models/pets MAX_UPLOAD_MB=5 python app.py
    settings = Settings.from_env()                     # what app.py does; SettingsError names a bad value

Each field is one environment variable. A variable that is unset or empty takes the default; one the app can't
use raises SettingsError, whose message names the variable, its value and what it takes. A new setting is one
more field, `name: type = _env(VARIABLE, default, what it takes, convert, check)`, under a line saying why its
default is what it is.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping


class SettingsError(ValueError):
    """An environment variable set to a value the app can't use; the message says which and what it takes."""


def _env(name: str, default: Any, takes: str, convert: Callable[[str], Any] = str,
         check: Callable[[Any], bool] = lambda value: True) -> Any:
    """A field read from the variable `name`: its default (a function: called for each Settings), what it takes
    (for the error message), how to read it from text, and what a usable value passes."""
    meta = {"env": name, "takes": takes, "convert": convert, "check": check}
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


def _above_zero(value: float) -> bool:
    return 0 < value < math.inf  # NaN compares False, so it is refused too


def _user_cache() -> Path:
    return Path.home() / ".cache" / "serving-ort"


@dataclass(frozen=True)
class Settings:
    """What the app serves and how. `Settings()` holds the defaults; `Settings.from_env()` what the environment says."""

    # None serves model_dir; `python -m training deploy` sets it on a Space, which then pulls the published model.
    model_repo: str | None = _env("MODEL_REPO", None, "a Hub model repo, user/name")
    # The Hub's own default branch. Pin a commit sha in production, so that a later push can't change what is served.
    model_revision: str = _env("MODEL_REVISION", "main", "a branch, tag or commit sha")
    # Where `python -m training train` writes with its defaults, so a fresh clone serves what it has just trained.
    model_dir: Path = _env("MODEL_DIR", Path("models/bears"), "a model folder", Path)
    # Room for any phone photo, while no visitor can make the server hold much more than that per upload.
    max_upload_mb: float = _env("MAX_UPLOAD_MB", 10.0, "a number of megabytes above 0, such as 10", float, _above_zero)
    # Images decoded and classified at a time, the page and /classify together (one limit, so the worst case is one
    # number): some compute outside the GIL while Python serves the others.
    concurrency: int = _env("APP_CONCURRENCY", 4, "a whole number of predictions at a time, 1 or more", int,
                            lambda n: n >= 1)
    # Visitors waiting on the page: past that many, the next one is told the demo is busy rather than left waiting.
    queue_size: int = _env("APP_QUEUE_SIZE", 64, "a whole number of waiting visitors, 1 or more", int,
                           lambda n: n >= 1)
    # /classify's wait for a free slot before its 503 busy: well inside the time an HTTP client waits for an answer.
    busy_timeout: float = _env("APP_BUSY_TIMEOUT", 10.0, "a number of seconds above 0, such as 10", float, _above_zero)
    # Every interface, as a Space needs (127.0.0.1 keeps the app to this machine); Gradio's own variable and default.
    host: str = _env("GRADIO_SERVER_NAME", "0.0.0.0", "an address to listen on, such as 127.0.0.1")
    # Gradio's own variable and default, and the port a Space expects.
    port: int = _env("GRADIO_SERVER_PORT", 7860, "a whole number from 1 to 65535", int, lambda n: 1 <= n <= 65535)
    # A request's line and headers come in one packet or two; a connection that hasn't sent them in full by then is
    # closed, so that idle or dribbling connections can't pile up (uvicorn itself waits forever).
    header_timeout: float = _env("APP_HEADER_TIMEOUT", 5.0, "a number of seconds above 0, such as 5", float,
                                 _above_zero)
    # A request body (an upload) must keep coming: after this grace, at upload_min_rate on average, or it is cut off,
    # so that a client sending a byte at a time can't hold a connection for ever. Room for a slow start on a phone.
    upload_grace: float = _env("APP_UPLOAD_GRACE", 10.0, "a number of seconds above 0, such as 10", float, _above_zero)
    # Kilobytes a second, on average since the headers: under a hundredth of a slow 1 Mbit/s link (125 KB/s, on which a
    # 10 MB photo takes 80 s), so no real upload comes near it, and a body sent a byte at a time is far below it.
    upload_min_rate: float = _env("APP_UPLOAD_MIN_RATE", 1.0, "a number of kilobytes a second above 0, such as 1",
                                  float, _above_zero)
    # Far above what the queue and /classify need at once, below the 1,024 file descriptors a process commonly gets:
    # past it uvicorn answers 503 to new requests instead of running out of descriptors and memory.
    max_connections: int = _env("APP_MAX_CONNECTIONS", 512, "a whole number of connections, 1 or more", int,
                                lambda n: n >= 1)
    # Set by Hugging Face on a Space, whose page on huggingface.co shows the app in a frame: only there may it be framed
    # by another site.
    space_id: str | None = _env("SPACE_ID", None, "a Space id, user/name")
    # auto: model.int8.onnx where training's check let it serve and this CPU runs it faster (serving/loader.py), else
    # model.onnx. float32 or int8 choose one whatever the check or the CPU says.
    serve_precision: str = _env("SERVE_PRECISION", "auto", "auto, float32 or int8", str,
                                lambda v: v in ("auto", "float32", "int8"))
    # A private folder, unlike a shared /tmp where another user could plant a model; from_env honours $XDG_CACHE_HOME.
    ort_cache_dir: Path = _env("ORT_CACHE_DIR", _user_cache, "a folder for onnxruntime's optimized models", Path)

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and not f.metadata["check"](value):
                raise _refused(f.metadata, value)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "Settings":
        """The settings `env` gives, the rest at their defaults; raise SettingsError for a value the app can't use."""
        values = {f.name: _read(f.metadata, env[f.metadata["env"]]) for f in fields(cls) if env.get(f.metadata["env"])}
        if "ort_cache_dir" not in values and env.get("XDG_CACHE_HOME"):
            values["ort_cache_dir"] = Path(env["XDG_CACHE_HOME"]) / "serving-ort"
        return cls(**values)

    @property
    def max_upload_bytes(self) -> int:
        """The largest upload taken, in bytes (MAX_UPLOAD_MB counts decimal megabytes)."""
        return int(self.max_upload_mb * 1_000_000)

    @property
    def frame_ancestors(self) -> str:
        """Who may show the app's pages in a frame (CSP frame-ancestors): the app, and huggingface.co on a Space."""
        return "'self' https://huggingface.co" if self.space_id else "'self'"

    @property
    def upload_min_bytes_per_s(self) -> float:
        """The slowest a request body may come, on average once upload_grace has passed (KB are 1,000 bytes)."""
        return self.upload_min_rate * 1000

    @property
    def max_body_bytes(self) -> int:
        """The cap on every request body: the largest upload sent inline as base64 (4/3 larger), and the form
        or JSON around it."""
        return self.max_upload_bytes * 4 // 3 + 64 * 1024


def _read(meta: dict, raw: str) -> Any:
    try:
        value = meta["convert"](raw)
    except ValueError:
        raise _refused(meta, raw) from None
    if not meta["check"](value):
        raise _refused(meta, raw)  # the text as given: "0", not the 0.0 it became
    return value


def _refused(meta: dict, value: Any) -> SettingsError:
    return SettingsError(f"{meta['env']}={str(value)!r} is not usable: it takes {meta['takes']}")
