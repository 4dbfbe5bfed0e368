"""A competition workspace made: ``comp init`` and ``comp download``.

Orchestration above the data: it finds the competition's files (``comp.data``), looks for
near-duplicates (``comp.folds``), the recipe and the weights a run would use
(``comp.train``, ``comp.models``) and asks Kaggle for the data (``comp.kaggle``).

- ``init``: finds the labels table, image folders and sample submission of a Kaggle or
  ImageFolder layout; writes ``comp.yaml`` and the workspace folders (and a held-back test
  set with ``--holdout``).
- ``download``: a competition's files from Kaggle, unpacked under ``DIR/data/``, then ``init``.
"""
