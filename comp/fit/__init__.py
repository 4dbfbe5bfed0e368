"""One fold fitted: the training loop a newcomer reads top to bottom, and what it calls.

- ``loop``: one fold: stages, epochs, steps, early stopping, resume state (``fold{k}/``).
- ``losses``: cross-entropy, focal, mixup's and distillation's soft targets.
- ``heads``: scikit-learn heads on pooled backbone features (``--head``), and stage 1's
  logistic regression.
"""
