"""Visitors' corrections, kept to improve the model: off unless the owner turns it on.

    FEEDBACK_DIR=feedback python app.py                          # kept in a local folder
    FEEDBACK_REPO=you/bears-feedback HF_TOKEN=hf_... python app.py   # pushed to a private Hub dataset repo

What one Send keeps, and nothing before it (no IP address, no cookie, no name):

    FOLDER/images/<pixel hash>.jpg      the upload, normalised as training images are (serving.imaging.training_jpeg)
    FOLDER/rows/<start>-<id>.jsonl      one line per Send: time, model (repo@revision), precision (the model file
                                        that served: float32 or int8), predicted, probabilities, novelty,
                                        novelty_threshold, in_domain, visitor_label (null: none of these), image
                                        (its path above)

With FEEDBACK_REPO the folder is an outbox (FEEDBACK_DIR, else ~/.cache/bearcub-feedback/<user>--<name>) that
huggingface_hub's CommitScheduler pushes every FEEDBACK_EVERY minutes. It pushes a file again whenever it has
changed since its last successful push, and never deletes one: a push that fails (the Hub down, a connection
cut mid-upload) leaves every file to the next, so no row is lost while the folder lasts. Each process appends to
a rows file of its own, so two replicas never write one file. `python -m training data --from-feedback` reads
either form (training/data/feedback.py).

Bounded (FeedbackLimits): at most FEEDBACK_PER_MINUTE Sends a minute per page session (Gradio's session hash,
new with each page load: no cookie), and FEEDBACK_PER_HOUR for the whole app, which also bounds what a client
making a new session for every call can store. Over either, the visitor reads a sentence.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from serving.imaging import TRAINING_MAX_SIDE, ImageSource, open_upright_rgb, training_jpeg
from serving.novelty import Verdict
from serving.settings import Settings

log = logging.getLogger(__name__)

NONE_OF_THESE = "none of these"  # what the page offers besides the labels; stored as visitor_label null
ROWS, IMAGES = "rows", "images"
PART = ".part"  # a file being written: never pushed (CommitScheduler's ignore_patterns)


class FeedbackLimits:
    """At most `per_minute` accepted Sends in any 60 s per session, and `per_hour` in any hour for the whole app.

    `take` reserves one (or says why not), `give_back` returns a reservation whose Send failed. Only accepted
    Sends are remembered, so memory is bounded by `per_hour` whatever anyone sends.
    """

    def __init__(self, per_minute: int, per_hour: int, clock: Callable[[], float] = time.monotonic):
        self.per_minute, self.per_hour, self.clock = per_minute, per_hour, clock
        self._all: deque[float] = deque()
        self._by_session: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def take(self, session: str) -> str | None:
        """Reserve one Send for `session`; None if allowed, else a sentence for the visitor."""
        with self._lock:
            now = self.clock()
            self._forget(now)
            mine = self._by_session.get(session, deque())
            if len(self._all) >= self.per_hour:
                return ("Thank you! This demo has taken all the corrections it can this hour; nothing was kept. "
                        "Please try again later.")
            if len(mine) >= self.per_minute:
                return (f"Thank you! That's {self.per_minute} corrections in a minute, as many as this demo takes; "
                        "nothing more was kept. Please wait a minute before sending another.")
            mine.append(now)
            self._by_session[session] = mine
            self._all.append(now)
            return None

    def give_back(self, session: str) -> None:
        """Undo the latest reservation of `session` (its Send stored nothing)."""
        with self._lock:
            if self._by_session.get(session):
                self._by_session[session].pop()
                self._all.pop()

    def _forget(self, now: float) -> None:
        while self._all and self._all[0] <= now - 3600:
            self._all.popleft()
        for session in [s for s, times in self._by_session.items() if not times or times[-1] <= now - 60]:
            del self._by_session[session]
        for times in self._by_session.values():
            while times and times[0] <= now - 60:
                times.popleft()


class FeedbackStore:
    """A folder of kept uploads and their rows; with a `scheduler`, the folder is pushed to the Hub from there."""

    def __init__(self, folder: Path, model: str, precision: str = "float32",
                 scheduler_lock: threading.Lock | None = None):
        self.folder, self.model, self.precision = folder, model, precision
        (folder / IMAGES).mkdir(parents=True, exist_ok=True)
        (folder / ROWS).mkdir(parents=True, exist_ok=True)
        started = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")  # files sort in the order made
        self.rows_file = folder / ROWS / f"{started}-{uuid.uuid4().hex[:8]}.jsonl"
        # CommitScheduler lists and reads the folder under its lock: a row or image is never half there for it.
        self.lock = scheduler_lock or threading.Lock()

    def add(self, upload: ImageSource, verdict: Verdict, visitor_label: str) -> dict:
        """Keep `upload` (normalised) and its row; return the row. ImageRejected if it is no usable image."""
        # Decoded as the clean stage decodes (shrink_to its side), within the same budget as a prediction.
        jpeg, digest = training_jpeg(open_upright_rgb(upload, shrink_to=(TRAINING_MAX_SIDE, TRAINING_MAX_SIDE)))
        image = f"{IMAGES}/{digest[:16]}.jpg"
        row = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": self.model,
               "precision": self.precision,
               "predicted": verdict.label, "probabilities": verdict.probs, "novelty": verdict.novelty,
               "novelty_threshold": verdict.threshold, "in_domain": verdict.in_domain,
               "visitor_label": None if visitor_label == NONE_OF_THESE else visitor_label, "image": image}
        with self.lock:
            target = self.folder / image
            if not target.exists():  # the same picture sent twice is one file
                part = target.with_name(target.name + PART)
                part.write_bytes(jpeg)
                part.replace(target)
            with self.rows_file.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        return row


class Feedback:
    """What the page needs: the limits, the store, and where the rows go (for the page's sentence)."""

    def __init__(self, store: FeedbackStore, limits: FeedbackLimits, destination: str):
        self.store, self.limits, self.destination = store, limits, destination
        self.scheduler = None  # the CommitScheduler, once the Hub has answered


def open_feedback(settings: Settings, model: str, precision: str = "float32") -> Feedback | None:
    """Feedback as the settings ask: None when off, or when FEEDBACK_REPO has no token (said in the log)."""
    limits = FeedbackLimits(settings.feedback_per_minute, settings.feedback_per_hour)
    if settings.feedback_repo is None:
        if settings.feedback_dir is None:
            return None
        log.info("feedback: visitors' corrections are kept in %s", settings.feedback_dir)
        return Feedback(FeedbackStore(settings.feedback_dir, model, precision), limits, str(settings.feedback_dir))
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        log.warning("feedback is off: FEEDBACK_REPO=%s is set but there is no Hugging Face token. Add a token with "
                    "write access as the Space secret HF_TOKEN (or set HF_TOKEN), then restart",
                    settings.feedback_repo)
        return None
    folder = settings.feedback_outbox
    store = FeedbackStore(folder, model, precision)
    feedback = Feedback(store, limits, f"the Hub dataset {settings.feedback_repo}")
    threading.Thread(target=_schedule, args=(feedback, settings, token), name="feedback-push", daemon=True).start()
    log.info("feedback: visitors' corrections wait in %s and are pushed to the private dataset %s every %g minutes",
             folder, settings.feedback_repo, settings.feedback_every)
    return feedback


def _schedule(feedback: Feedback, settings: Settings, token: str) -> None:
    """Start the CommitScheduler once the Hub answers (it creates the repo first): until then rows wait on disk."""
    from huggingface_hub import CommitScheduler

    while True:
        try:
            scheduler = CommitScheduler(repo_id=settings.feedback_repo, repo_type="dataset",
                                        folder_path=feedback.store.folder, every=settings.feedback_every,
                                        private=True, token=token, ignore_patterns=[f"*{PART}"])
        except Exception as exc:  # noqa: BLE001  (any failure to reach the Hub: try again later, keep serving)
            log.warning("feedback: can't reach the Hub dataset %s (%s); rows wait in %s, trying again in %g minutes",
                        settings.feedback_repo, exc, feedback.store.folder, settings.feedback_every)
            time.sleep(settings.feedback_every * 60)
            continue
        feedback.store.lock = scheduler.lock
        feedback.scheduler = scheduler
        return
