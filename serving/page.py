"""The page at /: upload a photo, get the model's top labels; and a second tab, "How training works".

    demo = build_page(load_model(settings), settings, slots)   # app.py, which mounts it next to /classify

The Classify tab is Gradio's image_classifier demo with this app's rules: uploads prepared as training saw
them (serving.gradio_workarounds.UploadedImage), a sentence, never a traceback, for a bad one, and each
prediction in one of the app's slots, shared with /classify (serving.gradio_workarounds.in_slot).
"""
from __future__ import annotations

import logging

import gradio as gr

from serving.gradio_workarounds import UploadedImage, in_slot
from serving.imaging import ImageRejected
from serving.loader import Loaded
from serving.settings import Settings
from serving.sgd_tab import build_sgd_tab
from serving.web import MESSAGES, Slots, visitor_message

log = logging.getLogger(__name__)


def build_page(loaded: Loaded, settings: Settings, slots: Slots) -> gr.Blocks:
    """Both tabs in one gr.Blocks, with its queue; /predict is the Classify button's API, run in one of `slots`."""
    model = loaded.model

    def classify(image_path: str | None) -> dict[str, float]:
        """{label: probability} for one uploaded image."""
        # print_exception=False: a visitor's bad upload is not a server fault, so no traceback in the log.
        if image_path is None:
            raise gr.Error("Upload a photo (or take one with the webcam) first.", print_exception=False)
        try:
            return model.classify(image_path)
        except ImageRejected as exc:
            log.info("refused an upload: %s (%s)", exc.reason, exc)  # the details, for the log only
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
            submit.click(in_slot(classify, slots), photo, prediction, api_name="predict")
        with gr.Tab("How training works"):
            build_sgd_tab(demo)
    # Bounded: past queue_size waiting, visitors are told it's busy. The queue starts as many predictions at a time
    # as there are slots; each then waits for a free one, which /classify may be using.
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=settings.concurrency)
    return demo
