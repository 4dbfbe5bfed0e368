"""What a run did, as pictures and tables.

- ``report``: ``comp report``: ``runs/<run>/report/`` (curves, confusion matrix, per-class
  table, mistakes, Grad-CAM, ``README.md``).

The figures other stages draw too (curves, fold distances, the leaderboard) are ``comp.plots``.
"""
