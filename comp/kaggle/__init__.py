"""Kaggle: the API, kernels, and the script a kernel runs.

- ``client``: the only module that imports ``kaggle``: credentials, retries, competitions,
  submissions, kernels and datasets.
- ``kernels``: kernel bundles (``kernels/<name>/``: training, or tuning with ``--tune``) and
  pulled kernel outputs as runs.
- ``pull``: kernels' status (a tuning kernel's progress from its log) and their outputs
  brought home: a run, or trials merged into the local study.
- ``script``: the script a kernel runs on Kaggle, a real module that the bundle carries.
"""
