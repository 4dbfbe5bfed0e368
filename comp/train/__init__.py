"""Training a run: every fold of one config, and what a run needs around its folds.

- ``run``: ``train()``: plans the run, trains its folds, writes ``runs/<run>/`` (config,
  classes, ``oof.csv``, ``cv.json``, curves).
- ``loop``: one fold: stages, epochs, steps, early stopping, resume state (``fold{k}/``).
- ``recipe``: the settings chosen by the starting point (random init or pretrained).
- ``budget``: ``--time-limit``: epochs sized from a measured step.
- ``losses``: cross-entropy, focal, mixup's and distillation's soft targets.
- ``heads``: scikit-learn heads on pooled backbone features (``--head``).
- ``launch``: torchrun for ``--devices``.
"""
