"""Every way this app departs from Gradio's defaults, each with its reason: the place to check after a Gradio upgrade.

    from serving.gradio_workarounds import UploadedImage, mount   # serving/page.py, app.py

- ENV_DEFAULTS: settings matplotlib and Gradio read from the environment, set when this module is imported
  (where unset: the environment wins). Importing Gradio reads none of them; matplotlib reads its own when it
  is first imported and Gradio its own when the page's queue is made, both after serving/page.py imports this.
- UploadedImage: a gr.Image that hands the upload to the model as it came, and refuses URLs.
- mount(): the page mounted on our FastAPI app, with what `launch()` would have set and what a stateless
  public demo needs instead of Gradio's defaults.
"""
from __future__ import annotations

import base64
import binascii
import logging
import os

ENV_DEFAULTS = {
    # Gradio switches matplotlib to Agg on the first event; named first, pyplot isn't imported to find the default.
    "MPLBACKEND": "agg",
    # Gradio rebuilds a pandas summary of up to 10,000 past events after each event: every 1,000, of 1,000, instead.
    "GRADIO_ANALYTICS_CACHE_FREQUENCY": "1000",
    "GRADIO_ANALYTICS_MAX_EVENTS": "1000",
}
for _name, _value in ENV_DEFAULTS.items():
    os.environ.setdefault(_name, _value)

import gradio as gr  # noqa: E402  (after the defaults, in case a Gradio release reads them on import)
from fastapi import FastAPI  # noqa: E402
from gradio import processing_utils  # noqa: E402
from gradio_client import utils as client_utils  # noqa: E402

from serving.web import MESSAGES  # noqa: E402

log = logging.getLogger(__name__)

# Each API call is a session whose configs Gradio keeps (10,000 by default); this app keeps nothing in one.
SESSIONS_KEPT = 256
# Every minute, delete uploads older than 10 minutes: by default Gradio never does, and they pile up on disk.
DELETE_UPLOADS = (60, 600)


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
            return payload.path  # an upload: Gradio has checked that (mount() sets has_launched)
        # An API client sent the image inline, as a data: URL. Kept byte for byte: Gradio's own decoding
        # would re-save it as lossy WebP.
        try:
            raw = base64.b64decode(payload.url.partition(",")[2], validate=True)
        except binascii.Error:
            log.info("refused an upload: bad base64")
            raise gr.Error(MESSAGES["not_image"], print_exception=False) from None
        return processing_utils.save_bytes_to_cache(raw, "inline.img", cache_dir=self.GRADIO_CACHE)

    async def async_move_resource_to_block_cache(self, url_or_file_path):
        # An API call may name a URL instead of sending the image. Gradio would fetch it whole, into memory,
        # however large: a public demo should not download for strangers. Uploads and inline images only.
        if client_utils.is_http_url_like(str(url_or_file_path or "")):
            log.info("refused an upload: a URL")
            raise gr.Error(MESSAGES["url"], print_exception=False)
        return await super().async_move_resource_to_block_cache(url_or_file_path)


def mount(app: FastAPI, demo: gr.Blocks, max_file_size: int) -> FastAPI:
    """Serve `demo` at / of `app`, as `demo.launch()` would have but for what a public, stateless demo needs."""
    demo.state_session_capacity = SESSIONS_KEPT
    demo.delete_cache = DELETE_UPLOADS
    # show_error=False: a visitor reads our sentences (gr.Error), never an exception's own text.
    app = gr.mount_gradio_app(app, demo, path="/", max_file_size=max_file_size, show_error=False)
    # Gradio refuses API calls that name files on the server instead of uploads only once `launch()` has set this;
    # mounted, it never is, and {"path": "/etc/hostname"} (or /dev/zero, read forever) would be taken as input.
    demo.has_launched = True
    return app
