"""The local review page that `python -m training review MODEL_DIR --data DIR` serves on http://127.0.0.1:7861.

Pick a label and a split; the model's hardest images for them come first, each with a Keep and a Delete
button and a "Move to" menu. Every click is applied at once (training/review/actions.py). Undo reverses the
latest change, and the top of the page counts the images changed since the model was trained.

The page moves files, so it answers only this machine's browser: requests addressed to another host name
(a DNS-rebinding page) or sent by another site's page are refused before Gradio sees them (LocalOnlyApp),
and the handlers accept only the cards' own images and the dataset's labels, whatever an API call sends.
"""
from __future__ import annotations

import logging
import re
import threading
from functools import partial

import gradio as gr
from gradio.routes import App, ORJSONResponse
from starlette.responses import PlainTextResponse

from training.data.decisions import NONE_OF_THESE
from training.errors import StageError
from training.review.state import Card, Review

log = logging.getLogger(__name__)

# The Host header of a request for this page: only names that can't be pointed elsewhere by DNS.
LOCAL_HOST = re.compile(r"(127\.0\.0\.1|localhost|\[::1\])(:\d{1,5})?", re.IGNORECASE)

SPLITS = ["valid", "train"]
# Visitors' photos brought in by `data --from-feedback`, shown first while any wait: nothing trains on them until kept.
PENDING = "pending feedback"
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
    # Ctrl-C stops the page whenever it comes, during launch() too: with our own wait rather than Gradio's (which
    # swallows Ctrl-C with a print of its own), and launch() inside, the command ends the same way whatever the
    # timing (once, under load, a Ctrl-C that came as launch() returned ended it as "interrupted").
    try:
        _launch(page, review, port)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        page.close()


def _launch(page, review: Review, port: int) -> None:
    try:
        # A page that moves files in your data folder is not one to share: share=False even where Gradio would
        # turn sharing on by itself (hosted notebooks such as Colab, GRADIO_SHARE). quiet: the line above says
        # where the page is, and Gradio's banner would add a share=True hint.
        page.launch(server_name="127.0.0.1", server_port=port, share=False, css=CSS, footer_links=[],
                    ssr_mode=False, quiet=True, _app=LocalOnlyApp(default_response_class=ORJSONResponse),
                    allowed_paths=[str((review.data_dir / "images").resolve())],  # the images the cards show
                    prevent_thread_lock=True)
    except OSError as exc:
        raise StageError(f"can't serve the review page on port {port} ({exc}); pass another --port") from exc


class LocalOnlyApp(App):
    """Gradio's app, answering only requests addressed to this machine and sent by its own pages (see refusal).

    Checked here, before any middleware: Gradio's own CORS middleware (gradio/route_utils.py,
    CustomCORSMiddleware, Gradio 6.31) reflects any Origin with credentials when the Host is not one of the
    names it knows as local (localhost, 127.0.0.1, 0.0.0.0: not [::1]), which is what a DNS-rebinding page
    sends, and it lets a request from another site's page through to the handlers. A middleware passed
    through launch(app_kwargs=) would run inside it, so even its refusals would carry the reflected Origin;
    launch(_app=) is how Gradio's own gr.Server hands launch an app of its own.
    """

    async def __call__(self, scope, receive, send) -> None:
        refused = refusal(scope)
        if refused is None:
            await super().__call__(scope, receive, send)
            return
        status, sentence = refused
        log.info("refused a request for %s: %s", scope.get("path"), sentence)
        if scope["type"] == "http":
            await PlainTextResponse(sentence, status_code=status)(scope, receive, send)
        else:  # a websocket: closing before accepting answers 403
            await send({"type": "websocket.close", "code": 1008})


def refusal(scope: dict) -> tuple[int, str] | None:
    """Why a request must not reach the page, as (HTTP status, a sentence), or None to let it through.

    Its Host must be 127.0.0.1, localhost or [::1] (with or without a port): a page elsewhere that gets its own
    host name to resolve to 127.0.0.1 (DNS rebinding) still sends that name. An Origin, where sent, must be the
    page's own, so another site's page can't make changes either.
    """
    if scope["type"] not in ("http", "websocket"):
        return None  # lifespan: the server starting and stopping
    headers = [(name, value.decode("latin-1")) for name, value in scope["headers"]]
    hosts = [value for name, value in headers if name == b"host"]
    origins = [value.lower() for name, value in headers if name == b"origin"]
    port = (scope.get("server") or ("", 7861))[1]
    if len(hosts) != 1 or not LOCAL_HOST.fullmatch(hosts[0]):
        return 400, (f"This page answers only at http://127.0.0.1:{port} (or localhost): it moves files in your "
                     f"data folder, so it takes no request addressed to {', '.join(hosts) or 'no host'!r:.80}.")
    if origins and origins != [f"http://{hosts[0].lower()}"]:
        return 403, (f"This page takes requests only from its own pages at http://{hosts[0]}, not from "
                     f"{', '.join(origins)!r:.80}: it moves files in your data folder.")
    return None


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
            split = gr.Radio([PENDING, *SPLITS], value=PENDING if review.pending(1) else "valid",
                             label="Split, as training drew it, or visitors' photos waiting", elem_id="split")
            undo = gr.Button("Undo last change", elem_id="undo", size="md", scale=0, min_width=180)
        status = gr.Markdown("", elem_id="status")
        version = gr.State(0)  # bumped by every change, so the cards redraw
        outputs = [version, status, changed]
        undo.click(partial(_undo, review), inputs=version, outputs=outputs)

        @gr.render(inputs=[label, split, version])
        def cards(label_value: str, split_value: str, drawn: int):
            if split_value == PENDING:  # every label's: the visitor's label is on each card
                shown = review.pending(count)
                if not shown:
                    gr.Markdown("No visitors' photos are waiting for review.", elem_id="no-cards")
            else:
                shown = review.hardest(label_value, split_value, count)
                if not shown:
                    gr.Markdown(f"No **{label_value}** images in the {split_value} split.", elem_id="no-cards")
            with gr.Row():
                for card in shown:
                    _card(review, card, version, outputs, drawn, pending=split_value == PENDING)
    return page


def _card(review: Review, card: Card, version: gr.State, outputs: list, drawn: int, pending: bool = False) -> None:
    """One image: the picture, what the model says about it, and the three actions. A visitor's photo (`pending`)
    says what the visitor and the app's model said; Keep puts it under the visitor's label."""
    stem = re.sub(r"[^A-Za-z0-9_-]", "-", card.original.rsplit("/", 1)[-1].rsplit(".", 1)[0])
    with gr.Column(min_width=200, scale=0, elem_classes="review-card", elem_id=f"card-{stem}"):
        gr.Image(str(review.data_dir / card.path), show_label=False, interactive=False, height=180,
                 container=False, buttons=["fullscreen"])
        note = f"  \n*{card.note}*" if card.note else ""
        wrong = f" (not {card.label})" if card.predicted != card.label else ""
        if pending:
            gr.Markdown(f"`{card.path.rsplit('/', 1)[-1]}`  \nthe visitor says **{card.label}**  \nthe app's model "
                        f"said **{card.predicted}** {card.probability:.0%}{note}", elem_classes="caption")
        else:
            gr.Markdown(f"`{card.path.rsplit('/', 1)[-1]}`  \npredicted **{card.predicted}** "
                        f"{card.probability:.0%}{wrong}  \nloss **{card.loss:.2f}**{note}", elem_classes="caption")
        with gr.Row():
            keep = gr.Button("Keep", size="sm", min_width=60)
            delete = gr.Button("Delete", size="sm", variant="stop", min_width=60)
        # Keyed by the drawing: otherwise the browser keeps a menu's old choice on whichever card takes its place.
        targets = [*review.labels, NONE_OF_THESE] if pending else review.labels
        move = gr.Dropdown([x for x in targets if x != card.label], value=None, label="Move to label",
                           elem_classes="move", key=f"move-{card.original}-{drawn}")
    keep.click(partial(_act, review, "keep", card.original), inputs=version, outputs=outputs)
    delete.click(partial(_act, review, "delete", card.original), inputs=version, outputs=outputs)
    # `select` fires once per choice; `input` can fire again as the menu closes, when the image has moved.
    move.select(_mover(review, card.original), inputs=version, outputs=outputs)


def _act(review: Review, action: str, original: str, version: int):
    _check_image(review, original)
    try:
        if action == "delete":
            change = review.data.delete(original)
        elif original not in review.split:  # a visitor's photo: kept under the visitor's label
            change = review.data.admit(original, review.data.place(original).split("/")[1])
        else:
            change = review.data.keep(original)
    except StageError as exc:
        raise _refused(str(exc)) from None
    done = f"Kept `{change.after}`." if action == "keep" else f"Deleted `{change.before}` (now in `{change.after}`)."
    return version + 1, done, changed_text(review)


def _mover(review: Review, original: str):
    """The handler of one card's "Move to label" menu (a plain function: Gradio reads its SelectData hint)."""
    def move(version: int, chosen: gr.SelectData):
        _check_image(review, original)
        # The menu offers only labels, but an API call can send any value as the one chosen: named here as sent,
        # where DataFolder's refusal could name only the folder it would make of it.
        label = chosen.value
        visitors = original not in review.split
        if not (review.data.is_label(label) or (visitors and label == NONE_OF_THESE)):
            raise _refused(f"{label!r:.80} is not one of this dataset's labels, so nothing was changed: move "
                           f"images to {', '.join(review.labels)}")
        try:
            change = review.data.admit(original, label) if visitors else review.data.relabel(original, label)
        except StageError as exc:
            raise _refused(str(exc)) from None
        return version + 1, f"Moved `{change.before}` to **{label}** (`{change.after}`).", changed_text(review)
    return move


def _undo(review: Review, version: int):
    try:
        change = review.data.undo()
    except StageError as exc:
        raise _refused(str(exc)) from None
    return version + 1, f"Undone: `{change.after}` is back where it was.", changed_text(review)


def _check_image(review: Review, original: str) -> None:
    """Refuse an image the page could not have shown: every card is one of the split's images."""
    if original not in review.split and not review.is_pending(original):
        raise _refused(f"{original!r:.80} is not one of the images of {review.data_dir}, so nothing was changed")


def _refused(sentence: str) -> gr.Error:
    """A sentence on the page; the server log needs no traceback for a refusal."""
    return gr.Error(sentence, print_exception=False)


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
