"""Training a run: every fold of one config, and what a run needs around its folds.

- ``probe``: with pretrained weights, the first fold trained both ways (finetune and
  scratch) and the better recipe kept for the rest (``probe.json``).
- ``run``: ``train()``: plans the run, trains its folds, writes ``runs/<run>/`` (config,
  classes, ``oof.csv``, ``cv.json``, curves).
- ``loop``: one fold: stages, epochs, steps, early stopping, resume state (``fold{k}/``).
- ``recipe``: the settings chosen by the starting point (random init or pretrained).
- ``budget``: ``--time-limit``: epochs sized from a measured step.
- ``losses``: cross-entropy, focal, mixup's and distillation's soft targets.
- ``heads``: scikit-learn heads on pooled backbone features (``--head``), and stage 1's
  logistic regression.
- ``launch``: torchrun for ``--devices``.
"""
