"""The web pieces app.py puts together: visitor-friendly errors, a safe image input, the JSON endpoint.

    curl -F file=@bear.jpg http://localhost:7860/classify
    {"label": "grizzly", "confidences": {"grizzly": 0.97, "black": 0.02, "teddy": 0.01}}
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import logging

import gradio as gr
from gradio import processing_utils
from fastapi import FastAPI, File, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from serving.imaging import MAX_PIXELS, ImageRejected
from serving.loader import Model

log = logging.getLogger(__name__)

# What a visitor reads for each reason an upload is refused: what happened and what to do.
MESSAGES = {
    "empty": "That file is empty. Please upload a photo.",
    "not_image": "That file isn't a picture this demo can read. Please upload a JPEG, PNG, WebP or GIF photo.",
    "truncated": "That image is cut off (an incomplete upload or a damaged file). Please try another photo.",
    "corrupt": "That image file is damaged and can't be read. Please try another photo.",
    "too_many_pixels": f"That image has too many pixels (over {MAX_PIXELS // 1_000_000} megapixels). "
                       "Please upload a smaller photo.",
    "too_large": "That file is too big. Please upload a smaller photo.",
    "busy": "The demo is busy right now. Please try again in a moment.",
    "internal": "Something went wrong on our side. Please try again.",
    "no_file": "Send the image as a multipart form field named `file`, e.g. `curl -F file=@photo.jpg URL/classify`.",
}
STATUS = {"empty": 400, "not_image": 415, "truncated": 422, "corrupt": 422, "too_many_pixels": 413,
          "too_large": 413, "busy": 503, "internal": 500, "no_file": 400}


def visitor_message(exc: ImageRejected) -> str:
    """A sentence for the visitor about why their upload was refused."""
    return MESSAGES.get(exc.reason, MESSAGES["not_image"])


class UploadedImage(gr.Image):
    """gr.Image that hands the uploaded file to the model as it came.

    Gradio's own preprocessing opens every upload with Pillow and re-saves anything not RGB, turning
    transparent pixels black. serving.imaging prepares images the way training did and refuses bad files
    with a sentence for the visitor, so that step is skipped: it would only decode the image twice.
    """

    is_template = True  # render with gr.Image's front end

    def preprocess(self, payload):
        if payload is None:
            return None
        if not (payload.url or "").startswith("data:"):
            return payload.path  # an upload: Gradio has checked that (app.py sets has_launched)
        # An API client sent the image inline, as a data: URL. Kept byte for byte: Gradio's own decoding
        # would re-save it as lossy WebP.
        try:
            raw = base64.b64decode(payload.url.partition(",")[2], validate=True)
        except binascii.Error as exc:
            raise gr.Error(MESSAGES["not_image"]) from exc
        return processing_utils.save_bytes_to_cache(raw, "inline.img", cache_dir=self.GRADIO_CACHE)


class Prediction(BaseModel):
    label: str
    confidences: dict[str, float]


class ErrorBody(BaseModel):
    error: str
    reason: str


def json_api(model: Model, max_bytes: int, max_concurrent: int = 4) -> FastAPI:
    """A FastAPI app with `POST /classify` (multipart `file`) → {"label", "confidences"}."""
    app = FastAPI(title="Image classifier", description=f"Labels: {', '.join(model.labels)}")
    slots = asyncio.Semaphore(max_concurrent)

    @app.exception_handler(RequestValidationError)
    async def no_file(request, exc):  # FastAPI's own answer, {"detail": [...]}, is not the documented ErrorBody
        return _error("no_file")

    @app.post("/classify", response_model=Prediction,
              responses={code: {"model": ErrorBody} for code in sorted(set(STATUS.values()))})
    async def classify(file: UploadFile = File(..., description="an image: JPEG, PNG, WebP, GIF, BMP or TIFF")):
        """Classify one image; errors come back as JSON with a 4xx (or 503 when busy)."""
        data = await file.read(max_bytes + 1)
        if len(data) > max_bytes:
            return _error("too_large")
        try:  # bounded: past this wait, say busy instead of queueing forever
            await asyncio.wait_for(slots.acquire(), timeout=10)
        except TimeoutError:
            return _error("busy")
        try:
            probs = await run_in_threadpool(model.classify, data)
        except ImageRejected as exc:
            return _error(exc.reason if exc.reason in STATUS else "not_image")
        except Exception:
            log.exception("classification failed")  # the details stay in the server log
            return _error("internal")
        finally:
            slots.release()
        return Prediction(label=max(probs, key=probs.get), confidences=probs)

    return app


def _error(reason: str) -> JSONResponse:
    return JSONResponse({"error": MESSAGES[reason], "reason": reason}, status_code=STATUS[reason])
