"""The local review page that `python -m training review MODEL_DIR --data DIR` serves on http://127.0.0.1:7861.

Pick a label and a split; the model's hardest images for them come first, each with a Keep and a Delete
button and a "Move to" menu. Every click is applied at once (training/review/actions.py). Undo reverses the
latest change, and the top of the page counts the images changed since the model was trained.
"""
from __future__ import annotations

import logging
import re
from functools import partial

import gradio as gr

from training.errors import StageError
from training.review.state import Card, Review

log = logging.getLogger(__name__)

SPLITS = ["valid", "train"]
CSS = """
.review-card { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 6px; }
.review-card .caption p { margin: 2px 0; font-size: 0.9em; overflow-wrap: anywhere; }
"""


def serve(review: Review, port: int, count: int) -> None:
    """Serve the page on 127.0.0.1:port until Ctrl-C."""
    page = build_page(review, count)
    # One event at a time: each click re-reads the folder, so two at once could act on a stale list.
    page.queue(default_concurrency_limit=1)
    log.info("reviewing %s with %s: open http://127.0.0.1:%d (Ctrl-C stops)", review.data_dir, review.model_dir, port)
    try:
        # quiet: the line above says where the page is; Gradio's banner would add a share=True hint, and a page
        # that moves files in your data folder is not one to share.
        page.launch(server_name="127.0.0.1", server_port=port, css=CSS, footer_links=[], ssr_mode=False,
                    allowed_paths=[str(review.data_dir.resolve())], quiet=True)  # the images the cards show
    except OSError as exc:
        raise StageError(f"can't serve the review page on port {port} ({exc}); pass another --port") from exc


def build_page(review: Review, count: int) -> gr.Blocks:
    """The page: label and split pickers, the hardest images as cards, undo, and what changed since training."""
    with gr.Blocks(title="Review the data", analytics_enabled=False) as page:
        gr.Markdown(f"# Review `{review.data_dir}`\nThe images model `{review.model_dir}` finds hardest, by loss, "
                    "worst first. Keep what is right, delete what isn't a picture of any label, move what is "
                    "under the wrong one. Deleted images go to `trash/`; every change is in `manifest.csv`.")
        if review.warnings:
            gr.Markdown("\n".join(f"- ⚠️ {w}" for w in review.warnings), elem_id="warnings")
        changed = gr.Markdown(changed_text(review), elem_id="changed")
        with gr.Row():
            label = gr.Dropdown(review.labels, value=review.labels[0], label="Label", elem_id="label")
            split = gr.Radio(SPLITS, value="valid", label="Split, as training drew it", elem_id="split")
            undo = gr.Button("Undo last change", elem_id="undo", size="md", scale=0, min_width=180)
        status = gr.Markdown("", elem_id="status")
        version = gr.State(0)  # bumped by every change, so the cards redraw
        outputs = [version, status, changed]
        undo.click(partial(_undo, review), inputs=version, outputs=outputs)

        @gr.render(inputs=[label, split, version])
        def cards(label_value: str, split_value: str, drawn: int):
            shown = review.hardest(label_value, split_value, count)
            if not shown:
                gr.Markdown(f"No **{label_value}** images in the {split_value} split.", elem_id="no-cards")
            with gr.Row():
                for card in shown:
                    _card(review, card, version, outputs, drawn)
    return page


def _card(review: Review, card: Card, version: gr.State, outputs: list, drawn: int) -> None:
    """One image: the picture, what the model says about it, and the three actions."""
    stem = re.sub(r"[^A-Za-z0-9_-]", "-", card.original.rsplit("/", 1)[-1].rsplit(".", 1)[0])
    with gr.Column(min_width=200, scale=0, elem_classes="review-card", elem_id=f"card-{stem}"):
        gr.Image(str(review.data_dir / card.path), show_label=False, interactive=False, height=180,
                 container=False, buttons=["fullscreen"])
        note = f"  \n*{card.note}*" if card.note else ""
        wrong = f" (not {card.label})" if card.predicted != card.label else ""
        gr.Markdown(f"`{card.path.rsplit('/', 1)[-1]}`  \npredicted **{card.predicted}** {card.probability:.0%}{wrong}"
                    f"  \nloss **{card.loss:.2f}**{note}", elem_classes="caption")
        with gr.Row():
            keep = gr.Button("Keep", size="sm", min_width=60)
            delete = gr.Button("Delete", size="sm", variant="stop", min_width=60)
        # Keyed by the drawing: otherwise the browser keeps a menu's old choice on whichever card takes its place.
        move = gr.Dropdown([x for x in review.labels if x != card.label], value=None, label="Move to label",
                           elem_classes="move", key=f"move-{card.original}-{drawn}")
    keep.click(partial(_act, review, "keep", card.original), inputs=version, outputs=outputs)
    delete.click(partial(_act, review, "delete", card.original), inputs=version, outputs=outputs)
    # `select` fires once per choice; `input` can fire again as the menu closes, when the image has moved.
    move.select(_mover(review, card.original), inputs=version, outputs=outputs)


def _act(review: Review, action: str, original: str, version: int):
    try:
        change = review.data.keep(original) if action == "keep" else review.data.delete(original)
    except StageError as exc:
        raise gr.Error(str(exc)) from None
    done = f"Kept `{change.after}`." if action == "keep" else f"Deleted `{change.before}` (now in `{change.after}`)."
    return version + 1, done, changed_text(review)


def _mover(review: Review, original: str):
    """The handler of one card's "Move to label" menu (a plain function: Gradio reads its SelectData hint)."""
    def move(version: int, chosen: gr.SelectData):
        try:
            change = review.data.relabel(original, str(chosen.value))
        except StageError as exc:
            raise gr.Error(str(exc)) from None
        return version + 1, f"Moved `{change.before}` to **{chosen.value}** (`{change.after}`).", changed_text(review)
    return move


def _undo(review: Review, version: int):
    try:
        change = review.data.undo()
    except StageError as exc:
        raise gr.Error(str(exc)) from None
    return version + 1, f"Undone: `{change.after}` is back where it was.", changed_text(review)


def changed_text(review: Review) -> str:
    """How many images changed since the model was trained, what to do about it, and the counts per label."""
    kinds = review.changed_since_training()
    total = sum(kinds.values())
    per_label = " · ".join(f"{label} {n}" for label, n in review.images_per_label().items())
    if not total:
        return f"No image has changed since the model was trained. Images now: {per_label}."
    detail = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    return (f"**{total} image{'s' if total > 1 else ''} changed since the model was trained** ({detail}). "
            f"Images now: {per_label}. Train again to use the cleaned data: "
            f"`python -m training train --data {review.data_dir} --out {review.model_dir}`")
