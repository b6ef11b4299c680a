"""What the benchmarks share: a real-size model folder, a photo-like test image, and Gradio's HTTP API.

The model is resnet-shaped at 224 px like a real one; its weights come from one epoch on generated
shapes, since timings do not depend on what the weights learned (and pretrained weights can't be
downloaded here).
"""
from __future__ import annotations

import io
import os
import platform
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from tests.live_app import gradio_call

OUT = Path(__file__).resolve().parent / "out"


def model_folder(arch: str = "resnet18", size: int = 224) -> Path:
    """A model folder (export.pkl, model.onnx, model.int8.onnx, config.json) for `arch`, trained once and cached in
    bench/out."""
    folder = OUT / f"model_{arch}_{size}"
    if all((folder / name).exists() for name in ("model.onnx", "model.int8.onnx", "export.pkl")):
        return folder
    from tests.tiny_model import make_images
    from training.config import Config
    from training.train.stage import train

    data = make_images(OUT / "data", per_label=20)
    return train(Config(name="bench", data=data, out=folder, arch=arch, pretrained=False, epochs=1, size=size,
                        batch_size=16, lr=1e-3, seed=0))


def photo_jpeg(width: int, height: int, seed: int = 0, noise: float = 18) -> bytes:
    """A JPEG with photo-like content (smooth gradients plus noise), so its size and decode cost are realistic.

    Decoding cost follows file size. At 12 MP, noise=8 gives the size of a typical phone photo; the default
    18 a larger file, like a grainy low-light one (bench/inference.py prints the sizes).
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
    noisy = np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(noisy).save(out, "JPEG", quality=90)
    return out.getvalue()


def as_deployed(script: str) -> list[str]:
    """The command that runs `script` (app.py or bench/course_app.py) with the packages its Space would have.

    IPython is on this development machine but in neither Space's requirements (requirements.txt; fastai and
    gradio for the course app), and Gradio imports it at start-up whenever it is installed: time and memory
    that no deployed app pays. So both apps run with it hidden.
    """
    code = (f"import runpy, sys; sys.modules['IPython'] = None; sys.argv = [{script!r}]; "
            f"runpy.run_path({script!r}, run_name='__main__')")
    return [sys.executable, "-c", code]


def gradio_predict(client: httpx.Client, url: str, image: bytes, api: str = "predict") -> dict:
    """One prediction through Gradio's HTTP API, as any HTTP client sees it: upload, call, read the result."""
    path = client.post(f"{url}/gradio_api/upload", files={"files": ("photo.jpg", image, "image/jpeg")}).json()[0]
    stream = gradio_call(client, url, {"path": path, "meta": {"_type": "gradio.FileData"}}, api)
    if "event: complete" not in stream:
        raise RuntimeError(f"prediction failed: {stream[:300]}")
    return httpx.Response(200, content=stream.split("data:", 1)[1].strip()).json()[0]


# The CPU features that decide how fast the forward pass runs (onnxruntime picks its kernels by them).
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm")


def machine() -> str:
    """The CPU model, its core count and the kernel-relevant flags: print it with every figure."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine()):
                model = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags.update(value.split())
    except OSError:
        pass
    shown = " ".join(f for f in KERNEL_FLAGS if f in flags) or "none of " + " ".join(KERNEL_FLAGS)
    return f"CPU: {model}, {os.cpu_count()} cores; flags: {shown}"


def wait_until(predicate, timeout: float, every: float = 0.05) -> float:
    """Call predicate until it returns without raising; return the seconds that took."""
    started = time.perf_counter()
    while True:
        try:
            predicate()
            return time.perf_counter() - started
        except Exception:
            if time.perf_counter() - started > timeout:
                raise
            time.sleep(every)


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")
