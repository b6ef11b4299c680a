"""The data stage, `python -m training data`: labels, a URL list, a folder or an archive in; data/<name>/ out.

search → sources → download → clean, tied together by `stage.build_dataset`; `manifest` (manifest.csv),
`decisions` (review.csv, which every rerun honours) and `lock` are the data folder's own files.
"""
