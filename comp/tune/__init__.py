"""Hyperparameter search with Optuna.

- ``study``: ``comp tune``: the search space (``tune_*`` keys), trials that train folds,
  pruning, workers, and ``--show`` (``tune/<study>.db``, ``-best.yaml``, plots).
"""
