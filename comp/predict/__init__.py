"""From trained runs to test probabilities.

- ``predict``: test probabilities over folds and TTA views, as a ``Prediction`` that
  ``comp.submit`` writes.
- ``ensemble``: blends of runs, weighted on their out-of-fold predictions (``runs/<blend>/``).
"""
