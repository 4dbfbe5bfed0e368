"""What a run learns from an earlier run besides its labels.

Above ``comp.fit``: nested teachers are folds fitted by its loop.

- ``pseudo``: pseudo-labelled test images, per fold, near-twins barred.
- ``nested``: nested teachers for distillation (``runs/<parent>/nested/``).
- ``teaching``: a run's extra rows and soft targets, built from both.
- ``lineage``: ``lineage.json``/``pseudo.csv``, and the lineage in words (no torch).
"""
