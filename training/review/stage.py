"""The review stage: check that the model and its data folder belong together, then serve the review page.

    python -m training review models/bears --data data/bears      # a local page on http://127.0.0.1:7861
"""
from __future__ import annotations

import logging

from training.config import Config
from training.data.decisions import LOG_NAME
from training.review.state import open_review, trained_on

log = logging.getLogger(__name__)


def review(cfg: Config) -> None:
    """Open the review page for cfg.model_dir and its data folder; serve it until Ctrl-C."""
    data_dir = cfg.data if cfg.data is not None else trained_on(cfg.model_dir)
    session = open_review(cfg.model_dir, data_dir,
                          holder=f"the review page on http://127.0.0.1:{cfg.review_port} (python -m training review)")
    try:
        from training.review.page import serve  # gradio loads only once the folders are known to be usable
        serve(session, port=cfg.review_port, count=cfg.review_count)
    finally:
        session.close()
    log.info("stopped the review page: every change is in %s; `python -m training train` trains on the cleaned "
             "images", data_dir / LOG_NAME)
