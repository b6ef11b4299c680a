"""Load test: app.py under 16, 32 and 64 concurrent clients on loopback, in a bounded run.

    python -m bench.load                          # resnet18 at 224 px
    python -m bench.load --workers 2              # the same app under `uvicorn app:build_app --factory --workers 2`

Starts the app as its own process (a model folder from bench.common.model_folder). For each API and each
level, that many clients, each with its own plain httpx connection, send --per-client requests one after
the other, then the level ends. The APIs: our JSON endpoint (POST /classify) and Gradio's HTTP API (upload,
call, read the result, as bench.common.gradio_predict does). Every request carries a different photo, as
real visitors' do, so Gradio's content-addressed upload cache sees every upload.

Per level it prints: throughput of answered requests, p50 and p99 latency of those, errors, the share turned
away by a queue limit (our /classify answers 503 "busy" past its busy timeout; Gradio's queue answers 503
"Queue is full" past its size) with the message clients got, and the app's resident memory (RSS, all its
processes) and upload cache before and after.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import machine, model_folder, photo_jpeg
from tests.live_app import LiveApp

LEVELS = (16, 32, 64)
API = "predict"


@dataclass(frozen=True)
class Outcome:
    kind: str  # "ok", "busy" (turned away by a queue limit) or "error"
    seconds: float
    message: str = ""


def classify_json(client: httpx.Client, url: str, image: bytes) -> tuple[str, str]:
    """One POST /classify: ("ok", "") or (kind, the message the client got)."""
    r = client.post(f"{url}/classify", files={"file": ("photo.jpg", image, "image/jpeg")})
    if r.status_code == 200:
        return "ok", ""
    body = _json(r)
    kind = "busy" if r.status_code == 503 and body.get("reason") == "busy" else "error"
    return kind, f"{r.status_code} {body.get('error', r.text[:200])}"


def classify_gradio(client: httpx.Client, url: str, image: bytes) -> tuple[str, str]:
    """One prediction through Gradio's HTTP API (as bench.common.gradio_predict), keeping refusals as outcomes."""
    up = client.post(f"{url}/gradio_api/upload", files={"files": ("photo.jpg", image, "image/jpeg")})
    if up.status_code != 200:
        return "error", f"upload {up.status_code} {up.text[:200]}"
    payload = {"data": [{"path": up.json()[0], "meta": {"_type": "gradio.FileData"}}]}
    call = client.post(f"{url}/gradio_api/call/{API}", json=payload)
    if call.status_code != 200:
        detail = str(_json(call).get("detail", call.text[:200]))
        return ("busy" if "Queue is full" in detail else "error"), f"{call.status_code} {detail}"
    stream = client.get(f"{url}/gradio_api/call/{API}/{call.json()['event_id']}").text
    if "event: complete" in stream:
        return "ok", ""
    return "error", stream.strip()[:200]


def _json(r: httpx.Response) -> dict:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class Photos:
    """A different JPEG for every request: one photo with a numbered trailer after its end-of-image marker."""

    def __init__(self):
        self.base = photo_jpeg(500, 375)
        self._n = 0
        self._lock = threading.Lock()

    def next(self) -> bytes:
        # Decoders stop at the end-of-image marker, so the trailer changes the file's hash but not its pixels.
        with self._lock:
            self._n += 1
            return self.base + self._n.to_bytes(8, "big")


def run_level(call, url: str, clients: int, per_client: int, photos: Photos) -> tuple[list[Outcome], float]:
    """`clients` concurrent clients, each sending `per_client` requests; return the outcomes and the wall time."""
    def client_loop(_) -> list[Outcome]:
        outcomes = []
        with httpx.Client(timeout=120) as client:
            for _ in range(per_client):
                image = photos.next()
                started = time.perf_counter()
                try:
                    kind, message = call(client, url, image)
                except httpx.HTTPError as exc:
                    kind, message = "error", f"{type(exc).__name__}: {exc}"
                outcomes.append(Outcome(kind, time.perf_counter() - started, message))
        return outcomes

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        outcomes = [o for batch in pool.map(client_loop, range(clients)) for o in batch]
    return outcomes, time.perf_counter() - started


def summarize(outcomes: list[Outcome], wall: float) -> dict:
    """Throughput, latency percentiles of answered requests, and the refusals by message."""
    ok = sorted(o.seconds for o in outcomes if o.kind == "ok")
    counts = Counter(o.kind for o in outcomes)
    return {"requests": len(outcomes), "ok": counts["ok"], "rps": counts["ok"] / wall,
            "p50_ms": 1000 * statistics.median(ok) if ok else float("nan"),
            "p99_ms": 1000 * _percentile(ok, 0.99) if ok else float("nan"),
            "busy": counts["busy"], "errors": counts["error"],
            "messages": Counter(o.message for o in outcomes if o.kind != "ok")}


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile: a value some request actually took."""
    return sorted_values[min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))]


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (uvicorn's workers), in MB."""
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except FileNotFoundError:
            continue  # it ended while we looked
        total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024
        stack += [int(c) for c in children]
    return total


def cache_size(folder: Path) -> tuple[int, float]:
    """Files in Gradio's upload cache and their size in MB."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files) / 1e6


def _command(workers: int, port: int) -> list[str] | None:
    if workers == 1:
        return None  # `python app.py`, as the Space runs it
    return [sys.executable, "-m", "uvicorn", "app:build_app", "--factory", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--timeout-keep-alive", "5"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS), help="concurrent clients per level")
    parser.add_argument("--per-client", type=int, default=8, help="requests each client sends per level")
    parser.add_argument("--api", choices=("json", "gradio", "both"), default="both",
                        help="/classify, Gradio's API, or both")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the levels this many times: memory that keeps growing round after round is a leak")
    parser.add_argument("--workers", type=int, default=1,
                        help="run `uvicorn app:build_app --factory --workers N` instead of app.py")
    parser.add_argument("--arch", default="resnet18", help="model the app serves (resnet18/34/50)")
    args = parser.parse_args()
    folder, photos = model_folder(args.arch), Photos()
    calls = {"json": classify_json, "gradio": classify_gradio}
    apis = list(calls) if args.api == "both" else [args.api]
    with tempfile.TemporaryDirectory(prefix="gradio_uploads_") as uploads:
        app = LiveApp({"MODEL_DIR": str(folder), "GRADIO_TEMP_DIR": uploads})
        app.command = _command(args.workers, app.port) or app.command  # uvicorn needs the port LiveApp picked
        with app:
            for api in apis:  # warm up each path, so the first level's figures are not start-up costs
                run_level(calls[api], app.url, 2, 2, photos)
            print(f"\n{args.arch}, 500x375 JPEG, {args.per_client} requests per client, {machine()}, "
                  f"{args.workers} server process{'es' if args.workers > 1 else ''}")
            print(f"{'api':7} {'clients':>7} {'req':>5} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
                  f"{'busy':>6} {'RSS MB before→after':>20} {'upload cache':>18}")
            for api in apis:
                for clients in args.levels * args.rounds:
                    _report_level(api, calls[api], app, clients, args.per_client, photos, Path(uploads))


def _report_level(api: str, call, app: LiveApp, clients: int, per_client: int, photos: Photos, uploads: Path) -> None:
    before = tree_rss_mb(app.proc.pid)
    outcomes, wall = run_level(call, app.url, clients, per_client, photos)
    after = tree_rss_mb(app.proc.pid)
    s = summarize(outcomes, wall)
    files, mb = cache_size(uploads)
    print(f"{api:7} {clients:7d} {s['requests']:5d} {s['rps']:7.1f} {s['p50_ms']:8.0f} {s['p99_ms']:8.0f} "
          f"{s['errors']:6d} {s['busy'] / s['requests']:6.1%} {before:9.0f} → {after:<8.0f} "
          f"{files:6d} files {mb:5.1f} MB")
    for message, n in s["messages"].most_common(3):
        print(f"{'':16}{n} × {message}")


if __name__ == "__main__":
    main()
