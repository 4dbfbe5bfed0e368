"""From trained runs to a file Kaggle scores.

- ``predict``: test probabilities over folds and TTA views (``test_probs.csv``) and the submission.
- ``ensemble``: blends of runs, weighted on their out-of-fold predictions (``runs/<blend>/``).
- ``submission``: the submission file, in the sample's format, validated before it is written.
"""
