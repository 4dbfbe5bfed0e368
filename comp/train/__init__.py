"""Training a run: every fold of one config, and what a run needs around its folds.

Above ``comp.fit`` (one fold) and ``comp.teach`` (what a run learns from an earlier one),
as timm keeps its ``train.py`` above its package.

- ``run``: ``train()``: plans the run, trains its folds, writes ``runs/<run>/`` (config,
  classes, ``oof.csv``, ``cv.json``, curves).
- ``probe``: with pretrained weights, the first fold trained both ways (finetune and
  scratch) and the better recipe kept for the rest (``probe.json``).
- ``recipe``: the settings chosen by the starting point (random init or pretrained).
- ``budget``: ``--time-limit``: epochs sized from a measured step.
- ``launch``: torchrun for ``--devices``.
"""
