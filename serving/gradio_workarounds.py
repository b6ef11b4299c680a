"""Every way this app departs from Gradio's defaults, each with its reason: the place to check after a Gradio upgrade.

    from serving.gradio_workarounds import UploadedImage, mount   # serving/page.py, app.py

- ENV_DEFAULTS: settings matplotlib and Gradio read from the environment, set when this module is imported
  (where unset: the environment wins). Importing Gradio reads none of them; matplotlib reads its own when it
  is first imported and Gradio its own when the page's queue is made, both after serving/page.py imports this.
- TEMP_DIR: Gradio's folder for uploads and examples, this process's own, also set on import (before Gradio's);
  the folders of processes that have died without deleting theirs are deleted then.
- UploadedImage: a gr.Image that hands the upload to the model as it came.
- in_slot(): a page event that waits its turn in the app's one concurrency limit, and doesn't run if its visitor left.
- mount(): the page mounted on our FastAPI app, with what `launch()` would have set and what a stateless
  public demo needs instead of Gradio's defaults: file routes that serve this app's files only, never as a page,
  and fetch nothing; no URL fetched for any input of any endpoint; malformed API calls logged in one line, their
  tracebacks at DEBUG (refuse_malformed_calls(), also for each page `gradio app.py` swaps in).
"""
from __future__ import annotations

import asyncio
import atexit
import base64
import binascii
import contextlib
import functools
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

ENV_DEFAULTS = {
    # Gradio switches matplotlib to Agg on the first event; named first, pyplot isn't imported to find the default.
    "MPLBACKEND": "agg",
    # A public demo tells nobody about its use (Gradio's analytics; onnxruntime's: see serving/__init__.py).
    "GRADIO_ANALYTICS_ENABLED": "False",
    # Gradio rebuilds a pandas summary of up to 10,000 past events after each event: every 1,000, of 1,000, instead.
    "GRADIO_ANALYTICS_CACHE_FREQUENCY": "1000",
    "GRADIO_ANALYTICS_MAX_EVENTS": "1000",
}
for _name, _value in ENV_DEFAULTS.items():
    os.environ.setdefault(_name, _value)

log = logging.getLogger(__name__)
# The name of a process's own folder: the process id in it says whose it is, once that process has gone.
TEMP_PREFIX = "gradio-app-"
OWN_FOLDER = re.compile(re.escape(TEMP_PREFIX) + r"(\d+)-")


def _private_temp_dir() -> str:
    parent = os.environ.get("GRADIO_TEMP_DIR") or None
    if parent:
        os.makedirs(parent, exist_ok=True)
    _delete_folders_of_dead_processes(parent or tempfile.gettempdir())
    # mode 0700: other users can't list or read it
    folder = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=parent)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # and mount() deletes it when the server stops
    return folder


def _delete_folders_of_dead_processes(parent: str) -> None:
    """Delete this user's folders in `parent` whose process is no longer running: a process killed outright (SIGKILL,
    the OOM killer) runs neither atexit nor the lifespan, and would leave its visitors' uploads on disk for good.
    Never a running process's folder: replicas of the app may share the machine, and its temp folder."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    deleted = 0
    for entry in entries:
        named = OWN_FOLDER.match(entry.name)
        try:
            ours = entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid == os.getuid()
        except OSError:
            continue
        if named and ours and not _running(int(named.group(1))):
            shutil.rmtree(entry.path, ignore_errors=True)
            deleted += 1
    if deleted:
        log.info("deleted the upload folders of %d stopped processes in %s", deleted, parent)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal sent: only whether the process exists
    except (ProcessLookupError, OverflowError):  # (OverflowError: a number no process id can be)
        return False
    except PermissionError:  # another user's process
        return True
    return True


# Gradio keeps uploads in GRADIO_TEMP_DIR, by default <temp>/gradio, and serves any file in it: one folder for every
# Gradio app on the machine, so each served the others' files. This process gets a folder of its own inside it (or
# inside the system temp folder), deleted when it stops, or at the next start of the app if it was killed outright.
# Gradio reads the variable on each use, and a few modules (routes the app refuses or never enables:
# process_recording, vibe editing, MCP) on import: hence here, before Gradio.
TEMP_DIR = _private_temp_dir()
os.environ["GRADIO_TEMP_DIR"] = TEMP_DIR
# Gradio also serves any file under ./.gradio/cached_examples (of whatever folder the app was started in): ours, here.
os.environ["GRADIO_EXAMPLES_CACHE"] = os.path.join(TEMP_DIR, "cached_examples")

import gradio as gr  # noqa: E402  (after the defaults, in case a Gradio release reads them on import)
from fastapi import FastAPI  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from gradio import processing_utils  # noqa: E402
from gradio.context import LocalContext  # noqa: E402
from gradio.route_utils import FnIndexInferError  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from starlette.routing import Mount  # noqa: E402

from serving.imaging import FORMAT_NAMES  # noqa: E402
from serving.web import MESSAGES, Gone, Slots, error_response  # noqa: E402

# Each API call is a session whose configs Gradio keeps (10,000 by default); this app keeps nothing in one.
SESSIONS_KEPT = 256
# Every minute, delete uploads older than 10 minutes: by default Gradio never does, and they pile up on disk.
DELETE_UPLOADS = (60, 600)
# How often a page event waiting for a slot checks that its visitor is still there: Gradio has no signal for it.
VISITOR_CHECK = 0.1
FILE_ROUTES = ("/gradio_api/file=", "/gradio_api/file/")
# Served inline by the file routes: raster images, which a browser shows and never runs. Anything else is a download.
INLINE_TYPES = (b"image/jpeg", b"image/png", b"image/gif", b"image/webp", b"image/bmp", b"image/avif")
# Gradio routes this page never uses, refused: /proxy= relays other Spaces' files (it loads none); /process_recording
# keeps an upload and runs ffmpeg on it with the caller's options (the page records no screen).
REFUSED_ROUTES = ("/gradio_api/proxy=", "/gradio_api/process_recording")
SCHEME = re.compile(r"\s*[a-z][a-z0-9+.-]*:", re.IGNORECASE)
# What a malformed API call raises in Gradio (the wrong number or shape of inputs, an unknown fn_index or api_name, a
# file that wasn't uploaded) and in our own checks. Anything else is the server's fault, logged as such.
MALFORMED = (ValidationError, KeyError, IndexError, TypeError, ValueError, gr.Error, FnIndexInferError)
# Gradio's functions that fetch a URL for a request (an input's or output's file, a component's own download).
FETCHES = ("async_ssrf_protected_download", "async_ssrf_protected_get")
# What the API page says /predict and /check take.
API_INPUT = (f"An image file, uploaded: handle_file(\"photo.jpg\") in gradio_client ({FORMAT_NAMES}). A URL is "
             "refused: download the image, then send the file.")


class UploadedImage(gr.Image):
    """gr.Image that hands the uploaded file to the model as it came.

    Gradio's own preprocessing opens every upload with Pillow and re-saves anything not RGB, turning
    transparent pixels black. serving.imaging prepares images the way training did and refuses bad files
    with a sentence for the visitor, so that step is skipped: it would only decode the image twice.
    """

    is_template = True  # render with gr.Image's front end

    def api_info_as_input(self) -> dict[str, Any]:
        # Gradio's own says "A local filepath or publicly available URL": this app takes uploads only.
        return {**super().api_info_as_input(), "additional_description": API_INPUT}

    def preprocess(self, payload):
        if payload is None:
            return None
        if not (payload.url or "").startswith("data:"):
            return payload.path  # an upload: Gradio has checked that (mount() sets has_launched), and fetched no URL
        # An API client sent the image inline, as a data: URL. Kept byte for byte: Gradio's own decoding
        # would re-save it as lossy WebP.
        try:
            raw = base64.b64decode(payload.url.partition(",")[2], validate=True)
        except binascii.Error:
            log.info("refused an upload: bad base64")
            raise gr.Error(MESSAGES["not_image"], print_exception=False) from None
        return processing_utils.save_bytes_to_cache(raw, "inline.img", cache_dir=self.GRADIO_CACHE)


def in_slot(fn: Callable[..., Any], slots: Slots) -> Callable[..., Any]:
    """`fn` as a page event that takes one of the app's `slots` (shared with /classify) to run, in a worker thread,
    and doesn't run at all if its visitor has left before its turn.

    Gradio drops a queued event as soon as its visitor's event stream closes (Starlette cancels the stream, and
    Gradio's queue forgets the event), but an event it has started runs to its end, even if it is only waiting: so
    the wait for a slot, which starts after Gradio's queue, watches for the visitor itself.
    """

    @functools.wraps(fn)  # Gradio reads the parameters of `fn` for the API page
    async def in_turn(*args):
        try:
            return await slots.run(fn, *args, caller=f"page event {LocalContext.event_id.get(None)}",
                                   gone=_visitor_left())
        except Gone:
            log.info("not classified: the visitor left before its turn")
            return None  # nobody to send it to: Gradio sends nothing for an event marked dead

    return in_turn


async def _visitor_left() -> None:
    """Return once the page event being run has lost its visitor: Gradio marks it dead (alive=False) when its event
    stream closes, and has no signal for it."""
    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    event = blocks._queue.event_ids_to_events.get(event_id) if blocks is not None and event_id else None
    if event is None:  # not run by the queue: no visitor to watch
        await asyncio.get_running_loop().create_future()  # (never done)
        return
    while event.alive:
        await asyncio.sleep(VISITOR_CHECK)


def mount(app: FastAPI, demo: gr.Blocks, max_file_size: int) -> FastAPI:
    """Serve `demo` at / of `app`, as `demo.launch()` would have but for what a public, stateless demo needs."""
    demo.state_session_capacity = SESSIONS_KEPT
    demo.delete_cache = DELETE_UPLOADS
    _fetch_no_urls()
    refuse_malformed_calls(demo)
    # show_error=False: a visitor reads our sentences (gr.Error), never an exception's own text.
    app = gr.mount_gradio_app(app, demo, path="/", max_file_size=max_file_size, show_error=False)
    # Gradio refuses API calls that name files on the server instead of uploads only once `launch()` has set this;
    # mounted, it never is, and {"path": "/etc/hostname"} (or /dev/zero, read forever) would be taken as input.
    demo.has_launched = True
    gradio = app.routes[-1]  # what mount_gradio_app has just added
    assert isinstance(gradio, Mount), gradio
    app.state.gradio_app = gradio.app  # Gradio's own app, whose page `gradio app.py` swaps (serving/reloading.py)
    gradio.app = QuietRouteErrors(gradio.app)
    app.add_middleware(FileRoutes)
    app.router.lifespan_context = _deleting_temp_dir(app.router.lifespan_context)
    return app


def _deleting_temp_dir(lifespan):
    """`lifespan`, then TEMP_DIR deleted: uvicorn ends a process it stopped by re-raising the signal, so no atexit
    handler runs, and visitors' uploads would stay on disk."""

    @contextlib.asynccontextmanager
    async def deleting(app):
        try:
            async with lifespan(app) as state:
                yield state
        finally:
            shutil.rmtree(TEMP_DIR, ignore_errors=True)

    return deleting


def _fetch_no_urls() -> None:
    """Any URL in any input of any endpoint (a FileData {"path": "https://..."} anywhere in the data, even for a gr.JSON
    or a function with preprocess=False: Gradio moves the files of every input to its cache first) gets our `url`
    sentence instead of a download. A public demo doesn't download for strangers; the file routes' URLs are refused by
    FileRoutes, and /proxy= is not served at all."""
    # Gradio's fetches replaced, not the inputs walked: every fetch for a request ends in these whatever the data's
    # shape or the component, and a Gradio release without them stops the app here instead of fetching again.
    for name in FETCHES:
        if not callable(getattr(processing_utils, name, None)):
            raise RuntimeError(f"gradio.processing_utils.{name} is gone: see FETCHES in {__name__}")
        setattr(processing_utils, name, _refuse_url)


async def _refuse_url(url: str, *args: Any, **kwargs: Any) -> Any:
    log.info("refused to fetch a URL: %r", str(url)[:200])
    raise gr.Error(MESSAGES["url"], print_exception=False)


def refuse_malformed_calls(demo: gr.Blocks) -> None:
    """An API call Gradio can't run (an fn_index of a function that runs only in the browser, too few inputs, inputs of
    the wrong shape, a file that wasn't uploaded) gets our sentence, and one INFO line in the log with its traceback
    at DEBUG: Gradio printed each one's traceback (about 7 KB, for anyone to send) to stderr. Any other exception is
    the server's fault: an ERROR with its traceback, and the `internal` sentence for the visitor."""
    preprocess = demo.preprocess_data

    async def preprocess_data(block_fn, inputs, state, explicit_call=False):
        if block_fn.fn is None:
            raise _refused(IndexError(f"function {block_fn._id} runs only in the browser"))
        try:
            return await preprocess(block_fn, inputs, state, explicit_call)
        except gr.Error:  # ours, for the visitor
            raise
        except MALFORMED as exc:
            raise _refused(exc) from None
        except Exception:
            log.exception("preparing the inputs of %s failed", getattr(block_fn, "name", block_fn._id))
            raise gr.Error(MESSAGES["internal"], print_exception=False) from None

    demo.preprocess_data = preprocess_data


def _refused(exc: Exception) -> gr.Error:
    log.info("refused a malformed API call: %s", _short(exc))
    log.debug("the malformed API call's traceback", exc_info=exc)
    return gr.Error(MESSAGES["bad_call"], print_exception=False)


def _short(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:160]!r}"  # repr: a visitor's text stays on one line of the log


class QuietRouteErrors:
    """Around Gradio's app: an exception a malformed call raises out of one of its routes (a bad fn_index or api_name,
    a session that doesn't exist) has had its 500 from Gradio; it goes to the log as one INFO line and a DEBUG
    traceback, instead of uvicorn's ERROR with the whole traceback, for anyone to cause. Any other exception is the
    server's fault, and stays uvicorn's ERROR with its traceback."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        try:
            await self.app(scope, receive, send)
        except MALFORMED as exc:
            if scope["type"] != "http":
                raise
            log.info("a Gradio route failed: %s %r: %s", scope["method"], scope["path"][:200], _short(exc))
            log.debug("the failed Gradio route's traceback", exc_info=exc)


class FileRoutes:
    """ASGI middleware for Gradio's file routes (/gradio_api/file=PATH): they serve this app's files, never a page.

    - A path that names a URL gets our `url` sentence: Gradio fetches http(s) URLs there and passes on what it got
      (public addresses only, through safehttpx, which asks dns.google about any host that resolves privately), so
      anyone could make the app download for them, against its no-links rule.
    - What they serve is an attachment (application/octet-stream) unless it is a raster image: Gradio serves text,
      JSON, audio and video inline, so an upload could be sent back to a visitor as a page of the app's site.
    - REFUSED_ROUTES get a 404.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith(REFUSED_ROUTES):
            return await JSONResponse({"detail": "Not Found"}, status_code=404)(scope, receive, send)
        if not path.startswith(FILE_ROUTES):
            return await self.app(scope, receive, send)
        if SCHEME.match(path[len(FILE_ROUTES[0]):]):  # both routes' prefixes are as long
            log.info("refused a file route for a URL")
            return await error_response("url")(scope, receive, send)

        async def as_download(message):
            if message["type"] == "http.response.start" and message["status"] < 300:  # a file, not Gradio's refusal
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                name = headers.get(b"content-disposition", b"").partition(b";")[2]  # Gradio's filename="...", if any
                if headers.get(b"content-type", b"").split(b";")[0].strip().lower() in INLINE_TYPES:
                    headers[b"content-disposition"] = b"inline" + (b";" + name if name else b"")
                else:
                    headers[b"content-type"] = b"application/octet-stream"
                    headers[b"content-disposition"] = b"attachment" + (b";" + name if name else b"")
                message = {**message, "headers": list(headers.items())}
            await send(message)

        await self.app(scope, receive, as_download)
