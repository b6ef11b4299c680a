"""The whole job in one command: data → train → publish → deploy → serve, skipping what is up to date.

    python -m training all                              # the lesson's bears, then the app on :7860
    python -m training all --labels cat dog --query "{label} photo" --no-serve
    python -m training all --repo-id you/bears --space you/bears-demo --no-serve   # ... and make it public

It stops at the first stage that fails, with that stage's message. With --repo-id/--space the Hub token is
checked first, so a missing or wrong token fails in seconds, not after training.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from training.config import Config
from training.data.sources import input_fingerprint
from training.errors import StageError

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]  # where app.py lives

# The settings that change what each stage makes; the others (timeouts, workers) only change how fast.
DATA_KEYS = ("name", "labels", "query", "max_images", "urls", "from_folder", "archive", "data", "allow_private_urls",
             "max_bytes", "min_side", "max_side", "max_pixels", "near_duplicate_distance", "min_per_label")
TRAIN_KEYS = ("arch", "pretrained", "epochs", "size", "batch_size", "seed", "valid_pct", "min_scale")


def run_all(cfg: Config, serve: bool = True) -> Path:
    """Run each stage that is out of date, publish/deploy when asked, then serve with app.py unless serve=False."""
    api = _connect_first(cfg)
    if _data_up_to_date(cfg):
        log.info("data: %s is up to date with these settings; skipping", cfg.data_dir)
    else:
        from training.data.stage import build_dataset
        build_dataset(cfg)
    if _model_up_to_date(cfg):
        log.info("train: %s is newer than the data and was made with these settings; skipping", cfg.model_dir)
    else:
        from training.train.stage import train
        train(cfg)
    if api is not None:
        _publish_and_deploy(cfg, api)
    if serve:
        _serve(cfg.model_dir)
    else:
        log.info("to serve it: MODEL_DIR=%s python app.py", shlex.quote(str(cfg.model_dir)))
    return cfg.model_dir


def _connect_first(cfg: Config):
    """The checked Hub client when publishing, before any long work; None when not publishing."""
    if cfg.space and not cfg.repo_id:
        raise StageError("--space deploys the model that `all` publishes: add --repo-id NAMESPACE/NAME")
    if not cfg.repo_id:
        return None
    from training.hub.access import check_hardware, check_repo_id, connect
    check_hardware(cfg.hardware)
    repos = [check_repo_id(cfg.repo_id, "--repo-id")] + ([check_repo_id(cfg.space, "--space")] if cfg.space else [])
    return connect(*repos)


def _publish_and_deploy(cfg: Config, api) -> None:
    from training.hub.publish import publish
    sha = publish(cfg.model_dir, cfg, api=api)
    log.info("publish: %s@%s", cfg.repo_id, sha)
    if cfg.space:
        from training.hub.deploy import deploy
        log.info("deploy: %s", deploy(cfg, sha, api=api))


def _data_up_to_date(cfg: Config) -> bool:
    saved = _read_json(cfg.data_dir / "settings.json")
    summary = _read_json(cfg.data_dir / "summary.json")
    if not saved or not summary or cfg.retry_failed:
        return False
    enough = all(c["kept"] >= cfg.min_per_label for c in summary["labels"].values())
    same = all(saved.get(k) == cfg.to_json()[k] for k in DATA_KEYS)
    return enough and same and saved.get("inputs") == input_fingerprint(cfg.urls, cfg.from_folder)


def _model_up_to_date(cfg: Config) -> bool:
    settings = cfg.model_dir / "settings.json"
    saved = _read_json(settings)
    if not saved or not (cfg.model_dir / "model.onnx").exists():
        return False
    same = all(saved.get(k) == cfg.to_json()[k] for k in TRAIN_KEYS)
    same = same and (cfg.lr is None or saved.get("lr") == cfg.lr) and saved.get("data") == str(cfg.data_dir)
    return same and settings.stat().st_mtime >= _newest_data_change(cfg.data_dir)


def _newest_data_change(data_dir: Path) -> float:
    paths = [data_dir / "manifest.csv", *(data_dir / "images").glob("*"), *(data_dir / "images").glob("*/*")]
    return max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _serve(model_dir: Path) -> None:
    env = {**os.environ, "MODEL_DIR": str(model_dir.resolve())}
    env.pop("MODEL_REPO", None)  # serve what was just trained, not a Hub repo from the shell
    log.info("serving %s with app.py on http://localhost:%s (Ctrl-C stops)", model_dir,
             env.get("GRADIO_SERVER_PORT", "7860"))
    app = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env)
    try:
        code = app.wait()
    except KeyboardInterrupt:  # the way to stop it, as the line above says: not a failure
        _stop(app)
        log.info("stopped serving %s", model_dir)
        return
    if code != 0:
        raise StageError(f"app.py stopped with exit code {code} while serving {model_dir}; its messages are above")


def _stop(app: subprocess.Popen) -> None:
    """Let app.py shut down after a Ctrl-C; signal it if the Ctrl-C reached this process alone (`kill -INT`)."""
    try:
        app.wait(timeout=10)  # a terminal's Ctrl-C reached app.py too, and it is shutting down
        return
    except subprocess.TimeoutExpired:
        app.send_signal(signal.SIGINT)
    try:
        app.wait(timeout=10)
    except subprocess.TimeoutExpired:
        app.kill()
        app.wait()
