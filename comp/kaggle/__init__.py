"""Kaggle: the API, kernels, and the script a kernel runs.

- ``client``: the only module that imports ``kaggle``: credentials, retries, competitions,
  submissions, kernels and datasets.
- ``kernels``: kernel bundles (``kernels/<name>/``) and pulled kernel outputs as runs.
- ``script``: the script a kernel runs on Kaggle, a real module that the bundle carries.
"""
