"""Classify a photo with a published model's fastai learner, from the Hub.

    python examples/fastai_from_hub.py you/bears photo.jpg                 # downloads model.pkl alone
    python examples/fastai_from_hub.py you/bears photo.jpg --whole-repo    # the Hub's snippet: from_pretrained_fastai

model.pkl is a pickle: loading it runs code, so load it only from repos you trust. `--whole-repo` downloads every
file in the repo (the model card says how much) and needs toml: `pip install huggingface_hub[fastai]`.
"""
import argparse
import json

from fastai.learner import load_learner
from fastai.vision.core import PILImage
from huggingface_hub import from_pretrained_fastai, hf_hub_download


def load(repo: str, revision: str | None = None, whole_repo: bool = False):
    """The learner in `repo`: model.pkl alone, or the whole repo as from_pretrained_fastai takes it."""
    if whole_repo:
        return from_pretrained_fastai(repo, revision=revision)
    return load_learner(hf_hub_download(repo, "model.pkl", revision=revision))


def classify(learn, photo: str) -> dict[str, float]:
    """{label: probability} for every label."""
    with learn.no_bar():
        _, _, probs = learn.predict(PILImage.create(photo))
    return {str(label): float(p) for label, p in zip(learn.dls.vocab, probs)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", help="the model repo, user/name")
    parser.add_argument("photo", help="an image file")
    parser.add_argument("--revision", help="a commit sha (default: the repo's main branch)")
    parser.add_argument("--whole-repo", action="store_true", help="load with from_pretrained_fastai (every file)")
    args = parser.parse_args()
    print(json.dumps(classify(load(args.repo, args.revision, args.whole_repo), args.photo)))
