"""Kaggle's API.

- ``client``: the only module that imports ``kaggle``: credentials, retries, competitions,
  submissions, kernels and datasets.
"""
