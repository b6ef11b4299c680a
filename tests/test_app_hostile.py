"""Hostile visitors (issue #15), against app.py as a real process on loopback: one concurrency limit for the page and
/classify, no work for a client that has gone, files never served as pages, no URL fetched, a deadline for request
headers, a pace for request bodies and a bound on connections, security headers, and malformed API calls kept out of
the error log (and server faults kept in it).

The costly image is made here: a 6300x6300 PNG of under 3 MB, most of a second to decode on 2 cores; the slot is
held by as many of them as it takes for a second or so, however fast the machine. The tests order their requests by
what the app's log says (a request waiting for a slot, getting one, its client gone), never by sleeping.
"""
from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import logging
import math
import os
import select
import socket
import socketserver
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import sync_playwright

from serving.web import MESSAGES
from tests.conftest import CHROMIUM
from tests.live_app import ROOT, LiveApp
from tests.test_app_browser import WATCH_CSP

LEFT_CLASSIFY = "not classified: the client left before its turn"
LEFT_PAGE = "not classified: the visitor left before its turn"
# What serving.web.Slots logs of a request that has to wait for a slot, and of its turn.
CLASSIFY_WAITS, PAGE_WAITS = ("/classify for 127.0.0.1:{port} is waiting for one of", "page event {event} is waiting "
                              "for one of")
WAITS, GETS = " is waiting for one of ", " got a slot after "
DECODED_JUNK = "refused an upload: not_image"  # what decoding the junk "photo" below logs
JUNK = b"not a picture at all"
INLINE_JUNK = {"url": "data:image/jpeg;base64," + base64.b64encode(JUNK).decode(), "meta": {"_type": "gradio.FileData"}}


@functools.cache
def costly_png() -> bytes:
    """An ordinary image near the 40 MP cap: a 16-bit greyscale PNG (scaled down to 8 bits as it is read) of 8x8
    patches (not blank) under tiles of noise (so that each row compresses well: under 3 MB)."""
    rng = np.random.default_rng(0)
    noise = np.tile(rng.integers(0, 16_000, (61, 61), dtype=np.uint16), (104, 104))[:6300, :6300]
    patches = rng.integers(0, 48_000, (8, 8), dtype=np.uint16).repeat(788, 0).repeat(788, 1)[:6300, :6300]
    out = io.BytesIO()
    Image.fromarray(noise + patches).save(out, "PNG", compress_level=9)
    return out.getvalue()


@pytest.fixture(scope="module")
def one_slot(tiny_model):
    """One image at a time, whichever way it comes; /classify waits up to a minute for it (never busy here)."""
    env = {"MODEL_DIR": str(tiny_model.folder), "APP_CONCURRENCY": "1", "APP_BUSY_TIMEOUT": "60",
           "MAX_UPLOAD_MB": "4"}
    with LiveApp(env) as app:
        yield app


@pytest.fixture(scope="module")
def costly_seconds(one_slot) -> float:
    """How long the costly image takes here, through /classify, once the app has warmed up on it."""
    times = []
    for _ in range(3):
        start = time.monotonic()
        assert _classify(one_slot, costly_png()).status_code == 200
        times.append(time.monotonic() - start)
    return min(times)


@pytest.fixture
def example(tiny_model) -> Path:
    return sorted((tiny_model.folder / "examples").glob("*"))[0]


def _classify(app: LiveApp, data: bytes, name: str = "photo.png") -> httpx.Response:
    return httpx.post(app.url + "/classify", files={"file": (name, data)}, timeout=60)


def _upload(app: LiveApp, name: str, data: bytes) -> str:
    r = httpx.post(app.url + "/gradio_api/upload", files={"files": (name, data)}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()[0]


def _file_data(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def _page_event(app: LiveApp, file_data: dict) -> str:
    """Queue one prediction through Gradio's HTTP API, as a page visitor would; its event id."""
    return httpx.post(f"{app.url}/gradio_api/call/predict", json={"data": [file_data]}, timeout=30).json()["event_id"]


def _page_result(app: LiveApp, event_id: str) -> str:
    return httpx.get(f"{app.url}/gradio_api/call/predict/{event_id}", timeout=60).text


def _hold_with_classify(pool: ThreadPoolExecutor, app: LiveApp, costly_seconds: float, seconds: float = 1.2) -> list:
    """Costly images sent to /classify, enough to hold the one slot for about `seconds`: futures of their responses."""
    n = max(2, math.ceil(seconds / costly_seconds))
    return [pool.submit(_classify, app, costly_png()) for _ in range(n)]


def _hold_with_page(app: LiveApp, costly_seconds: float, seconds: float = 1.2) -> list[str]:
    """Costly images asked on the page, enough to hold the one slot for about `seconds`: their event ids."""
    costly = _file_data(_upload(app, "costly.png", costly_png()))
    return [_page_event(app, costly) for _ in range(max(2, math.ceil(seconds / costly_seconds)))]


def _wait_for(what: str, condition: Callable[[], bool], timeout: float = 120) -> None:
    """Return once condition() holds (checked every 20 ms; a line in the app's log, a state it has reached), or fail
    after `timeout` seconds, which only a broken app takes: the generous bound of a wait for an event, not a sleep."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"after {timeout} s, still not: {what}"
        time.sleep(0.02)


def _slot_lines(app: LiveApp, since: int) -> list[str]:
    """The app's log lines about waiting for a slot and getting one, since the log's first `since` characters."""
    return [line for line in app.log[since:].splitlines() if WAITS in line or GETS in line]


def _open_then_leave(app: LiveApp, request: bytes, ready: Callable[[socket.socket], bool]) -> None:
    """Send `request` whole on a fresh connection, wait until ready(connection) (its request has got where the test
    wants it), then close the connection: a visitor who leaves."""
    with socket.create_connection(("127.0.0.1", app.port), timeout=60) as s:
        s.sendall(request)
        _wait_for("the request got to where its client leaves", lambda: ready(s))


def _waiting_in(app: LiveApp, line: str) -> Callable[[socket.socket], bool]:
    """ready() for _open_then_leave: the app has logged `line`, formatted with the connection's own port."""
    return lambda s: line.format(port=s.getsockname()[1]) in app.log


def _streaming(s: socket.socket) -> bool:
    """ready() for _open_then_leave on an event stream: its response has begun (Gradio streams to this connection)."""
    head = s.recv(4096)  # waits for the response head (the socket's timeout is a minute)
    assert head.startswith(b"HTTP/1.1 200"), head
    return True


def _streaming_and_waiting_in(app: LiveApp, line: str) -> Callable[[socket.socket], bool]:
    """ready() for _open_then_leave on an event stream: its response has begun, and the app has logged `line`."""
    begun = False

    def ready(s: socket.socket) -> bool:
        nonlocal begun
        begun = begun or _streaming(s)
        return line in app.log

    return ready


def _post_request(app: LiveApp, path: str, name: str, data: bytes) -> bytes:
    body = (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="' + name.encode() + b'"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + data + b"\r\n--xyz--\r\n")
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{app.port}\r\nContent-Type: multipart/form-data; boundary=xyz"
            f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def _get_request(app: LiveApp, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{app.port}\r\nAccept: text/event-stream\r\n\r\n".encode()


def _counts(app: LiveApp) -> tuple[int, int, int]:
    log = app.log
    return log.count(DECODED_JUNK), log.count(LEFT_CLASSIFY), log.count(LEFT_PAGE)


def _some_classify_waits(app: LiveApp, since: int) -> Callable[[], bool]:
    """Whether a /classify has logged, since the log's first `since` characters, that it waits for the slot: the slot
    is held, and will be for one costly image at least."""
    return lambda: any(line.startswith("INFO:serving.web:/classify") and WAITS in line
                       for line in _slot_lines(app, since))


# 1. One concurrency limit for the page and /classify. Before: each had its own, so both ran at once (8 decodes at 4).

def test_classify_waits_while_the_page_predicts(one_slot, costly_seconds, example):
    """A costly image asked on the page holds the slot; /classify, asked meanwhile, waits for it, then answers. (Until
    the page's prediction has the slot, each /classify runs at once: the test asks again until one has to wait.)"""
    costly = _file_data(_upload(one_slot, "costly.png", costly_png()))
    with ThreadPoolExecutor(1) as pool:
        event = _page_event(one_slot, costly)
        page = pool.submit(_page_result, one_slot, event)
        while True:
            since = len(one_slot.log)
            r = _classify(one_slot, example.read_bytes(), example.name)
            assert r.status_code == 200, r.text
            mine = [line for line in _slot_lines(one_slot, since) if "/classify for" in line]
            if mine:
                break
            assert not page.done(), "/classify never had to wait while the page's prediction ran beside it"
        stream = page.result()
    assert "event: complete" in stream, stream
    # This /classify, the only request beside the page's, waited until the page's prediction let go of the slot.
    assert len(mine) == 2 and WAITS in mine[0] and GETS in mine[1], mine


def test_classify_says_busy_when_the_page_holds_the_slot_past_its_wait(tiny_model, example):
    """/classify waits APP_BUSY_TIMEOUT (0.2 s here) for the slot the page holds, then answers 503 busy. (Between the
    page's predictions, /classify runs at once: the test asks again until one comes while the page holds the slot.)"""
    env = {"MODEL_DIR": str(tiny_model.folder), "APP_CONCURRENCY": "1", "APP_BUSY_TIMEOUT": "0.2",
           "MAX_UPLOAD_MB": "4"}
    with LiveApp(env) as app, ThreadPoolExecutor(2) as pool:
        costly = _file_data(_upload(app, "costly.png", costly_png()))
        assert "event: complete" in _page_result(app, _page_event(app, costly))  # warm
        pages = [pool.submit(_page_result, app, _page_event(app, costly)) for _ in range(2)]
        while (r := _classify(app, example.read_bytes(), example.name)).status_code != 503:
            assert r.status_code == 200, r.text
            assert not all(page.done() for page in pages), "/classify was never busy while the page held the slot"
        assert (r.status_code, r.json(), r.headers.get("retry-after")) == (
            503, {"error": MESSAGES["busy"], "reason": "busy"}, "1")
        assert all("event: complete" in page.result() for page in pages)


def test_the_page_waits_for_classify(one_slot, costly_seconds, example):
    """Costly images on /classify hold the slot in turn; a prediction asked on the page meanwhile waits its turn
    behind those waiting before it, and gets the slot after them."""
    since = len(one_slot.log)
    photo = _file_data(_upload(one_slot, example.name, example.read_bytes()))
    with ThreadPoolExecutor(8) as pool:
        holders = _hold_with_classify(pool, one_slot, costly_seconds)
        _wait_for("a /classify waiting for the slot", _some_classify_waits(one_slot, since))
        event = _page_event(one_slot, photo)
        stream = _page_result(one_slot, event)
        assert all(holder.result().status_code == 200 for holder in holders)
    assert "event: complete" in stream, stream
    lines = _slot_lines(one_slot, since)
    waits = next(n for n, line in enumerate(lines) if PAGE_WAITS.format(event=event) in line)
    gets = next(n for n, line in enumerate(lines) if f"page event {event}{GETS}" in line)
    ahead = sum("/classify" in line for line in lines[:waits] if WAITS in line)
    assert ahead >= 1 and sum("/classify" in line for line in lines[:gets] if GETS in line) >= ahead, lines


# 2. Work for a client that has gone stops: nothing is decoded for a request whose client left while it waited.

def test_a_classify_request_whose_client_left_is_not_decoded(one_slot, costly_seconds):
    decoded, left_classify, _ = _counts(one_slot)
    since = len(one_slot.log)
    with ThreadPoolExecutor(8) as pool:
        holders = _hold_with_classify(pool, one_slot, costly_seconds)
        _wait_for("a /classify waiting for the slot", _some_classify_waits(one_slot, since))
        # A real disconnect, once the request waits for the slot.
        _open_then_leave(one_slot, _post_request(one_slot, "/classify", "junk.jpg", JUNK),
                         _waiting_in(one_slot, CLASSIFY_WAITS))
        _wait_for("the app saw the client leave", lambda: _counts(one_slot)[1] > left_classify)
        assert all(holder.result().status_code == 200 for holder in holders)
    assert _counts(one_slot)[:2] == (decoded, left_classify + 1), one_slot.log[-2000:]


@pytest.mark.parametrize("protocol", ["call", "queue"])
def test_a_page_event_whose_visitor_left_while_classify_held_the_slot_is_not_run(one_slot, costly_seconds, protocol):
    """Gradio's queue has started the event, which waits for the slot /classify holds; its visitor's event stream
    closes (Gradio's HTTP API, or the page's own queue protocol): the event never runs."""
    decoded, _, left_page = _counts(one_slot)
    since = len(one_slot.log)
    with ThreadPoolExecutor(8) as pool:
        holders = _hold_with_classify(pool, one_slot, costly_seconds)
        _wait_for("a /classify waiting for the slot", _some_classify_waits(one_slot, since))
        if protocol == "call":
            event = _page_event(one_slot, INLINE_JUNK)
            stream = f"/gradio_api/call/predict/{event}"
        else:
            session = f"hostile{time.monotonic_ns()}"
            event = httpx.post(f"{one_slot.url}/gradio_api/queue/join", timeout=30, json={
                "data": [INLINE_JUNK], "fn_index": _fn_index(one_slot, "predict"), "session_hash": session,
            }).json()["event_id"]
            stream = f"/gradio_api/queue/data?session_hash={session}"
        _open_then_leave(one_slot, _get_request(one_slot, stream),
                         _streaming_and_waiting_in(one_slot, PAGE_WAITS.format(event=event)))
        _wait_for("the app saw the visitor leave", lambda: _counts(one_slot)[2] > left_page)
        assert all(holder.result().status_code == 200 for holder in holders)
    assert _counts(one_slot)[0::2] == (decoded, left_page + 1), one_slot.log[-2000:]


def test_a_page_event_whose_visitor_left_while_queued_behind_the_page_is_not_run(one_slot, costly_seconds, example):
    """Gradio's own behaviour, which the app relies on: an event still in Gradio's queue (behind the page's own
    predictions) is dropped as soon as its visitor's stream closes, before it ever reaches the app."""
    decoded, _, left_page = _counts(one_slot)
    holders = _hold_with_page(one_slot, costly_seconds)  # queued before the junk: Gradio runs one at a time here
    event = _page_event(one_slot, INLINE_JUNK)
    _open_then_leave(one_slot, _get_request(one_slot, f"/gradio_api/call/predict/{event}"), _streaming)
    for holder in holders:
        assert "event: complete" in _page_result(one_slot, holder)
    # One more prediction, queued after the junk: once it is done, the junk would have run, had it not been dropped.
    assert "event: complete" in _page_result(one_slot, _page_event(one_slot, _file_data(
        _upload(one_slot, example.name, example.read_bytes()))))
    assert _counts(one_slot)[0::2] == (decoded, left_page)
    assert f"page event {event}" not in one_slot.log


def _fn_index(app: LiveApp, api_name: str) -> int:
    config = httpx.get(app.url + "/config", timeout=30).json()
    return next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)


# 3. Uploads: never served back as a page.

@pytest.mark.parametrize("name, data, inline", [
    ("notes.txt", b"<script>alert(1)</script>", False),
    ("page.html", b"<html><script>alert(1)</script></html>", False),
    ("data.json", b'{"a": "<script>alert(1)</script>"}', False),
    ("drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', False),
    ("page.png", b"<html><script>alert(1)</script></html>", True),  # served as image/png: nosniff keeps it one
    ("photo.jpg", None, True),
])
def test_uploads_are_served_as_downloads_unless_images(one_slot, example, name, data, inline):
    path = _upload(one_slot, name, data if data is not None else example.read_bytes())
    r = httpx.get(f"{one_slot.url}/gradio_api/file={path}", timeout=30)
    assert r.status_code == 200
    assert r.headers["x-content-type-options"] == "nosniff"  # a type is taken as given, never guessed from the bytes
    assert "sandbox" in r.headers["content-security-policy"]  # opened as a page, nothing in it runs
    kind, disposition = r.headers["content-type"], r.headers["content-disposition"].split(";")[0]
    if inline:
        assert kind.startswith("image/") and disposition == "inline"
    else:
        assert (kind, disposition) == ("application/octet-stream", "attachment")


def test_gradio_keeps_this_apps_files_in_a_folder_of_its_own(tiny_model, tmp_path, example):
    """Files another Gradio app left in Gradio's shared default folder (<temp>/gradio) or in ./.gradio/cached_examples
    are not served: before, the app served an image the review page had cached. Its own folder is private and goes
    when it stops."""
    others = [tmp_path / "gradio" / "0123abcd" / "reviewed.jpg",
              tmp_path / ".gradio" / "cached_examples" / "17" / "cached.jpg"]
    for other in others:
        other.parent.mkdir(parents=True)
        other.write_bytes(example.read_bytes())
    env = {"MODEL_DIR": str(tiny_model.folder), "TMPDIR": str(tmp_path), "GRADIO_TEMP_DIR": ""}
    with LiveApp(env, cwd=tmp_path) as app:
        for other in others:
            r = httpx.get(f"{app.url}/gradio_api/file={other}", timeout=30)
            assert r.status_code == 403, (other, r.status_code)
        own = Path(_upload(app, "mine.jpg", example.read_bytes()))
        assert httpx.get(f"{app.url}/gradio_api/file={own}", timeout=30).status_code == 200
        folder = next(parent for parent in own.parents if parent.parent == tmp_path)
        assert folder.name.startswith("gradio-app-") and stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert not folder.exists()


def test_a_start_deletes_the_folders_of_stopped_processes_and_never_a_running_ones(tiny_model, tmp_path):
    """A process killed outright (SIGKILL, the OOM killer) runs no clean-up, and its visitors' uploads stayed on disk
    for good; the next start deletes its folder. A running process's folder (another replica's) stays."""
    stopped = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                 text=True, check=True).stdout)
    folders = {"stopped": tmp_path / f"gradio-app-{stopped}-x1y2z3",
               "running": tmp_path / f"gradio-app-{os.getpid()}-a1",  # this test's own process
               "not the app's": tmp_path / f"gradio-{stopped}-b2"}
    for folder in folders.values():
        (folder / "0123abcd").mkdir(parents=True)
        (folder / "0123abcd" / "photo.jpg").write_bytes(b"a visitor's photo")
    with LiveApp({"MODEL_DIR": str(tiny_model.folder), "TMPDIR": str(tmp_path), "GRADIO_TEMP_DIR": ""}) as app:
        kept = {name for name, folder in folders.items() if folder.exists()}
        assert any(tmp_path.glob(f"gradio-app-{app.proc.pid}-*"))  # the app's own, named for its process
    assert kept == {"running", "not the app's"}, kept


class _CountingServer(socketserver.ThreadingTCPServer):
    """A loopback server that counts every request it is sent (as a web server or as a proxy) and answers an image."""

    daemon_threads = True

    def __init__(self):
        self.requests: list[bytes] = []

        class Handler(socketserver.StreamRequestHandler):
            def handle(handler):
                self.requests.append(handler.rfile.readline(4096))
                handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 4\r\n"
                                    b"Connection: close\r\n\r\nPNG!")

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def _call_stream(app: LiveApp, api: str, data: list) -> str:
    """One call through Gradio's plain HTTP API: its result stream, as text."""
    event = httpx.post(f"{app.url}/gradio_api/call/{api}", json={"data": data}, timeout=30).json()["event_id"]
    return httpx.get(f"{app.url}/gradio_api/call/{api}/{event}", timeout=60).text


def test_no_url_is_fetched_through_any_route_or_input(tiny_model):
    """/gradio_api/file=<URL> made Gradio fetch the URL (public addresses only; for a host that resolves to a private
    one it asks dns.google first), and so did a file naming a URL in any input of any endpoint: Gradio moves the files
    in every input to its cache before the function sees them, even for a gr.JSON input or preprocess=False (the SGD
    tab's handlers, /sgd). Every outgoing request goes through a loopback proxy here, which counts them."""
    server = _CountingServer()
    port = server.server_address[1]
    proxy = f"http://127.0.0.1:{port}"
    env = {"MODEL_DIR": str(tiny_model.folder), "HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "NO_PROXY": ""}
    try:
        with LiveApp(env) as app:
            answers, streams = {}, {}
            for target in (f"http://localhost:{port}/x.png", f"http://127.0.0.1:{port}/x.png",
                           f"https://localhost:{port}/x.png", f"HTTP://localhost:{port}/x.png"):
                for route in ("/gradio_api/file=", "/gradio_api/file/"):
                    r = httpx.get(app.url + route + target, timeout=30)
                    answers[route + target] = (r.status_code, r.json())
                url = _file_data(target)
                for api, data in [("predict", [url]), ("sgd", [url, 0.5, 0.1, 10, 10, 0]),
                                  ("_animate", [100, 0.5, 0.1, "10", {"epochs": [url]}]),
                                  ("_show_step", [{"n_points": 100, "noise": {"deep": {"er": url}}}, 5])]:
                    streams[api, target] = _call_stream(app, api, data)
            # Each answer came after its fetch, had there been one: nothing is on its way.
            assert server.requests == [], server.requests  # not even onnxruntime's telemetry at start-up (it is off)
            refused = (400, {"error": MESSAGES["url"], "reason": "url"})  # with the sentence about links
            assert all(answer == refused for answer in answers.values()), answers
            # Gradio takes only lower-case http(s):// for a URL: an upper-case one is a path on the server to it, not
            # an upload, and is refused as a malformed call.
            sentence = {target: MESSAGES["bad_call" if target.startswith("HTTP:") else "url"] for _, target in streams}
            wrong = {key: stream for key, stream in streams.items()
                     if f'event: error\ndata: {{"error": {json.dumps(sentence[key[1]])}' not in stream}
            assert wrong == {}
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("method, path", [("POST", "/gradio_api/process_recording"),
                                          ("GET", "/gradio_api/proxy=https://you-demo.hf.space/file=x.png")])
def test_gradio_routes_the_page_never_uses_are_refused(one_slot, method, path):
    """process_recording kept an upload and ran ffmpeg on it with the caller's options (or sent it back)."""
    files = {"video": ("v.mp4", b"\0" * 100, "video/mp4")} if method == "POST" else None
    assert httpx.request(method, one_slot.url + path, files=files, timeout=30).status_code == 404


# 4. Malformed API calls: one line in the log each, their tracebacks at DEBUG.

def test_malformed_api_calls_leave_no_traceback_in_the_log(one_slot):
    dependencies = httpx.get(one_slot.url + "/config", timeout=30).json()["dependencies"]
    predict = _fn_index(one_slot, "predict")
    script_only = next(d["id"] for d in dependencies if not d["backend_fn"])  # the Clear button's: browser only
    before = one_slot.log
    with httpx.Client(timeout=30) as c:
        for n, (fn_index, data) in enumerate([(999, [None]), (-1, [None]), (script_only, []), (predict, []),
                                              (predict, [5])]):
            session = f"malformed{n}{time.monotonic_ns()}"
            r = c.post(f"{one_slot.url}/gradio_api/queue/join", json={"data": data, "fn_index": fn_index,
                                                                      "session_hash": session})
            if r.status_code == 200:
                stream = c.get(f"{one_slot.url}/gradio_api/queue/data", params={"session_hash": session}).text
                assert json.dumps(MESSAGES["bad_call"])[1:-1] in stream, stream
        assert c.post(f"{one_slot.url}/gradio_api/call/no_such_api", json={"data": [None]}).status_code == 500
        event = c.post(f"{one_slot.url}/gradio_api/call/predict", json={"data": [_file_data("/etc/hostname")]})
        assert "event: error" in c.get(f"{one_slot.url}/gradio_api/call/predict/{event.json()['event_id']}").text

    def added() -> str:
        return one_slot.log[len(before):]

    # A route's line comes once Gradio has answered its 500: maybe after the answer.
    _wait_for("every call logged", lambda: added().count("a Gradio route failed") == 3)
    assert "Traceback" not in added() and "ERROR" not in added(), added()
    assert added().count("refused a malformed API call") == 4, added()


@pytest.fixture(scope="module")
def workarounds():
    """serving.gradio_workarounds imported into the test process, the environment it sets on import put back."""
    saved = dict(os.environ)
    try:
        from serving import gradio_workarounds
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return gradio_workarounds


@pytest.mark.parametrize("error, malformed", [(KeyError("999"), True), (ValueError("needed: 1, got: 0"), True),
                                               (RuntimeError("a bug of ours"), False),
                                               (OSError(28, "No space left on device"), False)])
def test_only_malformed_calls_are_kept_out_of_the_error_log(workarounds, caplog, error, malformed):
    """What a malformed call raises is one INFO line; anything else is the server's own fault, and is logged as an
    ERROR with its traceback: before, a bug of ours looked like a visitor's malformed call."""

    async def fails(*args, **kwargs):
        raise error

    demo = SimpleNamespace(preprocess_data=fails)
    workarounds.refuse_malformed_calls(demo)
    route = workarounds.QuietRouteErrors(fails)
    with caplog.at_level(logging.DEBUG, logger=workarounds.__name__):
        with pytest.raises(workarounds.gr.Error) as preprocessing:
            asyncio.run(demo.preprocess_data(SimpleNamespace(fn=print, name="classify", _id=1), [], None))
        if malformed:
            asyncio.run(route({"type": "http", "method": "POST", "path": "/gradio_api/queue/join"}, None, None))
        else:
            with pytest.raises(type(error)):  # on to uvicorn, which logs it as an ERROR with its traceback
                asyncio.run(route({"type": "http", "method": "POST", "path": "/gradio_api/queue/join"}, None, None))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    if malformed:
        assert preprocessing.value.message == MESSAGES["bad_call"] and errors == []
        assert [r.getMessage().split(":")[0] for r in caplog.records if r.levelno == logging.INFO] == [
            "refused a malformed API call", "a Gradio route failed"]
    else:
        assert preprocessing.value.message == MESSAGES["internal"]
        assert len(errors) == 1 and errors[0].exc_info[1] is error, errors


# 5. A deadline for request headers, a pace for request bodies, and a bound on open connections.

@pytest.fixture(scope="module", params=["httptools", "h11"])
def short_deadline(request, tiny_model):
    """The app with a 1 s header deadline, 1 s of grace for a body (then 1 KB/s, the default) and 20 connections at
    most, on uvicorn's httptools protocol (when installed, as here) or its h11 one (what a Space runs: httptools
    isn't in requirements.txt)."""
    env = {"MODEL_DIR": str(tiny_model.folder), "APP_HEADER_TIMEOUT": "1", "APP_MAX_CONNECTIONS": "20",
           "APP_UPLOAD_GRACE": "1"}
    app = LiveApp(env)
    if request.param == "h11":  # uvicorn picks h11 when httptools can't be imported
        code = ("import runpy, sys; sys.modules['httptools'] = None; "
                f"runpy.run_path({str(ROOT / 'app.py')!r}, run_name='__main__')")
        app.command = [sys.executable, "-c", code]
    with app:
        yield app


def _partial_requests(app: LiveApp, n: int) -> list[socket.socket]:
    """n connections that never finish their request headers: silent, half a request line, headers without the
    blank line, and a whole request followed by half of the next one on the same connection."""
    heads = [b"", b"GET /conf", b"GET /config HTTP/1.1\r\nHost: x\r\nUser-Agent: slow\r\n",
             b"GET /config HTTP/1.1\r\nHost: x\r\n\r\nGET /config HTTP/1.1\r\nHost: x\r\n"]
    sockets = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", app.port), timeout=10)
        s.sendall(heads[i % len(heads)])
        sockets.append(s)
    return sockets


def _closed_by_server(s: socket.socket, within: float) -> bool:
    """Whether the server closes `s` within `within` seconds (any response to a whole request is read and skipped)."""
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            if not s.recv(65536):
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return False


def _dribbled_for(app: LiveApp, most: float) -> float | None:
    """Send a request line and headers a byte every 0.2 s: the seconds until the server closed the connection, or None
    if it was still open after `most` seconds."""
    with socket.create_connection(("127.0.0.1", app.port), timeout=10) as s:
        start = time.monotonic()
        for byte in b"GET /config HTTP/1.1\r\nHost: x\r\nUser-Agent: a very slow client indeed\r\n\r\n":
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - start
            if time.monotonic() - start > most:
                return None
            time.sleep(0.2)
    return None


def test_connections_that_never_finish_their_headers_are_closed(short_deadline):
    sockets = _partial_requests(short_deadline, 12)
    try:
        assert httpx.get(short_deadline.url + "/config", timeout=10).status_code == 200  # meanwhile, as ever
        assert all(_closed_by_server(s, within=4) for s in sockets)  # 1 s here; uvicorn alone: never
        # Sending all the while doesn't help: the deadline is for the whole request line and headers.
        assert (_dribbled_for(short_deadline, most=6) or 99) < 4
        assert httpx.get(short_deadline.url + "/config", timeout=10).status_code == 200
    finally:
        for s in sockets:
            s.close()


def test_past_the_connection_bound_new_requests_get_503_until_the_deadline_closes_the_idle_ones(short_deadline):
    sockets = _partial_requests(short_deadline, 24)
    try:  # once uvicorn has taken them all in (connected here isn't yet accepted there)
        _wait_for("a 503", lambda: httpx.get(short_deadline.url + "/config", timeout=10).status_code == 503, 4)
        assert all(_closed_by_server(s, within=4) for s in sockets)
        assert httpx.get(short_deadline.url + "/config", timeout=10).status_code == 200
    finally:
        for s in sockets:
            s.close()


def _post_head(app: LiveApp, path: str, length: int) -> bytes:
    """The request line and headers of a multipart POST whose body (boundary xyz) is `length` bytes long; the server
    closes the connection after its answer."""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{app.port}\r\nContent-Type: multipart/form-data; boundary=xyz"
            f"\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n").encode()


def _answer(s: socket.socket) -> tuple[bytes, bytes]:
    """The response on `s`, read until the server closes the connection: its status line and body."""
    answer = b""
    while chunk := s.recv(65536):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], body


def test_a_body_must_keep_coming(short_deadline, example):
    """A body sent a byte at a time held its connection for ever: uvicorn has no deadline for a body, and the header
    deadline ends with the headers. Now a body under 1 KB/s on average once the grace (1 s here) has passed is cut
    off with a 408 and its connection closed; one that keeps coming well above that may take long past the grace."""
    _a_trickle_is_cut_off(short_deadline)
    _a_slow_but_steady_upload_is_taken(short_deadline)
    assert _classify(short_deadline, example.read_bytes(), example.name).status_code == 200  # an ordinary upload


def _a_trickle_is_cut_off(app: LiveApp) -> None:
    """A body sent at 20 bytes a second, until the server answers."""
    body = _post_request(app, "/classify", "photo.jpg", b"x" * 5000).partition(b"\r\n\r\n")[2]
    with socket.create_connection(("127.0.0.1", app.port), timeout=60) as s:
        s.sendall(_post_head(app, "/classify", len(body)))
        deadline = time.monotonic() + 60
        for byte in body:
            assert time.monotonic() < deadline, "the server still took the body a minute later"
            if select.select([s], [], [], 0.05)[0]:  # the answer has come
                break
            s.sendall(bytes([byte]))
        status, answer = _answer(s)
    assert status == b"HTTP/1.1 408 Request Timeout", (status, answer)
    assert json.loads(answer) == {"error": MESSAGES["slow_upload"], "reason": "slow_upload"}


def _a_slow_but_steady_upload_is_taken(app: LiveApp) -> None:
    """40 KB at 20 KB/s, 20 times the minimum, for twice the grace; as a 10 MB photo on a slow 1 Mbit/s link takes
    80 s at 125 times the default minimum."""
    data = np.random.default_rng(0).bytes(40_000)
    body = (b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="slow.bin"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--xyz--\r\n")
    with socket.create_connection(("127.0.0.1", app.port), timeout=60) as s:
        s.sendall(_post_head(app, "/gradio_api/upload", len(body)))
        for first in range(0, len(body), 2_000):
            s.sendall(body[first:first + 2_000])
            time.sleep(0.1)  # the pace of the upload, not a wait for the server
        status, answer = _answer(s)
    assert status == b"HTTP/1.1 200 OK", (status, answer)
    assert Path(json.loads(answer)[0]).read_bytes() == data


# 6. Security headers.

def test_the_page_runs_under_its_policy(one_slot):
    """The page's policy allows its inline scripts (Gradio's config among them) by their hashes: in headless Chromium
    the page comes up, its scripts having run, without one violation of the policy."""
    with sync_playwright() as playwright:  # not conftest's `browser`: its event loop would stay open for the module
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-background-networking"])
        try:
            page = browser.new_page()
            console = []
            page.on("console", lambda message: console.append(message.text))
            page.add_init_script(WATCH_CSP)
            page.goto(one_slot.url, wait_until="networkidle")
            page.get_by_role("button", name="Submit").wait_for(timeout=30_000)  # drawn by Gradio's scripts
            violations = page.evaluate("window.cspViolations") + [m for m in console if "Content Security" in m]
        finally:
            browser.close()
    assert violations == [], violations


def test_every_response_has_security_headers(one_slot, example):
    page = httpx.get(one_slot.url + "/", timeout=30)
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'self'" in csp and "object-src 'none'" in csp and "'unsafe-inline'" not in \
        csp.split("script-src")[1].split(";")[0]
    for r in (page, httpx.get(one_slot.url + "/config", timeout=30),
              httpx.post(one_slot.url + "/classify", files={"file": example.open("rb")}, timeout=30),
              httpx.post(one_slot.url + "/classify", content=b"x" * 10, timeout=30)):
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["x-frame-options"] == "SAMEORIGIN", r.url
        assert r.headers["referrer-policy"] == "same-origin", r.url
        assert "frame-ancestors 'self'" in r.headers["content-security-policy"], r.url


def test_fastapis_docs_pages_are_off_and_the_api_is_described(one_slot):
    """/docs and /redoc load Swagger UI and ReDoc from cdn.jsdelivr.net, which the policy refuses: they were blank.
    /openapi.json describes the API instead."""
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert httpx.get(one_slot.url + path, timeout=30).status_code == 404, path
    assert "/classify" in httpx.get(one_slot.url + "/openapi.json", timeout=30).json()["paths"]


def test_on_a_space_huggingface_co_may_frame_the_page(tiny_model):
    """SPACE_ID is set on a Space, whose page on huggingface.co shows the app in a frame (tests/test_app_browser.py
    frames it for real)."""
    with LiveApp({"MODEL_DIR": str(tiny_model.folder), "SPACE_ID": "you/demo"}) as app:
        r = httpx.get(app.url + "/", timeout=30)
    assert "frame-ancestors 'self' https://huggingface.co" in r.headers["content-security-policy"]
    assert "x-frame-options" not in r.headers  # it can't name huggingface.co; browsers follow frame-ancestors

