"""The public demo: upload a photo, get the model's top labels. Also an API and a JSON endpoint, and a
second tab, "How training works", that shows stochastic gradient descent fitting a line (lesson 2's second half).

    python app.py                                        # http://localhost:7860
    MODEL_REPO=you/bears MODEL_REVISION=<sha> python app.py

Serves with onnxruntime, numpy and Pillow: no torch, no fastai. The model comes from MODEL_REPO (at
MODEL_REVISION), else MODEL_DIR, else models/bears; see serving/loader.py.
"""
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from serving.loader import NoModel, load_model

# Gradio imports matplotlib on the first event to switch it to Agg; naming Agg now spares it importing
# pyplot to find the default backend first (~0.2 s off the first prediction).
os.environ.setdefault("MPLBACKEND", "agg")
# After every event Gradio rebuilds its monitoring summary, a pandas DataFrame of up to 10,000 past events.
# Every 1,000 events, over the last 1,000: ~5% more predictions a second, 1 ms less each (bench/app.py).
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1000")

# Set before the model loads, so that its lines (what was loaded, from where) are in the log too.
logging.basicConfig(level=logging.INFO)
# Load the model while Gradio imports: onnxruntime optimizes it (serving/model.py) and the Hub downloads it
# outside the GIL, so on 2 cores the two overlap and the app is up ~0.15 s sooner.
loading = ThreadPoolExecutor(max_workers=1, thread_name_prefix="load-model").submit(load_model)

import gradio as gr  # noqa: E402

from serving.imaging import ImageRejected  # noqa: E402
from serving.sgd_tab import build_sgd_tab  # noqa: E402
from serving.web import MESSAGES, BodyLimit, UploadedImage, json_api, visitor_message  # noqa: E402

try:
    loaded = loading.result()
except NoModel as exc:
    raise SystemExit(f"app.py: {exc}") from None
model = loaded.model

log = logging.getLogger("app")
MAX_UPLOAD_BYTES = int(float(os.environ.get("MAX_UPLOAD_MB", "10")) * 1_000_000)


def classify(image_path: str | None) -> dict[str, float]:
    """{label: probability} for one uploaded image."""
    # print_exception=False: a visitor's bad upload is not a server fault, so no traceback in the log.
    if image_path is None:
        raise gr.Error("Upload a photo (or take one with the webcam) first.", print_exception=False)
    try:
        return model.classify(image_path)
    except ImageRejected as exc:
        log.info("refused an upload: %s", exc.reason)
        raise gr.Error(visitor_message(exc), print_exception=False) from None
    except Exception:
        log.exception("classification failed")  # details stay in the server log
        raise gr.Error(MESSAGES["internal"], print_exception=False) from None


error_rate = f"{loaded.error_rate:.1%}" if loaded.error_rate is not None else "not measured"
# One gr.Blocks for the whole page, not an Interface and a TabbedInterface around it: every Blocks builds
# its own FastAPI app when it closes, and every API call copies the config of every component on the page.
with gr.Blocks(title="What is in this photo?") as demo:
    with gr.Tab("Classify"):
        gr.Markdown(f"# What is in this photo?\nLabels: **{', '.join(model.labels)}**. "
                    f"Validation error rate: {error_rate}. Model: `{loaded.source}`.")
        with gr.Row():
            with gr.Column():
                photo = UploadedImage(type="filepath", sources=["upload", "webcam", "clipboard"], label="Photo")
                with gr.Row():
                    clear = gr.ClearButton()
                    submit = gr.Button("Submit", variant="primary")
            prediction = gr.Label(num_top_classes=min(3, len(model.labels)), label="Prediction")
        clear.add([photo, prediction])
        if loaded.examples:
            gr.Examples(loaded.examples, inputs=photo)
        submit.click(classify, photo, prediction, api_name="predict")
    with gr.Tab("How training works"):
        build_sgd_tab(demo)

# Bounded: past 64 waiting, visitors are told it's busy. Four at a time on 2 cores: onnxruntime and Pillow work
# outside the GIL, so while some predictions compute, Gradio's Python handles the others (bench/app.py: ~6%
# more a second than two at a time, at the same single-visitor latency).
demo.queue(max_size=64, default_concurrency_limit=4)
# Memory and disk stay flat under load (bench/load.py). Gradio keeps a copy of every component's config for
# each session, and every API call is a new session: with its default of 10,000, RSS grew ~55 KB a call here.
# This app keeps nothing in a session (the SGD tab sends its state with each event), so old ones can go.
demo.state_session_capacity = 256
demo.delete_cache = (60, 600)  # every minute, delete uploads older than 10 minutes; else they pile up on disk

app = gr.mount_gradio_app(
    json_api(model, max_bytes=MAX_UPLOAD_BYTES), demo, path="/", max_file_size=MAX_UPLOAD_BYTES, show_error=False,
)
# Every request body is capped as it arrives, not after: an upload, or an image sent inline as base64 (4/3 larger).
app.add_middleware(BodyLimit, max_bytes=MAX_UPLOAD_BYTES * 4 // 3 + 64 * 1024)
# Gradio refuses API calls that name files on the server instead of uploads only once `launch()` has set this;
# mounted, it never is, and {"path": "/etc/hostname"} (or /dev/zero, read forever) would be taken as input.
demo.has_launched = True

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
                port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), timeout_keep_alive=5)
