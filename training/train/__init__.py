"""The train stage, `python -m training train` (and `convert`): data/<name>/images in; models/<name>/ out.

`stage.train` fine-tunes with fastai, `evaluate` writes report/, `export` writes the model folder the app
reads; `convert` makes the same folder from any export.pkl; `distributed` runs training across processes.
"""
