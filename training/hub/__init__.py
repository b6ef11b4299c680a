"""The Hub stages, `python -m training publish` and `deploy`: a model folder in; a model repo and a Space out.

`access` holds what both share: the checked token, repo ids, and the Hub's errors in words.
"""
