"""Start app.py as a real process on a free loopback port, for tests and benchmarks.

    with LiveApp({"MODEL_DIR": str(folder)}) as app:
        httpx.post(app.url + "/classify", files={"file": open("bear.jpg", "rb")})
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gradio_call(client: httpx.Client, url: str, file_data: dict, api: str = "predict") -> str:
    """One call through Gradio's plain HTTP API with this FileData (queue, then read): the result stream, as text."""
    event = client.post(f"{url}/gradio_api/call/{api}", json={"data": [file_data]}).json()["event_id"]
    return client.get(f"{url}/gradio_api/call/{api}/{event}").text


class LiveApp:
    """`python app.py` with extra environment, ready once it answers HTTP; its output kept in `.log`."""

    def __init__(self, env: dict[str, str], startup_timeout: float = 120.0, command: list[str] | None = None,
                 log_path: Path | None = None, cwd: Path = ROOT):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SERVER_NAME": "127.0.0.1",
                    "GRADIO_SERVER_PORT": str(self.port), "PYTHONUNBUFFERED": "1", **env}
        self.command = command or [sys.executable, str(ROOT / "app.py")]
        self.cwd = cwd
        self.startup_timeout = startup_timeout
        self.log_path = log_path or Path(os.environ.get("TMPDIR", "/tmp")) / f"live_app_{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "LiveApp":
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.started = time.perf_counter()
        self._wait_ready()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited with {self.proc.returncode}:\n{self.log[-3000:]}")
            try:
                if httpx.get(self.url + "/config", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"app did not answer within {self.startup_timeout} s:\n{self.log[-3000:]}")
