"""Experiment trackers (MLflow, W&B, TensorBoard), each through its own client.

- ``trackers``: one run per training, blend or study; params, metrics, artifacts, scores.
- ``scores``: what reaches the trackers after training: a blend, leaderboard scores, a
  kernel's own tracker runs.
"""
