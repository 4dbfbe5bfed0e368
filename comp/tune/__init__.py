"""Hyperparameter search with Optuna.

- ``study``: ``comp tune``: the search space (``tune_*`` keys; ``auto``: the recipe's),
  trial 0 (the recipe's values), the study's time limit, trials that train folds,
  pruning, and ``--show`` (``tune/<study>.db``, ``-best.yaml``, plots, best vs trial 0).
- ``workers``: a study run here or in ``--n-workers`` processes, and shown.
- ``merge``: studies that travel to Kaggle kernels (``comp kernel push --tune``): each
  kernel's seed study, and its trials merged back into ``tune/<study>.db`` on pull.
"""
