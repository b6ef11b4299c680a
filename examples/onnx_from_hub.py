"""Classify a photo with a published model straight from the Hub: onnxruntime, numpy and Pillow, no torch, no fastai.

    python examples/onnx_from_hub.py you/bears photo.jpg
    python examples/onnx_from_hub.py you/bears photo.jpg --revision <commit sha>

Downloads model.onnx and config.json only (cached afterwards), and prepares the photo as training did, following
config.json's `preprocess`. The app's own code (serving/model.py) also handles 16-bit, animated and huge images.
"""
import argparse
import json

import numpy as np
import onnxruntime as ort
from huggingface_hub import hf_hub_download
from PIL import Image, ImageOps


def prepare(path: str, p: dict) -> np.ndarray:
    """The photo as a [1, 3, crop, crop] float32 batch, as fastai's validation transforms make it."""
    image = ImageOps.exif_transpose(Image.open(path)).convert("RGBA")
    image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("RGB")  # transparency: white
    if p.get("resize_mode") == "crop":  # fastai's Resize(method='crop'): the centre square first
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    image = image.resize((p["resize"], p["resize"]), Image.Resampling[p.get("resample", "bilinear").upper()])
    left = (p["resize"] - p["crop"]) // 2
    image = image.crop((left, left, left + p["crop"], left + p["crop"]))
    x = (np.asarray(image, np.float32) / 255 - np.float32(p["mean"])) / np.float32(p["std"])
    return x.transpose(2, 0, 1)[None]


def classify(repo: str, photo: str, revision: str | None = None) -> dict[str, float]:
    """{label: probability} for every label of the model in `repo`."""
    config = json.loads(open(hf_hub_download(repo, "config.json", revision=revision), encoding="utf-8").read())
    session = ort.InferenceSession(hf_hub_download(repo, "model.onnx", revision=revision))
    logits = session.run(None, {session.get_inputs()[0].name: prepare(photo, config["preprocess"])})[0][0]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    return {label: float(p) for label, p in zip(config["labels"], probs)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", help="the model repo, user/name")
    parser.add_argument("photo", help="an image file")
    parser.add_argument("--revision", help="a commit sha (default: the repo's main branch)")
    args = parser.parse_args()
    print(json.dumps(classify(args.repo, args.photo, args.revision)))
