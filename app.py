"""The public demo: upload a photo, get the model's top labels. Also an API and a JSON endpoint, and a
second tab, "How training works", that shows stochastic gradient descent fitting a line (lesson 2's second half).

    python app.py                                        # http://localhost:7860
    MODEL_REPO=you/bears MODEL_REVISION=<sha> python app.py
    gradio app.py                                        # the same, and the page reloads when you edit it
    uvicorn app:app --reload                             # the same, restarted on every edit
    uvicorn app:build_app --factory --workers 2 --http serving.web:HeaderTimeout   # /classify only (see docs/app.md)

Serves with onnxruntime, numpy and Pillow: no torch, no fastai. Every setting (which model, the limits, the
address) comes from the environment, read once: see serving/settings.py.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from serving.loader import NoModel, example_images, load_model
from serving.settings import Settings, SettingsError

if TYPE_CHECKING:
    from fastapi import FastAPI

TITLE = "What is in this photo?"  # the page's title and heading
# The example images: a Space's examples/, next to app.py (`deploy` puts the model's there); else the model folder's.
EXAMPLES = Path(__file__).parent / "examples"


def build_app(settings: Settings | None = None) -> FastAPI:
    """The page at /, Gradio's API and POST /classify, within the limits of `settings` (else the environment's)."""
    if settings is None:  # as `uvicorn app:build_app --factory` calls it
        settings = _start_from_env()
    # The model loads while Gradio and FastAPI import: onnxruntime and the Hub work outside the GIL, so the two
    # overlap. Hence the imports here, not at the top.
    loading = ThreadPoolExecutor(max_workers=1, thread_name_prefix="load-model").submit(load_model, settings)
    from serving.feedback import open_feedback
    from serving.gradio_workarounds import mount
    from serving.page import build_page
    from serving.web import BodyLimit, SecurityHeaders, Slots, json_api

    try:
        loaded = loading.result()
    except NoModel as exc:
        raise SystemExit(f"app.py: {exc}") from None
    # One limit for the page and /classify: at most settings.concurrency images decoded and classified at once.
    slots = Slots(settings.concurrency)
    # Visitors' corrections (serving/feedback.py): None unless FEEDBACK_REPO or FEEDBACK_DIR is set. Opened once here,
    # not per page: `gradio app.py` rebuilds the page on every edit, and one folder needs one pusher.
    feedback = open_feedback(settings, loaded.source, loaded.precision)
    page = dict(loaded=loaded, settings=settings, slots=slots, examples=example_images(EXAMPLES), feedback=feedback)
    app = mount(json_api(loaded.model, settings, slots), build_page(**page, title=TITLE),
                max_file_size=settings.max_upload_bytes)
    app.state.page = page  # what `gradio app.py` builds each edited page from
    # Every request body is capped as it arrives, not after: an upload, or an image sent inline as base64; and it must
    # keep arriving, or it is cut off.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, grace=settings.upload_grace,
                       min_rate=settings.upload_min_bytes_per_s)
    app.add_middleware(SecurityHeaders, frame_ancestors=settings.frame_ancestors)
    return app


def main() -> None:
    """`python app.py`: serve on settings.host:settings.port until stopped. `gradio app.py` too, and it reruns this
    file after every edit: main() then only makes the new page, `demo`, that Gradio swaps in (serving/reloading.py)."""
    global demo, _serving  # module globals: a rerun by `gradio app.py` keeps _serving, which it never assigns
    from serving import reloading

    if reloading.rerun():
        demo = reloading.new_page(_serving, TITLE)
        return
    import uvicorn

    settings = _start_from_env()
    _serving = build_app(settings)
    demo = _serving.state.gradio_app.blocks
    from serving.web import (
        HeaderTimeout,  # imported by build_app, which loads the model meanwhile
    )

    # Idle connections closed after 5 s, unfinished request headers after settings.header_timeout; past
    # settings.max_connections open at once, uvicorn answers 503.
    options = dict(host=settings.host, port=settings.port, timeout_keep_alive=5,
                   http=HeaderTimeout.after(settings.header_timeout), limit_concurrency=settings.max_connections)
    if reloading.watched():  # `gradio app.py`
        reloading.serve(_serving, **options)
    else:
        uvicorn.run(_serving, **options)


def _start_from_env() -> Settings:
    """The settings the environment gives, and INFO lines on stderr: how every serving process starts."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise SystemExit(f"app.py: {exc}") from None
    logging.basicConfig(level=logging.INFO)  # before the model loads, so that its lines are in the log too
    return settings


def __getattr__(name: str):
    """`app.app`, built on first use, for `uvicorn app:app`; importing app.py alone builds nothing."""
    if name == "app":
        globals()["app"] = built = build_app()
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
