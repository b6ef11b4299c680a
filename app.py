"""The public demo: upload a photo, get the model's top labels. Also an API and a JSON endpoint, and a
second tab, "How training works", that shows stochastic gradient descent fitting a line (lesson 2's second half).

    python app.py                                        # http://localhost:7860
    MODEL_REPO=you/bears MODEL_REVISION=<sha> python app.py
    gradio app.py                                        # reload mode while editing (no /classify there)

Serves with onnxruntime, numpy and Pillow: no torch, no fastai. The model comes from MODEL_REPO (at
MODEL_REVISION), else MODEL_DIR, else models/bears; see serving/loader.py.
"""
import logging
import os

import gradio as gr

from serving.imaging import ImageRejected
from serving.loader import NoModel, load_model
from serving.sgd_tab import build_sgd_tab
from serving.web import UploadedImage, json_api, visitor_message

log = logging.getLogger("app")
MAX_UPLOAD_BYTES = int(float(os.environ.get("MAX_UPLOAD_MB", "10")) * 1_000_000)

try:
    loaded = load_model()
except NoModel as exc:
    raise SystemExit(f"app.py: {exc}") from None
model = loaded.model


def classify(image_path: str | None) -> dict[str, float]:
    """{label: probability} for one uploaded image."""
    if image_path is None:
        raise gr.Error("Upload a photo (or take one with the webcam) first.")
    try:
        return model.classify(image_path)
    except ImageRejected as exc:
        raise gr.Error(visitor_message(exc)) from None
    except Exception:
        log.exception("classification failed")  # details stay in the server log
        raise gr.Error("Something went wrong on our side. Please try again.") from None


error_rate = f"{loaded.error_rate:.1%}" if loaded.error_rate is not None else "not measured"
classifier_tab = gr.Interface(
    fn=classify,
    inputs=UploadedImage(type="filepath", sources=["upload", "webcam", "clipboard"], label="Photo"),
    outputs=gr.Label(num_top_classes=min(3, len(model.labels)), label="Prediction"),
    examples=loaded.examples or None,
    cache_examples=False,
    title="What is in this photo?",
    description=(f"Labels: **{', '.join(model.labels)}**. Validation error rate: {error_rate}. "
                 f"Model: `{loaded.source}`."),
    flagging_mode="never",
    api_name="predict",
)
sgd_tab = build_sgd_tab()
demo = gr.TabbedInterface([classifier_tab, sgd_tab], ["Classify", "How training works"])
demo.queue(max_size=64, default_concurrency_limit=2)  # bounded: past 64 waiting, visitors are told it's busy
# Memory and disk stay flat under load (bench/load.py). Gradio keeps a copy of every component's config for
# each session, and every API call is a new session: with its default of 10,000, RSS grew ~55 KB a call here.
# This app keeps nothing in a session (the SGD tab sends its state with each event), so old ones can go.
demo.state_session_capacity = 256
demo.delete_cache = (60, 600)  # every minute, delete uploads older than 10 minutes; else they pile up on disk

app = gr.mount_gradio_app(
    json_api(model, max_bytes=MAX_UPLOAD_BYTES), demo, path="/", max_file_size=MAX_UPLOAD_BYTES, show_error=False,
)

if __name__ == "__main__":
    import uvicorn

    logging.basicConfig(level=logging.INFO)
    uvicorn.run(app, host=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
                port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), timeout_keep_alive=5)
