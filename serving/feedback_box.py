"""The page's "Wrong?" box, shown under a prediction when feedback is on (serving/feedback.py).

    box = FeedbackBox(model, feedback, slots)   # inside the page's gr.Blocks, under the prediction
    submit.click(...).then(box.show, None, box.group)

The visitor picks the right label, or "none of these", and presses Send; only then is anything kept. The
Send runs the model again on the upload, in one of the app's slots, so the row holds the model's own answer
whatever a client sends; it is also gradio_client's /feedback (photo, right label) -> a sentence.
"""
from __future__ import annotations

import logging

import gradio as gr

from serving.feedback import NONE_OF_THESE, Feedback
from serving.gradio_workarounds import in_slot
from serving.imaging import ImageRejected
from serving.loader import Model
from serving.web import MESSAGES, Slots, visitor_message

log = logging.getLogger(__name__)

NOTICE = ("**Wrong?** Pick the right answer and press Send. The photo will be kept, with the model's answer, to "
          "improve the model; nothing else about you (no name, no address) is kept.")
THANKS = "Thank you! The photo and your answer are kept to improve the model."


class FeedbackBox:
    """A hidden group under the prediction: the notice, the right answer, Send, and a sentence back."""

    def __init__(self, model: Model, feedback: Feedback, slots: Slots, photo: gr.components.Component):
        self.model, self.feedback = model, feedback
        self.choices = [*model.labels, NONE_OF_THESE]
        with gr.Group(visible=False, elem_id="feedback") as self.group:
            gr.Markdown(NOTICE, elem_id="feedback-notice")
            self.answer = gr.Radio(self.choices, value=None, label="The right answer", elem_id="feedback-answer")
            self.send = gr.Button("Send", elem_id="feedback-send", size="sm")
            self.status = gr.Markdown(elem_id="feedback-status")
        self.send.click(in_slot(self.keep, slots), [photo, self.answer], self.status, api_name="feedback")
        photo.change(self.hide, None, [self.group, self.answer, self.status], queue=False, api_visibility="private")

    def show(self) -> gr.Group:
        return gr.Group(visible=True)

    def hide(self) -> tuple:
        return gr.Group(visible=False), gr.Radio(value=None), ""

    def keep(self, image_path: str | None, answer: str | None, request: gr.Request) -> str:
        """Keep the upload and its row, within the limits; a sentence for the visitor either way."""
        if image_path is None:
            return "Upload a photo first; then, if the model is wrong, pick the right answer and press Send."
        if answer not in self.choices:
            return f"Pick the right answer first: one of {', '.join(self.choices)}."
        session = request.session_hash or "no session"
        refused = self.feedback.limits.take(session)
        if refused:
            log.info("feedback refused: over a limit")
            return refused
        try:
            row = self.feedback.store.add(image_path, self.model.judge(image_path), answer)
        except ImageRejected as exc:
            self.feedback.limits.give_back(session)
            return visitor_message(exc)
        except Exception:
            self.feedback.limits.give_back(session)
            log.exception("keeping a correction failed")  # details stay in the server log
            return MESSAGES["internal"]
        log.info("feedback kept: %s (model said %s, visitor %s)", row["image"], row["predicted"],
                 row["visitor_label"] or NONE_OF_THESE)
        return THANKS
