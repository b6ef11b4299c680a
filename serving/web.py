"""The web pieces app.py puts together: visitor-friendly errors, the JSON endpoint, the one concurrency limit (Slots),
the request body's bounds (its size and its pace), the security headers, and the HTTP protocol with a deadline for
request headers.

    curl -F file=@bear.jpg http://localhost:7860/classify
    {"label": "grizzly", "confidences": {"grizzly": 0.97, "black": 0.02, "teddy": 0.01}}
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from gradio_client import utils as client_utils
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from serving.imaging import FORMAT_NAMES, MAX_PIXELS, ImageRejected
from serving.loader import Model
from serving.settings import Settings

log = logging.getLogger(__name__)

HOW_TO_SEND = "Send the image as a multipart form field named `file`, e.g. `curl -F file=@photo.jpg URL/classify`."
# What a visitor reads for each reason an upload is refused: what happened and what to do.
MESSAGES = {
    "empty": "That file is empty. Please upload a photo.",
    "not_image": f"That file isn't a picture this demo can read. Please upload a photo: {FORMAT_NAMES}.",
    "truncated": "That image is cut off (an incomplete upload or a damaged file). Please try another photo.",
    "corrupt": "That image file is damaged and can't be read. Please try another photo.",
    "too_many_pixels": f"That image has too many pixels (over {MAX_PIXELS // 1_000_000} megapixels). "
                       "Please upload a smaller photo.",
    "too_large": "That file is too big. Please upload a smaller photo.",
    "too_costly": "That image is built in a way that would take this demo too long to read (for example thousands "
                  "of layers or embedded profiles). Please upload an ordinary photo.",
    "blank": "That image is blank: one flat colour, with nothing to recognise. Please upload a photo.",
    "url": "This demo doesn't fetch images from links. Download the image, then upload the file.",
    "busy": "The demo is busy right now. Please try again in a moment.",
    "slow_upload": "That upload came in too slowly and was stopped. Please try again on a faster connection.",
    "internal": "Something went wrong on our side. Please try again.",
    "bad_call": "That API call doesn't match this demo's API. See \"Use via API\" at the foot of the page, or call "
                "it with gradio_client.",
    "no_file": HOW_TO_SEND,
    "method": "/classify takes a POST. " + HOW_TO_SEND,
}
STATUS = {"empty": 400, "not_image": 415, "truncated": 422, "corrupt": 422, "too_many_pixels": 413,
          "too_large": 413, "too_costly": 422, "blank": 422, "url": 400, "busy": 503, "internal": 500, "no_file": 400,
          "method": 405, "bad_call": 400, "slow_upload": 408}
# slow_upload: the rest of the body may still be on its way, and must not be read as the next request.
HEADERS = {"busy": {"Retry-After": "1"}, "method": {"Allow": "POST"}, "slow_upload": {"Connection": "close"}}


def visitor_message(exc: ImageRejected) -> str:
    """A sentence for the visitor about why their upload was refused."""
    return MESSAGES.get(exc.reason, MESSAGES["not_image"])


class Prediction(BaseModel):
    label: str = Field(description="the most probable label")
    confidences: dict[str, float] = Field(description="every label's probability; they sum to 1")
    in_domain: bool | None = Field(description="false when the image looks like none of the labels (the model's best "
                                               "guess is still given); null when this model has no such check")
    novelty: float | None = Field(description="how far the image is from the training images (cosine distance to "
                                              "the k-th nearest); null without the check")
    novelty_threshold: float | None = Field(description="the novelty above which in_domain is false; null without "
                                                        "the check")
    precision: str = Field(description="which model answered: float32 (model.onnx) or int8 (model.int8.onnx)")


class ErrorBody(BaseModel):
    error: str
    reason: str


class Busy(Exception):
    """No slot came free within the wait."""


class Gone(Exception):
    """The client left before its turn came: nothing was decoded for it."""


class Slots:
    """The app's one concurrency limit: at most `n` images decoded and classified at once, whichever way they came
    (the page, Gradio's API, /classify). app.py makes one and passes it to both; whoever waits longest goes first.
    A request that has to wait says so in the log, and again when its turn comes: "/classify for 10.0.0.7:51234 is
    waiting for one of 4 slots", "/classify for 10.0.0.7:51234 got a slot after 1.20 s".

        probs = await slots.run(model.classify, data, caller="/classify", wait=10, gone=client_left(request.receive))
    """

    def __init__(self, n: int):
        self.n = n
        self._free = asyncio.Semaphore(n)
        self._asking = 0  # requests in run(): those in a slot, then those waiting, in their order

    async def run(self, fn: Callable[..., Any], *args: Any, caller: str, wait: float | None = None,
                  gone: Awaitable[Any] | None = None) -> Any:
        """fn(*args) in a worker thread, once a slot is free. Raises Busy if none is within `wait` seconds, and Gone,
        without calling fn, if `gone` (an awaitable that completes when the client has left) completes first.
        `caller` names the request, for the log: the way it came, and whose it is."""
        ahead, self._asking = self._asking, self._asking + 1
        try:
            if ahead < self.n:
                await self._take(wait, gone)
            else:  # every slot is taken, or will be by those who came before
                log.info("%s is waiting for one of %d slots", caller, self.n)
                since = time.monotonic()
                await self._take(wait, gone)
                log.info("%s got a slot after %.2f s", caller, time.monotonic() - since)
            try:
                return await run_in_threadpool(fn, *args)
            finally:
                self._free.release()
        finally:
            self._asking -= 1

    async def _take(self, wait: float | None, gone: Awaitable[Any] | None) -> None:
        taking = asyncio.ensure_future(self._free.acquire())
        leaving = asyncio.ensure_future(gone) if gone is not None else asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait((taking, leaving), timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # this request was cancelled while it waited
            self._give_back(taking)
            raise
        finally:
            leaving.cancel()
        if leaving.done() and not leaving.cancelled():
            leaving.exception()  # a receive() that failed counts as a client gone, like a disconnect
            self._give_back(taking)
            raise Gone
        if not taking.done():
            self._give_back(taking)
            raise Busy

    def _give_back(self, taking: asyncio.Future) -> None:
        """The slot `taking` holds or waits for, back to the others (asyncio.Semaphore passes on one just given)."""
        if not taking.done():
            taking.cancel()
        elif not taking.cancelled() and taking.exception() is None:
            self._free.release()


def _address(request: Request) -> str:
    """The client's address and port, as uvicorn's access log gives them."""
    return f"{request.client.host}:{request.client.port}" if request.client else "an unknown client"


async def client_left(receive: Callable[[], Awaitable[dict]]) -> None:
    """Return once the client has closed its connection; for a request whose body has been read in full."""
    while (await receive())["type"] != "http.disconnect":
        pass


def json_api(model: Model, settings: Settings, slots: Slots) -> FastAPI:
    """A FastAPI app with `POST /classify` (multipart `file`) → {"label", "confidences"}, in `settings`' limits and
    the app's `slots`, shared with the page."""
    # No /docs or /redoc: FastAPI's pages load Swagger and ReDoc from a CDN, which the page's CSP refuses. The API is
    # described at /openapi.json.
    app = FastAPI(title="Image classifier", description=f"Labels: {', '.join(model.labels)}", docs_url=None,
                  redoc_url=None)
    max_bytes = settings.max_upload_bytes
    precision = getattr(model, "precision", "float32")

    @app.exception_handler(RequestValidationError)
    async def no_file(request, exc):  # FastAPI's own answer, {"detail": [...]}, is not the documented ErrorBody
        sent = [e.get("input") for e in exc.errors() if tuple(e.get("loc", ())) == ("body", "file")]
        return error_response("url" if any(client_utils.is_http_url_like(str(v)) for v in sent) else "no_file")

    @app.exception_handler(HTTPException)
    async def unreadable_body(request, exc):  # a malformed multipart body: the same, {"detail": "..."}
        if exc.status_code == 400 and getattr(request.scope.get("route"), "path", None) == "/classify":
            return error_response("no_file")
        return await http_exception_handler(request, exc)

    @app.api_route("/classify", methods=["GET", "HEAD", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def classify_takes_post():  # else Gradio, mounted at /, answers these with a bare 404
        return error_response("method")

    @app.post("/classify", response_model=Prediction,
              responses={code: {"model": ErrorBody} for code in sorted(set(STATUS.values()))})
    async def classify(request: Request,
                       file: UploadFile = File(..., description=f"an image: {FORMAT_NAMES}")):
        """Classify one image; errors come back as JSON with a 4xx (or 503 when busy)."""
        data = await file.read(max_bytes + 1)
        if len(data) > max_bytes:
            return error_response("too_large")
        try:  # bounded: past this wait, say busy instead of queueing forever; a client gone meanwhile costs nothing
            verdict = await slots.run(model.judge, data, caller=f"/classify for {_address(request)}",
                                      wait=settings.busy_timeout, gone=client_left(request.receive))
        except Busy:
            return error_response("busy")
        except Gone:
            log.info("not classified: the client left before its turn")
            return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
        except ImageRejected as exc:
            log.info("refused an upload: %s (%s)", exc.reason, exc)  # the details, for the log only
            return error_response(exc.reason if exc.reason in STATUS else "not_image")
        except Exception:
            log.exception("classification failed")  # the details stay in the server log
            return error_response("internal")
        return Prediction(label=verdict.label, confidences=verdict.probs, in_domain=verdict.in_domain,
                          novelty=verdict.novelty, novelty_threshold=verdict.threshold, precision=precision)

    return app


class BodyLimit:
    """ASGI middleware: every request body within bounds as it arrives. One over `max_bytes` is refused (`too_large`);
    one that comes in slower than `min_rate` bytes a second on average, counted from the end of its headers once
    `grace` seconds have passed, is cut off (`slow_upload`, and the connection closed). Both get the ErrorBody.

    Without it, Starlette writes a whole multipart upload to a temporary file before /classify can look at
    its size (so a huge body took time and as much disk to refuse), Gradio's API takes an inline, base64
    image of any size, and a client that sends its body a byte at a time holds its connection for ever (uvicorn
    has no deadline for a body, and HeaderTimeout's ends with the headers).
    """

    def __init__(self, app, max_bytes: int, grace: float, min_rate: float):
        self.app, self.max_bytes, self.grace, self.min_rate = app, max_bytes, grace, min_rate

    def deadline(self, seen: int) -> float:
        """Seconds after the headers by which more than `seen` bytes of the body must have come."""
        return max(self.grace, seen / self.min_rate)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await error_response("too_large")(scope, receive, send)
        loop = asyncio.get_running_loop()
        start = loop.time()
        seen, complete, cut, started = 0, False, None, False

        async def counted():
            nonlocal seen, complete, cut
            if complete:  # the body is in: what comes next is the client leaving, however long it takes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), start + self.deadline(seen) - loop.time())
            except TimeoutError:
                cut = "slow_upload"
                log.info("cut off a request body: %d bytes in %.0f s", seen, loop.time() - start)
                raise MultiPartException("request body too slow") from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                cut = "too_large"
                # The multipart parsers' own error: Gradio's deletes the upload files it had begun on this one.
                raise MultiPartException(f"request body over {self.max_bytes} bytes")
            return message

        async def unless_cut(message):  # whatever the app answers to the cut-off body is replaced below
            nonlocal started
            if cut is None:
                started = True
                await send(message)

        try:
            await self.app(scope, counted, unless_cut)
        except Exception:
            if cut is None:
                raise
        if cut is not None and not started:
            await error_response(cut)(scope, receive, send)


class HeaderTimeout(AutoHTTPProtocol):
    """uvicorn's HTTP protocol (httptools where installed, else h11, as uvicorn picks) that closes a connection whose
    request line and headers haven't all come within `timeout` seconds of its opening, or of the end of the response
    before. uvicorn has no such deadline: a connection that never finishes its headers stays open for ever.

        uvicorn.run(app, http=HeaderTimeout.after(5))      # app.py; or `uvicorn ... --http serving.web:HeaderTimeout`
    """

    timeout = 5.0
    _deadline: asyncio.TimerHandle | None = None

    @classmethod
    def after(cls, seconds: float) -> type[HeaderTimeout]:
        return type(cls.__name__, (cls,), {"timeout": seconds})

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._start_deadline()

    def data_received(self, data: bytes) -> None:
        before = self.cycle  # uvicorn's request, replaced as soon as the next one's headers are complete
        super().data_received(data)
        if self.cycle is not before:  # its headers are in: the request runs
            self._stop_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # which starts a request already received in full (pipelined), if any
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self._start_deadline()  # for the next request's headers, however many of its bytes came already

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def _start_deadline(self) -> None:
        self._stop_deadline()
        self._deadline = self.loop.call_later(self.timeout, self._too_slow)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.get_protocol() is self and not self.transport.is_closing():  # (not handed to a WebSocket)
            self.transport.close()


# The page's policy: Gradio's own scripts and styles, the images and data the page makes itself, no plugins, and
# frames only by `frame_ancestors`. Gradio's page has inline scripts (its config), allowed one by one by their hashes,
# and compiles each event's js= (the Clear button's, for one) with the AsyncFunction constructor: hence 'unsafe-eval'.
PAGE_CSP = ("default-src 'self'; script-src 'self' 'unsafe-eval'{hashes}; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; media-src 'self' data: blob:; font-src 'self' data:; "
            "connect-src 'self' data: blob:; worker-src 'self' blob:; object-src 'none'; base-uri 'self'; "
            "form-action 'self'; frame-ancestors {ancestors}")
# Anything else (files, JSON, scripts), should it be opened as a page: nothing runs, nothing loads but itself.
OTHER_CSP = ("default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; sandbox; "
             "frame-ancestors {ancestors}")
SECURITY_HEADERS = {b"content-security-policy", b"x-content-type-options", b"referrer-policy", b"x-frame-options"}
INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\ssrc=)[^>]*>(.*?)</script", re.IGNORECASE | re.DOTALL)


class SecurityHeaders:
    """ASGI middleware: a Content-Security-Policy, nosniff, a Referrer-Policy and (off a Space) X-Frame-Options on
    every response. `frame_ancestors` is who may frame the pages (Settings.frame_ancestors): 'self', plus
    https://huggingface.co on a Space, whose page shows the app in a frame. Browsers that know frame-ancestors ignore
    X-Frame-Options, so it is sent only where it says the same ('self' alone: SAMEORIGIN)."""

    def __init__(self, app, frame_ancestors: str):
        self.app, self.ancestors = app, frame_ancestors
        self.fixed = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin")]
        if frame_ancestors == "'self'":
            self.fixed.append((b"x-frame-options", b"SAMEORIGIN"))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, body = None, []

        async def with_headers(message):
            nonlocal start
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in SECURITY_HEADERS]
                message = {**message, "headers": headers + self.fixed}
                if dict(headers).get(b"content-type", b"").startswith(b"text/html"):
                    start = message  # a page: its policy names its inline scripts, so it waits for the whole body
                    return
                message["headers"].append((b"content-security-policy",
                                           OTHER_CSP.format(ancestors=self.ancestors).encode()))
                return await send(message)
            if start is None or message["type"] != "http.response.body":
                return await send(message)
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            page = b"".join(body)
            readable = b"content-encoding" not in dict(start["headers"])  # Gradio compresses no page; if it did,
            hashes = _script_hashes(page) if readable else ""                # its scripts would not run: none vetted
            policy = PAGE_CSP.format(hashes=hashes, ancestors=self.ancestors)
            await send({**start, "headers": start["headers"] + [(b"content-security-policy", policy.encode())]})
            await send({"type": "http.response.body", "body": page})

        await self.app(scope, receive, with_headers)


def _script_hashes(page: bytes) -> str:
    return "".join(f" 'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
                   for script in INLINE_SCRIPT.findall(page))


def error_response(reason: str) -> JSONResponse:
    """The documented ErrorBody for `reason`, with its status and headers."""
    return JSONResponse({"error": MESSAGES[reason], "reason": reason}, status_code=STATUS[reason],
                        headers=HEADERS.get(reason))
