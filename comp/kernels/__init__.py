"""Kaggle kernels: runs and studies trained on Kaggle's GPUs, pushed and pulled apart.

- ``bundle``: a kernel bundle on disk (``kernels/<name>/``, ``comp-kernel.json``), found again.
- ``push``: bundles (training, or tuning with ``--tune``), the code dataset, and pushing them.
- ``script``: the script a kernel runs on Kaggle, a real module that the bundle carries.
- ``pull``: kernels' status (a tuning kernel's progress from its log) and their outputs
  brought home: a run, or trials merged into the local study.
- ``output``: a pulled kernel's output made a local run; fanned-out kernels' test
  probabilities combined into the run's submission.
"""
