"""What a run did, as pictures and tables.

- ``report``: ``comp report``: ``runs/<run>/report/`` (curves, confusion matrix, per-class
  table, mistakes, Grad-CAM, ``README.md``).
- ``plots``: the matplotlib figures shared by train, folds, report and the ledger.
"""
