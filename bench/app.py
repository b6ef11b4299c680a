"""Benchmark: our app.py against the course's app (load_learner + learn.predict in a gr.Interface), same model.

    python -m bench.app                 # resnet18 at 224 px

In one run it starts each app as its own process on loopback and measures, with plain httpx:
process start → first prediction served; single-client latency; throughput with 8 concurrent clients;
and the process's peak resident memory. Both go through the same Gradio HTTP API (/gradio_api/call/predict);
our JSON endpoint (/classify) is measured too. Each app runs with the packages its Space has (see
bench.common.as_deployed), and ours starts cold, as a Space does after a restart: with an empty cache for
the model that onnxruntime optimizes for this CPU (serving/ort_cache.py). Targets against the course app:
start ≤ 0.45×, peak RSS ≤ 0.35×, throughput ≥ 2.5×.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from bench.common import as_deployed, gradio_predict, machine, model_folder, peak_rss_mb, photo_jpeg, wait_until
from tests.live_app import ROOT, free_port


def classify_json(client: httpx.Client, url: str, image: bytes) -> dict:
    """One prediction through our plain JSON endpoint."""
    r = client.post(f"{url}/classify", files={"file": ("photo.jpg", image, "image/jpeg")})
    r.raise_for_status()
    return r.json()


def measure(name: str, command: list[str], env: dict, image: bytes, requests: int, clients: int, load: int) -> dict:
    """Start one app, then time its first answer, its latency and its throughput; read its peak memory."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **env, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(timeout=120) as client:
            wait_until(lambda: gradio_predict(client, url, image), timeout=600)
            result = {"app": name, "start_s": time.perf_counter() - started}
            result["latency_ms"] = _latency(lambda: gradio_predict(client, url, image), requests)
            result["rps"] = _throughput(lambda c: gradio_predict(c, url, image), load, clients)
            if name == "ours":
                result["json_latency_ms"] = _latency(lambda: classify_json(client, url, image), requests)
                result["json_rps"] = _throughput(lambda c: classify_json(c, url, image), load, clients)
        result["peak_rss_mb"] = peak_rss_mb(proc.pid)
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _latency(call, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def _throughput(call, total: int, clients: int) -> float:
    def worker(count: int) -> None:
        with httpx.Client(timeout=120) as c:
            for _ in range(count):
                call(c)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, [total // clients] * clients))
    return (total // clients * clients) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.app", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--arch", default="resnet18", help="model both apps serve (resnet18/34/50)")
    parser.add_argument("--requests", type=int, default=40, help="sequential requests for latency")
    parser.add_argument("--load", type=int, default=240,
                        help="requests for throughput, shared by the clients (enough that warm-up is a small share)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients for throughput")
    args = parser.parse_args()
    folder = model_folder(args.arch)
    image = photo_jpeg(500, 375)
    with tempfile.TemporaryDirectory() as cache:
        ours = measure("ours", as_deployed("app.py"), {"MODEL_DIR": str(folder), "ORT_CACHE_DIR": cache}, image,
                       args.requests, args.clients, args.load)
    course = measure("course", as_deployed("bench/course_app.py"), {"EXPORT_PKL": str(folder / "export.pkl")},
                     image, args.requests, args.clients, args.load)
    _report(args.arch, ours, course, args.clients)


def _report(arch: str, ours: dict, course: dict, clients: int) -> None:
    print(f"\n{arch}, 500x375 JPEG, same model; {machine()}")
    print(f"{'':34} {'ours':>10} {'course':>10} {'ratio':>8}  target")
    rows = [("start → first prediction (s)", "start_s", "≤ 0.45"), ("peak RSS (MB)", "peak_rss_mb", "≤ 0.35"),
            ("latency, 1 client (ms)", "latency_ms", ""), (f"throughput, {clients} clients (req/s)", "rps", "≥ 2.5")]
    for label, key, target in rows:
        print(f"{label:34} {ours[key]:10.2f} {course[key]:10.2f} {ours[key] / course[key]:7.2f}×  {target}")
    print(f"{'ours, JSON /classify latency (ms)':34} {ours['json_latency_ms']:10.2f}")
    print(f"{'ours, JSON /classify throughput':34} {ours['json_rps']:10.2f} req/s "
          f"({ours['json_rps'] / course['rps']:.2f}× the course app)")


if __name__ == "__main__":
    main()
