"""The page at /: upload a photo, get the model's top labels; and a second tab, "How training works".

    demo = build_page(load_model(settings), settings, slots)   # app.py, which mounts it next to /classify

The Classify tab is Gradio's image_classifier demo with this app's rules: uploads prepared as training saw
them (serving.gradio_workarounds.UploadedImage), a sentence, never a traceback, for a bad one, and each
prediction in one of the app's slots, shared with /classify (serving.gradio_workarounds.in_slot).
"""
from __future__ import annotations

import logging

import gradio as gr

from serving.feedback import Feedback
from serving.gradio_workarounds import UploadedImage, in_slot
from serving.imaging import ImageRejected
from serving.loader import Loaded
from serving.settings import Settings
from serving.sgd_tab import build_sgd_tab
from serving.web import MESSAGES, Slots, visitor_message

log = logging.getLogger(__name__)


NO_CHECK = ("This model has no \"none of these\" check: it always names one of its labels, whatever the photo "
            "shows.")


def none_of_these(labels: list[str]) -> str:
    """The sentence for a photo that looks like none of the labels."""
    named = labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} or {labels[-1]}"
    return (f"⚠️ **This doesn't look like the {named} photos the model learned from.** Its best guess is below, "
            "but it may well be none of these.")


def build_page(loaded: Loaded, settings: Settings, slots: Slots, title: str = "What is in this photo?",
               examples: list[str] | None = None, feedback: Feedback | None = None) -> gr.Blocks:
    """Both tabs in one gr.Blocks, with its queue; /predict is the Classify button's API, run in one of `slots`.
    The example images are `examples`, else the model folder's; with `feedback`, a "Wrong?" box under a prediction."""
    model = loaded.model

    def check(image_path: str | None) -> tuple[dict[str, float], dict]:
        """{label: probability} for one uploaded image, and whether it looks like any label at all."""
        # print_exception=False: a visitor's bad upload is not a server fault, so no traceback in the log.
        if image_path is None:
            raise gr.Error("Upload a photo (or take one with the webcam) first.", print_exception=False)
        try:
            verdict = model.judge(image_path)
        except ImageRejected as exc:
            log.info("refused an upload: %s (%s)", exc.reason, exc)  # the details, for the log only
            raise gr.Error(visitor_message(exc), print_exception=False) from None
        except Exception:
            log.exception("classification failed")  # details stay in the server log
            raise gr.Error(MESSAGES["internal"], print_exception=False) from None
        return verdict.probs, {"in_domain": verdict.in_domain, "novelty": verdict.novelty,
                               "novelty_threshold": verdict.threshold}

    def classify(image_path: str | None) -> dict[str, float]:
        """{label: probability} for one uploaded image."""
        return check(image_path)[0]

    def sentence(verdict: dict | None) -> str:
        if verdict and verdict.get("in_domain") is False:
            return none_of_these(model.labels)
        return ""

    error_rate = f"{loaded.error_rate:.1%}" if loaded.error_rate is not None else "not measured"
    # One gr.Blocks for the whole page, not an Interface and a TabbedInterface around it: every Blocks builds
    # its own FastAPI app when it closes, and every API call copies the config of every component on the page.
    with gr.Blocks(title=title) as demo:
        with gr.Tab("Classify"):
            gr.Markdown(f"# {title}\nLabels: **{', '.join(model.labels)}**. "
                        f"Validation error rate: {error_rate}. Model: `{loaded.source}` ({loaded.precision})."
                        + ("" if getattr(model, "novelty", None) else f"\n\n{NO_CHECK}"))
            with gr.Row():
                with gr.Column():
                    photo = UploadedImage(type="filepath", sources=["upload", "webcam", "clipboard"], label="Photo")
                    with gr.Row():
                        clear = gr.ClearButton()
                        submit = gr.Button("Submit", variant="primary")
                with gr.Column():
                    note = gr.Markdown(elem_id="none-of-these")
                    prediction = gr.Label(num_top_classes=min(3, len(model.labels)), label="Prediction")
                    if feedback is not None:
                        from serving.feedback_box import FeedbackBox
                        box = FeedbackBox(model, feedback, slots, photo)
            verdict = gr.JSON(visible=False)  # what /check adds to /predict's answer
            clear.add([photo, prediction, note, verdict])
            if examples or loaded.examples:
                gr.Examples(examples or loaded.examples, inputs=photo)
            checked = submit.click(in_slot(check, slots), photo, [prediction, verdict], api_name="check")
            checked.then(sentence, verdict, note, queue=False, api_visibility="private")
            if feedback is not None:  # "Wrong?" under a prediction, never before one
                checked.success(box.show, None, box.group, queue=False, api_visibility="private")
                clear.click(box.hide, None, [box.group, box.answer, box.status], queue=False, api_visibility="private")
            # /predict, as it always was, for API clients: the same prediction without the check.
            gr.Button(visible=False).click(in_slot(classify, slots), photo, prediction, api_name="predict")
        with gr.Tab("How training works"):
            build_sgd_tab(demo)
    # Bounded: past queue_size waiting, visitors are told it's busy. The queue starts as many predictions at a time
    # as there are slots; each then waits for a free one, which /classify may be using.
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=settings.concurrency)
    return demo
