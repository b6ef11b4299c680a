"""The README and docs/ tell the truth: every shell command in the README runs, and every link lands.

Each command of the README's ```bash blocks is run here: as printed where it can run offline, with `--help`
where a real run needs the network (image search, pretrained weights, the Hub). A command the table below
doesn't know fails the first test, so a new README command gets its check here.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.live_app import ROOT, free_port

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
# How each README command is checked: "run" as printed, "help" with --help added (it needs the network),
# "collect" for pytest itself (running the suite inside the suite would never end).
CHECKS = {
    "pip install -r requirements-train.txt": "run",
    "pip install -r requirements-dev.txt": "run",
    "python -m training all": "help",
    "python -m pytest": "collect",
    "python -m training data --labels grizzly black teddy": "help",
    "python -m training train": "help",
    "python app.py": "serve",
    "python -m training review models/bears": "serve",
    "python -m training publish models/bears --repo-id you/bears": "help",
    "python -m training deploy --space you/bears-demo --model-repo you/bears --revision SHA": "help",
}


def readme_commands() -> list[str]:
    """Every command in the README's bash blocks: comments dropped, `\\` lines joined, `&&` chains split."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands += [part.strip() for part in line.split("&&")]
    return commands


def test_every_readme_command_has_a_check():
    commands = readme_commands()
    assert {"pip install -r requirements-dev.txt", "python -m pytest"} <= set(commands)  # the two the README starts with
    assert [c for c in commands if c not in CHECKS] == []


def _run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("command", [c for c, how in CHECKS.items() if how in ("run", "help")])
def test_the_command_runs(command):
    args = [sys.executable if a == "python" else a for a in shlex.split(command)]
    if args[0] == "pip":
        args = [sys.executable, "-m", "pip", *args[1:]]  # the pip of this Python, as `pip` is on a fresh machine
    if CHECKS[command] == "help":
        args.append("--help")
    done = _run(args)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    if CHECKS[command] == "help":
        assert done.stdout.startswith("usage: python -m training")


def test_the_test_command_collects_the_suite():
    done = _run([sys.executable, "-m", "pytest", "--collect-only", "-q"])
    assert done.returncode == 0, done.stdout[-2000:]
    collected = int(re.search(r"(\d+) tests? collected", done.stdout).group(1))
    assert collected > 100


def _serve(args: list[str], cwd: Path, url: str, env: dict[str, str]) -> subprocess.Popen:
    """Start a server command; return it once `url` answers 200 (the test stops it)."""
    proc = subprocess.Popen(args, cwd=cwd, env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"{' '.join(args)} did not serve {url}:\n{proc.stdout.read()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)  # Ctrl-C, as a person stops it
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


@pytest.fixture
def trained(tiny_model, tmp_path):
    """A folder where `data` and `train` have run: data/bears and models/bears, whose settings.json names it."""
    shutil.copytree(tiny_model.data, tmp_path / "data" / "bears")
    shutil.copytree(tiny_model.folder, tmp_path / "models" / "bears")
    settings = tmp_path / "models" / "bears" / "settings.json"
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "data": "data/bears"}))
    return tmp_path


def test_python_app_py_serves_models_bears(trained):
    (trained / "app.py").symlink_to(ROOT / "app.py")  # Python puts the script's real folder, ROOT, on sys.path
    port = free_port()
    proc = _serve([sys.executable, "app.py"], trained, f"http://127.0.0.1:{port}/config",
                  {"GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)})
    try:
        example = sorted((trained / "models" / "bears" / "examples").glob("*.jpg"))[0]
        answer = httpx.post(f"http://127.0.0.1:{port}/classify", files={"file": example.read_bytes()}, timeout=30)
        assert answer.status_code == 200 and answer.json()["label"] in {"circle", "square", "triangle"}
    finally:
        _stop(proc)


def test_the_review_command_serves_its_page(trained):
    port = 7861  # the command as printed takes the default port
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            pytest.skip(f"something already listens on 127.0.0.1:{port}")
    (trained / "training").symlink_to(ROOT / "training")  # `python -m` finds packages in the working folder
    (trained / "serving").symlink_to(ROOT / "serving")
    proc = _serve([sys.executable, "-m", "training", "review", "models/bears"], trained,
                  f"http://127.0.0.1:{port}/config", {"GRADIO_ANALYTICS_ENABLED": "False"})
    _stop(proc)
    assert proc.returncode == 0 and "stopped the review page" in proc.stdout.read()


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_every_relative_link_lands_on_a_file(page):
    text = page.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert [link for link in local if not (page.parent / link).exists()] == []


def test_no_file_names_a_path_outside_the_repository():
    """A clone from GitHub has only the repository: nothing may point at the workspace around it."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    # Spelled in pieces, so that this file doesn't name them itself.
    outside = re.compile("|".join(re.escape(a + b) for a, b in [("../", "shared"), ("/wo", "rk/"), ("/.lib", "rary/")]))
    named = [f for f in tracked if (ROOT / f).is_file() and (ROOT / f).suffix in (".py", ".md", ".txt", ".ini", "")
             and outside.search((ROOT / f).read_text(encoding="utf-8", errors="replace"))]
    assert named == []
