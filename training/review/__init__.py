"""The review stage, `python -m training review`: a trained model and its data folder in; a cleaner data folder out.

`stage.review` checks and serves; `state` ranks images by loss; `actions` moves files whole or not at all;
`page` is the Gradio page.
"""
