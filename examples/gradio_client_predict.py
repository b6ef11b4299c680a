"""Classify a photo with a deployed demo through its Gradio API: the Space's name, or any running app's URL.

    python examples/gradio_client_predict.py you/bears-demo photo.jpg
    python examples/gradio_client_predict.py http://localhost:7860 photo.jpg
"""
import json
import sys

from gradio_client import Client, handle_file


def classify(app: str, photo: str) -> dict[str, float]:
    """{label: probability} for the app's top labels (the page shows 3)."""
    result = Client(app, verbose=False).predict(handle_file(photo), api_name="/predict")
    return {c["label"]: c["confidence"] for c in result["confidences"]}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(json.dumps(classify(sys.argv[1], sys.argv[2])))
