"""The web pieces app.py puts together: visitor-friendly errors, the JSON endpoint, the request body cap.

    curl -F file=@bear.jpg http://localhost:7860/classify
    {"label": "grizzly", "confidences": {"grizzly": 0.97, "black": 0.02, "teddy": 0.01}}
"""
from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI, File, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from gradio_client import utils as client_utils
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from serving.imaging import MAX_PIXELS, ImageRejected
from serving.loader import Model
from serving.settings import Settings

log = logging.getLogger(__name__)

HOW_TO_SEND = "Send the image as a multipart form field named `file`, e.g. `curl -F file=@photo.jpg URL/classify`."
# What a visitor reads for each reason an upload is refused: what happened and what to do.
MESSAGES = {
    "empty": "That file is empty. Please upload a photo.",
    "not_image": "That file isn't a picture this demo can read. Please upload a JPEG, PNG, WebP, GIF, BMP or TIFF "
                 "image.",
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
    "internal": "Something went wrong on our side. Please try again.",
    "no_file": HOW_TO_SEND,
    "method": "/classify takes a POST. " + HOW_TO_SEND,
}
STATUS = {"empty": 400, "not_image": 415, "truncated": 422, "corrupt": 422, "too_many_pixels": 413,
          "too_large": 413, "too_costly": 422, "blank": 422, "url": 400, "busy": 503, "internal": 500, "no_file": 400,
          "method": 405}
HEADERS = {"busy": {"Retry-After": "1"}, "method": {"Allow": "POST"}}


def visitor_message(exc: ImageRejected) -> str:
    """A sentence for the visitor about why their upload was refused."""
    return MESSAGES.get(exc.reason, MESSAGES["not_image"])


class Prediction(BaseModel):
    label: str
    confidences: dict[str, float]


class ErrorBody(BaseModel):
    error: str
    reason: str


def json_api(model: Model, settings: Settings) -> FastAPI:
    """A FastAPI app with `POST /classify` (multipart `file`) → {"label", "confidences"}, in `settings`' limits."""
    app = FastAPI(title="Image classifier", description=f"Labels: {', '.join(model.labels)}")
    slots = asyncio.Semaphore(settings.concurrency)
    max_bytes = settings.max_upload_bytes

    @app.exception_handler(RequestValidationError)
    async def no_file(request, exc):  # FastAPI's own answer, {"detail": [...]}, is not the documented ErrorBody
        sent = [e.get("input") for e in exc.errors() if tuple(e.get("loc", ())) == ("body", "file")]
        return _error("url" if any(client_utils.is_http_url_like(str(v)) for v in sent) else "no_file")

    @app.exception_handler(HTTPException)
    async def unreadable_body(request, exc):  # a malformed multipart body: the same, {"detail": "..."}
        if exc.status_code == 400 and getattr(request.scope.get("route"), "path", None) == "/classify":
            return _error("no_file")
        return await http_exception_handler(request, exc)

    @app.api_route("/classify", methods=["GET", "HEAD", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def classify_takes_post():  # else Gradio, mounted at /, answers these with a bare 404
        return _error("method")

    @app.post("/classify", response_model=Prediction,
              responses={code: {"model": ErrorBody} for code in sorted(set(STATUS.values()))})
    async def classify(file: UploadFile = File(..., description="an image: JPEG, PNG, WebP, GIF, BMP or TIFF")):
        """Classify one image; errors come back as JSON with a 4xx (or 503 when busy)."""
        data = await file.read(max_bytes + 1)
        if len(data) > max_bytes:
            return _error("too_large")
        try:  # bounded: past this wait, say busy instead of queueing forever
            await asyncio.wait_for(slots.acquire(), timeout=settings.busy_timeout)
        except TimeoutError:
            return _error("busy")
        try:
            probs = await run_in_threadpool(model.classify, data)
        except ImageRejected as exc:
            log.info("refused an upload: %s", exc.reason)
            return _error(exc.reason if exc.reason in STATUS else "not_image")
        except Exception:
            log.exception("classification failed")  # the details stay in the server log
            return _error("internal")
        finally:
            slots.release()
        return Prediction(label=max(probs, key=probs.get), confidences=probs)

    return app


class BodyLimit:
    """ASGI middleware: refuse a request body over `max_bytes` as it arrives, with the `too_large` ErrorBody.

    Without it, Starlette writes a whole multipart upload to a temporary file before /classify can look at
    its size (so a huge body took time and as much disk to refuse), and Gradio's API takes an inline, base64
    image of any size.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await _error("too_large")(scope, receive, send)
        seen, over, started = 0, False, False

        async def counted():
            nonlocal seen, over
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                over = True
                # The multipart parsers' own error: Gradio's deletes the upload files it had begun on this one.
                raise MultiPartException(f"request body over {self.max_bytes} bytes")
            return message

        async def unless_over(message):  # whatever the app answers to the cut-off body is replaced below
            nonlocal started
            if not over:
                started = True
                await send(message)

        try:
            await self.app(scope, counted, unless_over)
        except Exception:
            if not over:
                raise
        if over and not started:
            await _error("too_large")(scope, receive, send)


def _error(reason: str) -> JSONResponse:
    return JSONResponse({"error": MESSAGES[reason], "reason": reason}, status_code=STATUS[reason],
                        headers=HEADERS.get(reason))
