"""The baseline the benchmarks compare against: the course's app, `load_learner` + `learn.predict` in a plain
gr.Interface, as the lesson deploys it. Not part of the project; only bench/app.py and bench/load.py run it.

    EXPORT_PKL=models/bears/export.pkl python bench/course_app.py
"""
import os

import gradio as gr
from fastai.vision.all import PILImage, load_learner

learn = load_learner(os.environ["EXPORT_PKL"])
labels = learn.dls.vocab


def predict(img):
    img = PILImage.create(img)
    _, _, probs = learn.predict(img)
    return {labels[i]: float(probs[i]) for i in range(len(labels))}


demo = gr.Interface(predict, gr.Image(type="pil"), gr.Label(num_top_classes=3), api_name="predict")

if __name__ == "__main__":
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
