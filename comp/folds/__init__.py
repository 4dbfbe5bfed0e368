"""Cross-validation folds that predict the private leaderboard.

- ``similarity``: image features (subject, colour, hashes, embeddings) and nearest neighbours.
- ``embed``: with no pretrained weights, an embedding learned from the train and test
  images themselves (contrast of restyled views, no labels).
- ``split``: the folds themselves: candidates grouped by distance, the one whose
  validation-to-train distances match the test set's.
- ``make``: ``comp folds``: the workspace's folds grouped as asked; writes
  ``folds/folds_k{n}_seed{s}.csv`` with its ``.json`` report and ``.png``.
- ``report``: the report in words, as ``comp folds`` prints it.
"""
