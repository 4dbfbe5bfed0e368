"""The last step: a prediction written as the sample submission, sent, and kept in the ledger.

- ``submission``: the submission file (and the run's ``test_probs.csv``), in the sample's
  format, validated before it is written; scored locally against ``solution.csv``.
- ``submit``: ``comp submit`` to Kaggle or locally, and ``comp submissions`` (CV | public | private).
- ``ledger``: ``submissions/ledger.sqlite``, one row per submission with its scores.
"""
